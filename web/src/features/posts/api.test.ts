import { afterEach, describe, expect, it, vi } from 'vitest'
import { ApiError } from '../../lib/api'
import { createPost, postChanges, problemField, updatePost } from './api'

function stubCommands(answer: () => Response) {
  const bodies: unknown[] = []
  vi.stubGlobal(
    'fetch',
    vi.fn(async (url: string, init: RequestInit) => {
      expect(url).toBe('/api/commands')
      bodies.push(JSON.parse(String(init.body)))
      return answer()
    }),
  )
  return bodies
}
const ok = () => new Response('{"stream":"post-p1","version":1,"position":17,"events":[]}', { status: 200 })

afterEach(() => vi.unstubAllGlobals())

describe('post commands', () => {
  it('CreatePost makes a new stream with every field, and its answer carries the position to wait for', async () => {
    const bodies = stubCommands(ok)
    const r = await createPost('p1', { title: 'Hello', content: 'Line one.\nLine two.', tags: [] }, 'c1')
    expect(bodies).toEqual([
      { type: 'CreatePost', aggregate_id: 'p1', expected_version: 0, command_id: 'c1', data: { title: 'Hello', content: 'Line one.\nLine two.', tags: [] } },
    ])
    expect(r.position).toBe(17)
  })

  it('UpdatePost sends only what changed, against the version it started from', async () => {
    const bodies = stubCommands(ok)
    const post = { title: 'Hello', content: 'Text.', tags: ['release', 'ops'] }
    const changes = postChanges(post, { title: 'Hello', content: 'Text.', tags: ['ops'] })
    expect(changes).toEqual({ tags: ['ops'] })
    await updatePost('p1', changes!, 3, 'c2')
    expect(bodies).toEqual([{ type: 'UpdatePost', aggregate_id: 'p1', expected_version: 3, command_id: 'c2', data: { tags: ['ops'] } }])
  })

  it('finds the changed fields, comparing tags as herald would store them', () => {
    const post = { title: 'A', content: 'B', tags: ['rust'] }
    expect(postChanges(post, { title: 'A', content: 'B', tags: [' Rust'] })).toBeNull()
    expect(postChanges(post, { title: 'A2', content: 'B2', tags: ['rust'] })).toEqual({ title: 'A2', content: 'B2' })
    // Order is part of the tags.
    expect(postChanges({ ...post, tags: ['a', 'b'] }, { ...post, tags: ['b', 'a'] })).toEqual({ tags: ['b', 'a'] })
  })

  it("tells which field herald's 400 names, and shows its words", async () => {
    const problem = { status: 400, detail: 'data.tags[2]: "no spaces" is not a tag (1–32 characters of a–z, 0–9 and -)' }
    stubCommands(() => new Response(JSON.stringify(problem), { status: 400 }))
    const e = await createPost('p1', { title: 'x', content: 'y', tags: [] }).catch((err: unknown) => err)
    expect(problemField(e)).toBe('tags')
    expect((e as Error).message).toContain('"no spaces" is not a tag')
    expect(problemField(new ApiError(400, { detail: 'data: at least one of title, content, tags' }))).toBeNull()
    expect(problemField(new ApiError(400, { detail: 'data.title: must be one line' }))).toBe('title')
    expect(problemField(new ApiError(422, { detail: 'data.title: x' }))).toBeNull()
  })
})
