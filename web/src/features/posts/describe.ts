// PostCreated and PostUpdated in words, for the audit log and a post's history.

import { text } from '../../lib/describe'
import type { Envelope } from '../../lib/types'

const quote = (s: string) => `“${s}”`
const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [])
const the = (noun: string, list: string[]) => `the ${noun}${list.length === 1 ? '' : 's'} ${list.join(', ')}`

export function describePostCreated(e: Envelope): string {
  const title = text(e.data.title)
  const tags = strings(e.data.tags)
  return `wrote the post${title ? ` ${quote(title)}` : ''}${tags.length ? `, tagged ${tags.join(', ')}` : ''}`
}

interface Change {
  old?: unknown
  new?: unknown
}
const change = (v: unknown): Change | null => (v && typeof v === 'object' ? (v as Change) : null)

/** PostUpdated carries only what changed, each as `{old, new}`: say each. */
export function describePostUpdated(e: Envelope): string {
  const parts: string[] = []
  const title = change(e.data.title)
  if (title) {
    const was = text(title.old)
    const now = text(title.new)
    parts.push(`renamed it${was ? ` from ${quote(was)}` : ''}${now ? ` to ${quote(now)}` : ''}`)
  }
  if (change(e.data.content)) parts.push('edited the text')
  const tags = change(e.data.tags)
  if (tags) {
    const was = strings(tags.old)
    const now = strings(tags.new)
    const added = now.filter((t) => !was.includes(t))
    const removed = was.filter((t) => !now.includes(t))
    if (added.length) parts.push(`added ${the('tag', added)}`)
    if (removed.length) parts.push(`removed ${the('tag', removed)}`)
    if (!added.length && !removed.length) parts.push(`reordered the tags (${now.join(', ')})`)
  }
  return parts.length ? `edited a post: ${parts.join(', ')}` : 'edited a post'
}
