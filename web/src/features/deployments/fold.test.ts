import { describe, expect, it } from 'vitest'
import type { Envelope } from '../../lib/types'
import { foldDeployment } from './fold'

let pos = 0
const ev = (version: number, type: string, data: Record<string, unknown> = {}, stream = 'deployment-d1'): Envelope => ({
  position: ++pos,
  id: `e${pos}`,
  stream,
  version,
  type,
  schema: 1,
  data,
  actor: { kind: 'user', id: 'u1', name: 'alice' },
  recorded_at: `2026-01-01T00:00:0${version}.000Z`,
  hash: 'h',
})

describe('foldDeployment (as deployment_view.rs)', () => {
  it('folds start, progress and success', () => {
    let d = foldDeployment(null, ev(1, 'DeploymentStarted', { service: 'api', version: '1.0', environment: 'prod' }))
    expect(d).toMatchObject({ id: 'd1', service: 'api', status: 'in_progress', progress: 0, stream_version: 1 })
    d = foldDeployment(d, ev(2, 'DeploymentProgressed', { percent: 60, message: 'canary ok' }))
    expect(d).toMatchObject({ progress: 60, message: 'canary ok', stream_version: 2 })
    d = foldDeployment(d, ev(3, 'DeploymentSucceeded'))
    expect(d).toMatchObject({ status: 'succeeded', progress: 100, updated_at: '2026-01-01T00:00:03.000Z' })
  })

  it('ignores an event already folded in, another deployment, and unknown types', () => {
    const d = foldDeployment(null, ev(1, 'DeploymentStarted', { service: 'api' }))!
    const p = foldDeployment(d, ev(2, 'DeploymentProgressed', { percent: 10 }))!
    expect(foldDeployment(p, ev(2, 'DeploymentProgressed', { percent: 90 }))).toBe(p)
    expect(foldDeployment(p, ev(3, 'DeploymentFailed', { reason: 'x' }, 'deployment-other'))).toBe(p)
    expect(foldDeployment(p, ev(3, 'SomethingElse'))).toBe(p)
    expect(foldDeployment(null, ev(2, 'DeploymentProgressed', { percent: 10 }))).toBeNull()
  })

  it('keeps the reason of a failure or cancellation', () => {
    const d = foldDeployment(null, ev(1, 'DeploymentStarted', { service: 'api' }))!
    expect(foldDeployment(d, ev(2, 'DeploymentFailed', { reason: 'boom' }))).toMatchObject({ status: 'failed', reason: 'boom' })
    expect(foldDeployment(d, ev(2, 'DeploymentCancelled', {}))).toMatchObject({ status: 'cancelled', reason: null })
  })
})
