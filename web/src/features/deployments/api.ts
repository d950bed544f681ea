import { get, newId, post } from '../../lib/api'
import type { Envelope, StreamSlice } from '../../lib/types'
import type { Deployment, DeploymentCommand, DeploymentList } from './types'

export const deploymentKeys = {
  list: ['deployments'] as const,
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

export async function fetchDeployments(signal?: AbortSignal): Promise<DeploymentList> {
  let list = await get<DeploymentList>('/api/deployments?limit=200', signal)
  for (let i = 0; i < 5 && list.position < watermark; i++) {
    await sleep(150 * (i + 1))
    list = await get<DeploymentList>('/api/deployments?limit=200', signal)
  }
  return list
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

/** `POST /api/commands` for a deployment; the command id makes a retry safe. */
export function sendDeploymentCommand(
  aggregateId: string,
  command: DeploymentCommand,
  expectedVersion?: number,
): Promise<CommandResult> {
  return post<CommandResult>('/api/commands', {
    type: command.type,
    aggregate_id: aggregateId,
    ...(expectedVersion !== undefined ? { expected_version: expectedVersion } : {}),
    command_id: newId(),
    ...(command.data && Object.keys(command.data).length > 0 ? { data: command.data } : {}),
  })
}
