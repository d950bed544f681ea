import { sendCommand, type CommandResult } from '../../lib/commands'
import type { DeploymentCommand } from './types'

export type { CommandResult }

/** `POST /api/commands` for a deployment (the command id makes a retry the same command). */
export const sendDeploymentCommand = (
  aggregateId: string,
  command: DeploymentCommand,
  expectedVersion?: number,
  commandId?: string,
): Promise<CommandResult> => sendCommand(aggregateId, command, expectedVersion, commandId)
