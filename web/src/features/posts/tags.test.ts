import { describe, expect, it } from 'vitest'
import { MAX_TAGS, commitTags, isTag, normaliseTags, removeTag, typeTags } from './tags'

describe('tags, normalised as herald does', () => {
  it('trims, lowercases and keeps the first of equal ones', () => {
    expect(normaliseTags(['  Rust', 'OPS ', 'rust', 'ops', 'Infra'])).toEqual(['rust', 'ops', 'infra'])
    expect(['a', 'a-1', 'x'.repeat(32)].every(isTag)).toBe(true)
    expect(['', 'no spaces', 'x'.repeat(33), 'café', 'under_score', 'dot.ted'].some(isTag)).toBe(false)
  })
})

describe('the chips of the tag box', () => {
  it('a comma finishes a tag; what follows is still being typed', () => {
    expect(typeTags([], 'Rust')).toEqual({ tags: [], text: 'Rust', error: null })
    expect(typeTags([], 'Rust,')).toEqual({ tags: ['rust'], text: '', error: null })
    expect(typeTags(['rust'], ' OPS , infr')).toEqual({ tags: ['rust', 'ops'], text: 'infr', error: null })
    // A tag already there, or nothing between commas, adds nothing.
    expect(typeTags(['rust'], 'RUST,,')).toEqual({ tags: ['rust'], text: '', error: null })
  })

  it('Enter finishes everything typed, pasted lists too', () => {
    expect(commitTags(['ops'], 'Release, Incident,ops')).toEqual({ tags: ['ops', 'release', 'incident'], text: '', error: null })
    expect(commitTags(['ops'], '   ')).toEqual({ tags: ['ops'], text: '', error: null })
  })

  it('a refused tag stays in the box with herald\'s reason, the good ones around it are taken', () => {
    expect(commitTags([], 'rust, no spaces, ops')).toEqual({
      tags: ['rust', 'ops'],
      text: 'no spaces',
      error: '"no spaces" is not a tag (1–32 characters of a–z, 0–9 and -)',
    })
    expect(typeTags([], 'Bad Tag!,next')).toEqual({
      tags: [],
      text: 'Bad Tag!, next',
      error: '"bad tag!" is not a tag (1–32 characters of a–z, 0–9 and -)',
    })
  })

  it('takes at most ten', () => {
    const nine = Array.from({ length: 9 }, (_, i) => `t${i}`)
    const r = commitTags(nine, 'ten, eleven')
    expect(r.tags).toHaveLength(MAX_TAGS)
    expect(r.tags.at(-1)).toBe('ten')
    expect(r).toMatchObject({ text: 'eleven', error: 'at most 10 tags' })
  })

  it('removes a chip', () => {
    expect(removeTag(['a', 'b', 'c'], 'b')).toEqual(['a', 'c'])
  })
})
