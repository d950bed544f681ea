// The deployments read model, followed through its resource streams: the fold
// of events into deployments happens once, in herald; here a message replaces
// or upserts what the page shows.

import { defineResource } from '../../live/resource'
import type { Deployment, DeploymentStatus } from './types'

/** The list as followed: most recently started first. */
export interface DeploymentsState {
  deployments: Deployment[]
  /** How many the last snapshot held (more than the page shows: there are more). */
  snapshotCount: number
  /** The last one of the snapshot (the one read beyond the page, if it was). */
  snapshotLast: string | null
}

const isDeployment = (d: unknown): d is Deployment =>
  !!d && typeof d === 'object' && typeof (d as Deployment).id === 'string' && typeof (d as Deployment).started_at === 'string'

const startedAt = (d: Deployment) => Date.parse(d.started_at) || 0

/** Puts `d` in the list: in place if it is there, else where its start time sorts it (newest first). */
export function upsertDeployment(list: Deployment[], d: Deployment): Deployment[] {
  const i = list.findIndex((x) => x.id === d.id)
  if (i >= 0) return list.map((x, j) => (j === i ? d : x))
  const at = list.findIndex((x) => startedAt(x) < startedAt(d))
  return at < 0 ? [...list, d] : [...list.slice(0, at), d, ...list.slice(at)]
}

const EMPTY: DeploymentsState = { deployments: [], snapshotCount: 0, snapshotLast: null }

/** `GET /api/deployments/live[?status=S]`: `snapshot` replaces, `deployment` upserts, `deployment_removed` drops. */
export const deploymentsList = defineResource<DeploymentsState>(
  'deployments',
  {
    snapshot: (_state, data) => {
      const all = (data as { deployments?: unknown[] } | null)?.deployments
      const deployments = Array.isArray(all) ? all.filter(isDeployment) : []
      return { deployments, snapshotCount: deployments.length, snapshotLast: deployments.at(-1)?.id ?? null }
    },
    deployment: (state, data) => {
      const s = state ?? EMPTY
      return isDeployment(data) ? { ...s, deployments: upsertDeployment(s.deployments, data) } : s
    },
    deployment_removed: (state, data) => {
      const id = (data as { id?: unknown } | null)?.id
      if (!state || typeof id !== 'string') return state
      const deployments = state.deployments.filter((d) => d.id !== id)
      return deployments.length === state.deployments.length ? state : { ...state, deployments }
    },
  },
  'snapshot',
)

/** `GET /api/deployments/{id}/live`: each `deployment` is the whole view. */
export const deploymentView = defineResource<Deployment>(
  'deployment',
  { deployment: (state, data) => (isDeployment(data) ? data : state) },
  'deployment',
)

/** The first page, and how much "Load more" adds. */
export const DEPLOYMENTS_PAGE = 200
/** herald sends at most this many in one list. */
export const DEPLOYMENTS_MAX = 1000

export interface ListQuery {
  status?: DeploymentStatus | null
  limit: number
}

/**
 * The list's stream: herald filters by status, so a status finds every
 * deployment that has it, not only those among the newest. One more than
 * shown is asked for, to know whether there are more.
 */
export function listStream(q: ListQuery): { url: string; limit: number; ask: number } {
  const limit = Math.max(1, Math.min(q.limit, DEPLOYMENTS_MAX))
  const ask = Math.min(limit + 1, DEPLOYMENTS_MAX)
  const query = new URLSearchParams()
  if (q.status) query.set('status', q.status)
  query.set('limit', String(ask))
  return { url: `/api/deployments/live?${query}`, limit, ask }
}

/** What the page shows of the followed list, and whether herald has more than that. */
export function shownDeployments(state: DeploymentsState, { limit, ask }: { limit: number; ask: number }): { rows: Deployment[]; more: boolean } {
  const extra = state.snapshotCount > limit
  // At herald's maximum no extra one can be read (ask === limit): a full page may or may not be all of them.
  const more = extra || (ask === limit && state.snapshotCount === limit)
  // The one read beyond the page stays out.
  const rows = extra ? state.deployments.filter((d) => d.id !== state.snapshotLast) : state.deployments
  return { rows, more }
}

export const deploymentStream = (id: string) => `/api/deployments/${encodeURIComponent(id)}/live`
