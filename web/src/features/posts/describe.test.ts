import { describe, expect, it } from 'vitest'
import { makeEnvelope } from '../../test/envelope'
import { describePostCreated, describePostUpdated } from './describe'

const ev = (type: string, data: Record<string, unknown>) => makeEnvelope({ stream: 'post-p1', type, data })

describe('post events in words', () => {
  it('says which post was written and how it is tagged', () => {
    expect(describePostCreated(ev('PostCreated', { title: 'Hello', content: 'x', tags: ['release', 'ops'] }))).toBe(
      'wrote the post “Hello”, tagged release, ops',
    )
    expect(describePostCreated(ev('PostCreated', { title: 'Hello', content: 'x', tags: [] }))).toBe('wrote the post “Hello”')
  })

  it('says what an edit changed', () => {
    expect(
      describePostUpdated(
        ev('PostUpdated', { title: { old: 'a', new: 'b' }, content: { old: 'x', new: 'y' }, tags: { old: ['release', 'ops'], new: ['ops', 'infra'] } }),
      ),
    ).toBe('edited a post: renamed it from “a” to “b”, edited the text, added the tag infra, removed the tag release')
    expect(describePostUpdated(ev('PostUpdated', { tags: { old: [], new: ['a', 'b'] } }))).toBe('edited a post: added the tags a, b')
    expect(describePostUpdated(ev('PostUpdated', { tags: { old: ['a', 'b'], new: ['b', 'a'] } }))).toBe('edited a post: reordered the tags (b, a)')
    expect(describePostUpdated(ev('PostUpdated', {}))).toBe('edited a post')
  })
})
