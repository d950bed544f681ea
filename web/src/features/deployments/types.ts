import type { Actor } from '../../lib/types'

export type DeploymentStatus = 'in_progress' | 'succeeded' | 'failed' | 'cancelled'

/** The deployments read model (docs/API.md §5), as `GET /api/deployments[/{id}]` serves it. */
export interface Deployment {
  id: string
  service: string
  version: string | null
  environment: string | null
  status: DeploymentStatus
  progress: number
  message: string | null
  reason: string | null
  started_by: Actor
  started_at: string
  updated_at: string
  stream_version: number
}

export const STATUS_LABEL: Record<DeploymentStatus, string> = {
  in_progress: 'In progress',
  succeeded: 'Succeeded',
  failed: 'Failed',
  cancelled: 'Cancelled',
}

/** The Deployment aggregate's commands (crates/herald-core/src/deployment.rs). */
export type DeploymentCommand =
  | { type: 'StartDeployment'; data: { service: string; version?: string; environment?: string } }
  | { type: 'ReportDeploymentProgress'; data: { percent: number; message?: string } }
  | { type: 'SucceedDeployment'; data?: Record<string, never> }
  | { type: 'FailDeployment'; data: { reason: string } }
  | { type: 'CancelDeployment'; data: { reason?: string } }

export const DEPLOYMENT_EVENT_TYPES = [
  'DeploymentStarted',
  'DeploymentProgressed',
  'DeploymentSucceeded',
  'DeploymentFailed',
  'DeploymentCancelled',
] as const
