// `POST /api/commands` (docs/API.md §4), for every feature's commands.

import { newId, post } from './api'
import type { Envelope } from './types'

export interface CommandResult {
  stream: string
  version: number
  /** The last event's position: pass it as `min_position` to see the command's effect in a read model at once. */
  position: number
  events: Envelope[]
}

export interface Command {
  type: string
  data?: object
}

/**
 * Sends one command. The command id makes a retry safe: pass the same one for
 * a repeat of the same command (a double click, a retry after an error), so
 * herald answers with the first result instead of acting twice.
 */
export function sendCommand(
  aggregateId: string,
  command: Command,
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
