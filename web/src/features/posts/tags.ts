// Tags as herald takes them (issue 10): each trimmed and lowercased, then
// de-duplicated keeping the first; each 1–32 characters of a–z, 0–9 and -;
// at most 10. The editor turns typed text into chips with the same rules, so
// what it sends is what herald stores.

export const MAX_TAGS = 10
const TAG = /^[a-z0-9-]{1,32}$/

export const normaliseTag = (raw: string): string => raw.trim().toLowerCase()
export const isTag = (tag: string): boolean => TAG.test(tag)

/** As herald normalises a list: each normalised, the first of equal ones kept (validity aside). */
export function normaliseTags(raw: readonly string[]): string[] {
  const out: string[] = []
  for (const t of raw.map(normaliseTag)) if (!out.includes(t)) out.push(t)
  return out
}

/** The words herald uses for a tag it refuses. */
export const notATag = (tag: string): string => `"${tag}" is not a tag (1–32 characters of a–z, 0–9 and -)`

export interface Chips {
  tags: string[]
  /** What stays in the text box (an unfinished or refused tag). */
  text: string
  error: string | null
}

/**
 * Adds the tags in `parts` to `tags`: each normalised, repeats dropped, a part
 * that normalises to nothing skipped. A refused part (not a tag, or past the
 * tenth) stays behind as text, with the reason.
 */
function add(tags: readonly string[], parts: readonly string[]): Chips {
  const next = [...tags]
  const left: string[] = []
  let error: string | null = null
  for (const part of parts) {
    const tag = normaliseTag(part)
    if (!tag || next.includes(tag)) continue
    if (!isTag(tag)) {
      left.push(part.trim())
      error ??= notATag(tag)
    } else if (next.length >= MAX_TAGS) {
      left.push(part.trim())
      error ??= `at most ${MAX_TAGS} tags`
    } else {
      next.push(tag)
    }
  }
  return { tags: next, text: left.join(', '), error }
}

/** The text box changed: every part before a comma is a finished tag; the last one is still being typed. */
export function typeTags(tags: readonly string[], text: string): Chips {
  if (!text.includes(',')) return { tags: [...tags], text, error: null }
  const parts = text.split(',')
  const typing = parts.pop() ?? ''
  const done = add(tags, parts)
  return { ...done, text: done.text ? `${done.text}, ${typing.trimStart()}` : typing.trimStart() }
}

/** Enter (or leaving the box, or saving): all that is typed becomes tags. */
export const commitTags = (tags: readonly string[], text: string): Chips => add(tags, text.split(','))

export const removeTag = (tags: readonly string[], tag: string): string[] => tags.filter((t) => t !== tag)
