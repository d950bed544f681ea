// Helpers for putting events into words; each feature describes its own types
// (its `Feature.describe`), the shell joins them (lib/feature.ts).

import type { Envelope } from './types'

/** A non-empty string from event data, or null. */
export const text = (v: unknown): string | null => (typeof v === 'string' && v ? v : null)

/** "DeploymentStarted" → "deployment started", for a type no feature describes. */
export function humanType(type: string): string {
  return type.replace(/([a-z0-9])([A-Z])/g, '$1 $2').toLowerCase()
}

/** The actor of an event, for "alice (token) started …". */
export function actorLabel(e: Envelope): string {
  const kind = e.actor.kind === 'user' ? '' : ` (${e.actor.kind})`
  return `${e.actor.name}${kind}`
}
