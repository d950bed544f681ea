// Live events → the TanStack Query cache. Deployments are folded in place (the
// table and the detail change at once), a stream's timeline and the audit log
// get the event appended, and admin lists are refetched.

import type { InfiniteData, QueryClient } from '@tanstack/react-query'
import { deploymentKeys, raiseDeploymentWatermark } from '../features/deployments/api'
import { deploymentIdOf, foldDeployment } from '../features/deployments/fold'
import type { Deployment, DeploymentList } from '../features/deployments/types'
import type { Envelope, StreamSlice } from '../lib/types'
import { matches, type EventFilter } from './filter'

/** One window of the audit log, newest first. */
export interface AuditWindow {
  events: Envelope[]
  /** The window holds the matching events with positions in (after, through]. */
  after: number
  through: number
}

export const auditKey = (filter: EventFilter) => ['audit', 'events', filter] as const

let appliedPosition = 0
/** The last position the live connection applied (0 before any). */
export const livePosition = (): number => appliedPosition

/**
 * Patches a cached query, unless it is being fetched right now: that answer
 * may predate the event, so the query is read again instead.
 */
function patch<T>(qc: QueryClient, key: readonly unknown[], update: (old: T) => T): void {
  const state = qc.getQueryState(key)
  if (!state) return
  if (state.fetchStatus === 'fetching' || state.data === undefined) {
    void qc.invalidateQueries({ queryKey: key, exact: true })
    return
  }
  qc.setQueryData<T>(key, (old) => (old === undefined ? old : update(old)))
}

export function applyEvents(qc: QueryClient, events: Envelope[]): void {
  if (events.length) appliedPosition = Math.max(appliedPosition, events[events.length - 1].position)
  const invalidate = new Set<string>()
  for (const e of events) {
    const deploymentId = deploymentIdOf(e.stream)
    if (deploymentId !== null) applyDeployment(qc, deploymentId, e)
    appendToStream(qc, e)
    if (/^Token/.test(e.type)) invalidate.add('tokens')
    if (/^(User|Role|Account|Passkey)/.test(e.type) || e.stream.startsWith('user-')) {
      invalidate.add('users')
      invalidate.add('me')
      invalidate.add('sessions')
    }
    if (/(Session|Login|Logout|LoggedIn|LoggedOut|SignedIn|SignedOut)/.test(e.type)) invalidate.add('sessions')
    // A registration uses up an invite.
    if (/^Invite/.test(e.type) || e.type === 'UserRegistered' || e.stream.startsWith('invite-')) invalidate.add('invites')
  }
  appendToAudit(qc, events)
  if (invalidate.size === 0) return
  const refetch = () => {
    for (const what of invalidate) {
      if (what === 'me') void qc.invalidateQueries({ queryKey: ['me'] })
      else void qc.invalidateQueries({ queryKey: ['admin', what] })
    }
  }
  refetch()
  // herald records who may act in the log *before* it stores the row (a user, an
  // invite, a token, a session, roles), so a list read at once may miss it: read
  // it again once the row has surely landed.
  for (const ms of ACCOUNT_SETTLE_MS) setTimeout(refetch, ms)
}

const ACCOUNT_SETTLE_MS = [500, 2_000]

function applyDeployment(qc: QueryClient, id: string, e: Envelope): void {
  raiseDeploymentWatermark(e.position)
  // Every cached list: each status filter and length the dashboard read.
  for (const [key] of qc.getQueriesData<DeploymentList>({ queryKey: deploymentKeys.list })) {
    patch<DeploymentList>(qc, key, (list) => {
      const i = list.deployments.findIndex((d) => d.id === id)
      const current = i >= 0 ? list.deployments[i] : null
      const next = foldDeployment(current, e)
      if (next === current || next === null) return list
      // A row already shown stays (updated) even when it leaves the filter, so
      // nothing vanishes under the cursor; a new one joins only if it matches.
      if (i < 0 && list.status && next.status !== list.status) return { ...list, position: Math.max(list.position, e.position) }
      const deployments =
        i >= 0 ? list.deployments.map((d, j) => (j === i ? next : d)) : [next, ...list.deployments]
      return { ...list, deployments, position: Math.max(list.position, e.position), ...(i < 0 && list.total !== undefined ? { total: list.total + 1 } : {}) }
    })
  }
  patch<Deployment>(qc, deploymentKeys.detail(id), (d) => foldDeployment(d, e) ?? d)
}

function appendToStream(qc: QueryClient, e: Envelope): void {
  const key = deploymentKeys.stream(e.stream)
  const slice = qc.getQueryData<StreamSlice>(key)
  if (slice && e.version > slice.version + 1) {
    // Something in between is missing here: read the stream again.
    void qc.invalidateQueries({ queryKey: key, exact: true })
    return
  }
  patch<StreamSlice>(qc, key, (s) =>
    e.version === s.version + 1 ? { ...s, version: e.version, events: [...s.events, e] } : s,
  )
}

function appendToAudit(qc: QueryClient, events: Envelope[]): void {
  const cached = qc.getQueriesData<InfiniteData<AuditWindow, number>>({ queryKey: ['audit', 'events'] })
  for (const [key, data] of cached) {
    if (qc.getQueryState(key)?.fetchStatus === 'fetching') {
      // The first page's reader catches up to livePosition() before it answers.
      continue
    }
    if (!data || data.pages.length === 0) continue
    const filter = (key[2] ?? {}) as EventFilter
    const first = data.pages[0]
    const fresh = events.filter((e) => e.position > first.through && matches(filter, e))
    if (fresh.length === 0) continue
    const through = Math.max(first.through, ...events.map((e) => e.position))
    const page: AuditWindow = { ...first, through, events: [...fresh.reverse(), ...first.events] }
    qc.setQueryData<InfiniteData<AuditWindow, number>>(key, { ...data, pages: [page, ...data.pages.slice(1)] })
  }
}

/** After the live cursor is first known: anything read before it may be older. */
export function resyncLiveQueries(qc: QueryClient): void {
  for (const key of [['deployments'], ['deployment'], ['stream'], ['audit', 'events']]) {
    void qc.invalidateQueries({ queryKey: key })
  }
}
