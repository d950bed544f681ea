import { describe, expect, it } from 'vitest'
import { feedStream, feedView, feedsList, minPositionOf, postStream, postView } from './resource'
import type { Post } from './types'

const post = (id: string, tags: string[]): Post => ({
  id,
  title: `Post ${id}`,
  content: 'Text.',
  tags,
  author: { kind: 'user', id: 'u1', name: 'bob' },
  created_at: '2026-01-01T00:00:00.000Z',
  updated_at: '2026-01-01T00:00:00.000Z',
  stream_version: 1,
})

describe('the posts streams', () => {
  it('each feed message replaces the feed, down to none left (the stream goes on)', () => {
    const { feed } = feedView.events
    let s = feed(undefined, { tag: 'release', post_count: 1, updated_at: 'x', posts: [post('a', ['release', 'ops'])], position: 5 })
    expect(s?.posts.map((p) => p.id)).toEqual(['a'])
    s = feed(s, { tag: 'release', post_count: 0, updated_at: 'y', posts: [], position: 7 })
    expect(s).toMatchObject({ post_count: 0, posts: [] })
    expect(feed(s, { nonsense: 1 })).toBe(s)
    // A post that is not one is left out.
    expect(feed(undefined, { tag: 't', post_count: 2, updated_at: 'x', posts: [post('a', []), { id: 'b' }], position: 1 })?.posts).toHaveLength(1)
  })

  it('each feeds message and each post message is the whole of it', () => {
    const feeds = feedsList.events.feeds
    const one = feeds(undefined, { feeds: [{ tag: 'ops', post_count: 2, updated_at: 'x' }], position: 3 })
    expect(feeds(one, { feeds: [], position: 4 })).toEqual({ feeds: [], position: 4 })
    expect(feeds(one, null)).toBe(one)
    const p = postView.events.post(undefined, post('a', ['ops']))
    expect(postView.events.post(p, { ...post('a', []), title: 'New' })?.title).toBe('New')
  })

  it('addresses (the same whatever position a command answered), and that position', () => {
    expect(feedStream('Release')).toBe('/api/feeds/Release/live')
    expect(feedStream('a b')).toBe('/api/feeds/a%20b/live')
    expect(postStream('p/1')).toBe('/api/posts/p%2F1/live')
    expect(minPositionOf(new URLSearchParams('min_position=42'))).toBe(42)
    expect(minPositionOf(new URLSearchParams('min_position=x'))).toBeNull()
    expect(minPositionOf(new URLSearchParams(''))).toBeNull()
  })
})
