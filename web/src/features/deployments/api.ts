import { get, newId, post } from '../../lib/api'
import type { Envelope, StreamSlice } from '../../lib/types'
import type { Deployment, DeploymentCommand, DeploymentList, DeploymentStatus } from './types'

export const deploymentKeys = {
  /** Every cached list (each status filter and length) is under this prefix. */
  list: ['deployments'] as const,
  listOf: (q: ListQuery) => ['deployments', { status: q.status ?? null, limit: q.limit }] as const,
  detail: (id: string) => ['deployment', id] as const,
  stream: (stream: string) => ['stream', stream] as const,
}

/**
 * The highest position of a deployment event applied from the live stream: a
 * list read from a read model that has not caught up to it yet is read again.
 */
let watermark = 0
export function raiseDeploymentWatermark(position: number): void {
  watermark = Math.max(watermark, position)
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** What the dashboard asks for: a status (filtered by herald) and how many, newest first. */
export interface ListQuery {
  status?: DeploymentStatus | null
  limit: number
}
/** The first page, and how much "Load more" adds. */
export const DEPLOYMENTS_PAGE = 200
/** herald sends at most this many in one list. */
export const DEPLOYMENTS_MAX = 1000

/**
 * `GET /api/deployments?status=S&limit=N`: herald filters, so a status finds
 * every deployment that has it, not only those among the newest. One more
 * than asked is read to know whether there are more (`more`).
 */
export async function fetchDeployments(q: ListQuery = { limit: DEPLOYMENTS_PAGE }, signal?: AbortSignal): Promise<DeploymentList> {
  const limit = Math.max(1, Math.min(q.limit, DEPLOYMENTS_MAX))
  const ask = Math.min(limit + 1, DEPLOYMENTS_MAX)
  const url = `/api/deployments?${q.status ? `status=${encodeURIComponent(q.status)}&` : ''}limit=${ask}`
  let list = await get<DeploymentList>(url, signal)
  for (let i = 0; i < 5 && list.position < watermark; i++) {
    await sleep(150 * (i + 1))
    list = await get<DeploymentList>(url, signal)
  }
  const all = list.deployments ?? []
  return {
    ...list,
    deployments: all.slice(0, limit),
    // At herald's maximum no extra one can be read (ask === limit): a full page may or may not be all of them.
    more: all.length > limit || (ask === limit && all.length === limit),
    status: q.status ?? null,
  }
}

export const fetchDeployment = (id: string, signal?: AbortSignal) =>
  get<Deployment>(`/api/deployments/${encodeURIComponent(id)}`, signal)

export async function fetchStream(stream: string, signal?: AbortSignal): Promise<StreamSlice> {
  const first = await get<StreamSlice>(`/api/streams/${encodeURIComponent(stream)}?limit=1000`, signal)
  const events = [...first.events]
  while (events.length > 0 && events[events.length - 1].version < first.version) {
    const from = events[events.length - 1].version + 1
    const next = await get<StreamSlice>(
      `/api/streams/${encodeURIComponent(stream)}?from_version=${from}&limit=1000`,
      signal,
    )
    if (next.events.length === 0) break
    events.push(...next.events)
  }
  return { ...first, events }
}

export interface CommandResult {
  stream: string
  version: number
  position: number
  events: Envelope[]
}

/**
 * `POST /api/commands` for a deployment. The command id makes a retry safe:
 * pass the same one for a repeat of the same command (a double click, a retry
 * after an error), so herald answers with the first result instead of acting twice.
 */
export function sendDeploymentCommand(
  aggregateId: string,
  command: DeploymentCommand,
  expectedVersion?: number,
  commandId: string = newId(),
): Promise<CommandResult> {
  return post<CommandResult>('/api/commands', {
    type: command.type,
    aggregate_id: aggregateId,
    ...(expectedVersion !== undefined ? { expected_version: expectedVersion } : {}),
    command_id: commandId,
    ...(command.data && Object.keys(command.data).length > 0 ? { data: command.data } : {}),
  })
}
