import { QueryClient, type InfiniteData } from '@tanstack/react-query'
import { describe, expect, it } from 'vitest'
import { deploymentKeys } from '../features/deployments/api'
import type { DeploymentList } from '../features/deployments/types'
import type { Envelope, StreamSlice } from '../lib/types'
import { applyEvents, auditKey, type AuditWindow } from './cache'
import { makeEnvelope } from '../test/envelope'

let pos = 100
const ev = (stream: string, version: number, type: string, data: Record<string, unknown> = {}): Envelope =>
  makeEnvelope({ position: ++pos, stream, version, type, data })

describe('applyEvents', () => {
  it('folds deployment events into the cached list and detail, and appends to the timeline', () => {
    const qc = new QueryClient()
    qc.setQueryData<DeploymentList>(deploymentKeys.list, { deployments: [], position: 100 })
    qc.setQueryData<StreamSlice>(deploymentKeys.stream('deployment-a'), { stream: 'deployment-a', version: 0, events: [] })
    const start = ev('deployment-a', 1, 'DeploymentStarted', { service: 'api' })
    const progress = ev('deployment-a', 2, 'DeploymentProgressed', { percent: 40 })
    applyEvents(qc, [start, progress])
    const list = qc.getQueryData<DeploymentList>(deploymentKeys.list)!
    expect(list.deployments).toHaveLength(1)
    expect(list.deployments[0]).toMatchObject({ id: 'a', progress: 40, stream_version: 2 })
    expect(list.position).toBe(progress.position)
    expect(qc.getQueryData<StreamSlice>(deploymentKeys.stream('deployment-a'))!.events.map((e) => e.version)).toEqual([1, 2])
    // Again: nothing changes.
    applyEvents(qc, [start, progress])
    expect(qc.getQueryData<DeploymentList>(deploymentKeys.list)!.deployments).toHaveLength(1)
    expect(qc.getQueryData<StreamSlice>(deploymentKeys.stream('deployment-a'))!.events).toHaveLength(2)
  })

  it('patches every cached list; a filtered list takes in only new deployments that match, and keeps rows that leave it', () => {
    const qc = new QueryClient()
    const all = deploymentKeys.listOf({ limit: 200 })
    const inProgress = deploymentKeys.listOf({ status: 'in_progress', limit: 200 })
    const failed = deploymentKeys.listOf({ status: 'failed', limit: 200 })
    qc.setQueryData<DeploymentList>(all, { deployments: [], position: pos, status: null })
    qc.setQueryData<DeploymentList>(inProgress, { deployments: [], position: pos, status: 'in_progress' })
    qc.setQueryData<DeploymentList>(failed, { deployments: [], position: pos, status: 'failed' })
    const start = ev('deployment-f', 1, 'DeploymentStarted', { service: 'api' })
    applyEvents(qc, [start])
    const ids = (key: readonly unknown[]) => qc.getQueryData<DeploymentList>(key)!.deployments.map((d) => `${d.id}:${d.status}`)
    expect(ids(all)).toEqual(['f:in_progress'])
    expect(ids(inProgress)).toEqual(['f:in_progress'])
    expect(ids(failed)).toEqual([])
    applyEvents(qc, [ev('deployment-f', 2, 'DeploymentFailed', { reason: 'x' })])
    expect(ids(all)).toEqual(['f:failed'])
    expect(ids(inProgress)).toEqual(['f:failed'])
    expect(ids(failed)).toEqual([])
  })

  it('refreshes the invites when someone registers (an invite was used)', () => {
    const qc = new QueryClient()
    qc.setQueryData(['admin', 'invites'], [])
    applyEvents(qc, [ev('user-u2', 1, 'UserRegistered', { username: 'bob' })])
    expect(qc.getQueryState(['admin', 'invites'])!.isInvalidated).toBe(true)
  })

  it('puts new matching events at the top of each cached audit view, once', () => {
    const qc = new QueryClient()
    const all = auditKey({})
    const onlyStarts = auditKey({ type: 'DeploymentStarted' })
    const empty: InfiniteData<AuditWindow, number | null> = { pages: [{ events: [], after: 0, through: pos }], pageParams: [null] }
    qc.setQueryData(all, empty)
    qc.setQueryData(onlyStarts, empty)
    const a = ev('deployment-b', 1, 'DeploymentStarted', { service: 'x' })
    const b = ev('deployment-b', 2, 'DeploymentSucceeded')
    applyEvents(qc, [a, b])
    applyEvents(qc, [b])
    const top = (key: readonly unknown[]) =>
      qc.getQueryData<InfiniteData<AuditWindow>>(key)!.pages[0].events.map((e) => e.position)
    expect(top(all)).toEqual([b.position, a.position])
    expect(top(onlyStarts)).toEqual([a.position])
  })
})
