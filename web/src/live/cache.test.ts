import { QueryClient } from '@tanstack/react-query'
import { describe, expect, it } from 'vitest'
import type { LiveHandler } from '../lib/feature'
import type { Envelope, StreamSlice } from '../lib/types'
import { makeEnvelope } from '../test/envelope'
import { applyEvents, livePosition } from './cache'
import { streamKey } from './streams'

let pos = 100
const ev = (stream: string, version: number, type: string, data: Record<string, unknown> = {}): Envelope =>
  makeEnvelope({ position: ++pos, stream, version, type, data })

describe('applyEvents', () => {
  it("appends to a cached timeline the next version of its stream once, and reads it again after a gap", () => {
    const qc = new QueryClient()
    qc.setQueryData<StreamSlice>(streamKey('post-a'), { stream: 'post-a', version: 0, events: [] })
    qc.setQueryData<StreamSlice>(streamKey('post-b'), { stream: 'post-b', version: 1, events: [] })
    const created = ev('post-a', 1, 'PostCreated')
    const updated = ev('post-a', 2, 'PostUpdated')
    applyEvents(qc, [created, updated], [])
    applyEvents(qc, [created, updated], [])
    expect(qc.getQueryData<StreamSlice>(streamKey('post-a'))!.events.map((e) => e.version)).toEqual([1, 2])
    applyEvents(qc, [ev('post-b', 3, 'PostUpdated')], [])
    expect(qc.getQueryState(streamKey('post-b'))!.isInvalidated).toBe(true)
    expect(livePosition()).toBe(pos)
  })

  it('gives each handler the events of its types, in order; "*" gets every event; a throwing handler stops no other', () => {
    const qc = new QueryClient()
    const got: Record<string, string[]> = { posts: [], all: [], broken: [] }
    const handlers: LiveHandler[] = [
      { types: ['Boom'], apply: (_qc, es) => { got.broken.push(...es.map((e) => e.type)); throw new Error('bug') } },
      { types: ['PostCreated', 'PostUpdated'], apply: (_qc, es) => got.posts.push(...es.map((e) => e.type)) },
      { types: ['DeploymentStarted'] },
      { types: '*', apply: (_qc, es) => got.all.push(...es.map((e) => e.type)) },
    ]
    const batch = [ev('post-a', 1, 'PostCreated'), ev('x-1', 1, 'Boom'), ev('deployment-d', 1, 'DeploymentStarted'), ev('post-a', 2, 'PostUpdated')]
    const error = console.error
    console.error = () => {}
    try {
      applyEvents(qc, batch, handlers)
    } finally {
      console.error = error
    }
    expect(got).toEqual({
      posts: ['PostCreated', 'PostUpdated'],
      all: ['PostCreated', 'Boom', 'DeploymentStarted', 'PostUpdated'],
      broken: ['Boom'],
    })
  })
})
