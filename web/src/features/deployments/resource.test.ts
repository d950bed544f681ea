import { describe, expect, it } from 'vitest'
import { deploymentView, deploymentsList, listStream, shownDeployments, type DeploymentsState } from './resource'
import type { Deployment } from './types'

const dep = (id: string, startedSecond: number, status: Deployment['status'] = 'in_progress'): Deployment => ({
  id,
  service: `svc-${id}`,
  version: null,
  environment: null,
  status,
  progress: 0,
  message: null,
  reason: null,
  started_by: { kind: 'user', id: 'u1', name: 'alice' },
  started_at: `2026-01-01T00:00:${String(startedSecond).padStart(2, '0')}.000Z`,
  updated_at: '2026-01-01T00:01:00.000Z',
  stream_version: 1,
})

const { snapshot, deployment, deployment_removed } = deploymentsList.events
const ids = (s: DeploymentsState | undefined) => s?.deployments.map((d) => `${d.id}:${d.status}`)

describe('the deployments list stream', () => {
  it('a snapshot replaces the list, whenever it comes', () => {
    let s = snapshot(undefined, { deployments: [dep('b', 2), dep('a', 1)], position: 5 })
    expect(ids(s)).toEqual(['b:in_progress', 'a:in_progress'])
    s = deployment(s, dep('c', 3))
    s = snapshot(s, { deployments: [dep('a', 1, 'failed')], position: 9 })
    expect(ids(s)).toEqual(['a:failed'])
    expect(s?.snapshotCount).toBe(1)
  })

  it('a deployment replaces the one with its id in place, or joins where its start time sorts it', () => {
    let s = snapshot(undefined, { deployments: [dep('c', 30), dep('a', 10)], position: 5 })
    s = deployment(s, { ...dep('a', 10), status: 'succeeded' })
    expect(ids(s)).toEqual(['c:in_progress', 'a:succeeded'])
    s = deployment(s, dep('new', 40))
    s = deployment(s, dep('middle', 20))
    s = deployment(s, dep('old', 5))
    expect(s?.deployments.map((d) => d.id)).toEqual(['new', 'c', 'middle', 'a', 'old'])
    // Before any snapshot (a resumed stream may start with changes), and junk is ignored.
    expect(ids(deployment(undefined, dep('x', 1)))).toEqual(['x:in_progress'])
    expect(deployment(s, { nope: true })).toBe(s)
  })

  it('deployment_removed drops it (it left the status followed); an unknown id changes nothing', () => {
    let s = snapshot(undefined, { deployments: [dep('b', 2), dep('a', 1)], position: 5 })
    s = deployment_removed(s, { id: 'b' })
    expect(ids(s)).toEqual(['a:in_progress'])
    expect(deployment_removed(s, { id: 'zzz' })).toBe(s)
    expect(deployment_removed(undefined, { id: 'a' })).toBeUndefined()
  })

  it('asks for one more than the page and says there are more when herald had it; at the maximum it cannot', () => {
    expect(listStream({ status: 'failed', limit: 200 })).toEqual({ url: '/api/deployments/live?status=failed&limit=201', limit: 200, ask: 201 })
    expect(listStream({ limit: 5000 })).toEqual({ url: '/api/deployments/live?limit=1000', limit: 1000, ask: 1000 })
    const window = listStream({ limit: 2 })
    const three = snapshot(undefined, { deployments: [dep('c', 3), dep('b', 2), dep('a', 1)] })!
    expect(shownDeployments(three, window)).toEqual({ rows: [three.deployments[0], three.deployments[1]], more: true })
    // A deployment started since joins the page; the extra one stays out.
    const four = deployment(three, dep('d', 4))!
    expect(shownDeployments(four, window).rows.map((d) => d.id)).toEqual(['d', 'c', 'b'])
    const two = snapshot(undefined, { deployments: [dep('b', 2), dep('a', 1)] })!
    expect(shownDeployments(two, window)).toEqual({ rows: two.deployments, more: false })
    const max = listStream({ limit: 1000 })
    const full = { deployments: [], snapshotCount: 1000, snapshotLast: null }
    expect(shownDeployments(full, max).more).toBe(true)
    expect(shownDeployments({ ...full, snapshotCount: 999 }, max).more).toBe(false)
  })

  it('one deployment: each message is the whole view', () => {
    const { deployment: view } = deploymentView.events
    const a = view(undefined, dep('a', 1))
    const b = view(a, { ...dep('a', 1), progress: 50 })
    expect(b?.progress).toBe(50)
    expect(view(b, 'junk')).toBe(b)
  })
})
