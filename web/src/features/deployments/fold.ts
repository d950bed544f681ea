// The deployments read model's fold (crates/herald-core/src/deployment_view.rs),
// so a live event updates the table at once, without a round trip.

import type { Envelope } from '../../lib/types'
import type { Deployment } from './types'

export const DEPLOYMENT_PREFIX = 'deployment-'

export function deploymentIdOf(stream: string): string | null {
  return stream.startsWith(DEPLOYMENT_PREFIX) && stream.length > DEPLOYMENT_PREFIX.length
    ? stream.slice(DEPLOYMENT_PREFIX.length)
    : null
}

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null)

/**
 * Folds one event into the view of its deployment. Returns `current` unchanged
 * for an event of another deployment, an unknown type, or one already folded in
 * (`version <= stream_version`), so applying an event twice is harmless.
 */
export function foldDeployment(current: Deployment | null, e: Envelope): Deployment | null {
  const id = deploymentIdOf(e.stream)
  if (id === null) return current
  if (current && (current.id !== id || e.version <= current.stream_version)) return current
  const d = e.data ?? {}
  let next: Deployment
  switch (e.type) {
    case 'DeploymentStarted':
      if (current) return current
      if (typeof d.service !== 'string') return current
      next = {
        id,
        service: d.service,
        version: str(d.version),
        environment: str(d.environment),
        status: 'in_progress',
        progress: 0,
        message: null,
        reason: null,
        started_by: e.actor,
        started_at: e.recorded_at,
        updated_at: e.recorded_at,
        stream_version: e.version,
      }
      break
    case 'DeploymentProgressed':
      if (!current || typeof d.percent !== 'number') return current
      next = { ...current, progress: Math.min(100, Math.max(0, d.percent)), message: str(d.message) }
      break
    case 'DeploymentSucceeded':
      if (!current) return current
      next = { ...current, status: 'succeeded', progress: 100 }
      break
    case 'DeploymentFailed':
      if (!current) return current
      next = { ...current, status: 'failed', reason: str(d.reason) }
      break
    case 'DeploymentCancelled':
      if (!current) return current
      next = { ...current, status: 'cancelled', reason: str(d.reason) }
      break
    default:
      return current
  }
  return { ...next, updated_at: e.recorded_at, stream_version: e.version }
}
