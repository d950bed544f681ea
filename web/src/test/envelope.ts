// For tests: one logged event, with whatever fields a test cares about.

import type { Envelope } from '../lib/types'

export function makeEnvelope(fields: Partial<Envelope> = {}): Envelope {
  const position = fields.position ?? 1
  return {
    position,
    id: `e${position}`,
    stream: 'deployment-d1',
    version: 1,
    type: 'DeploymentProgressed',
    schema: 1,
    data: {},
    actor: { kind: 'user', id: 'u1', name: 'alice' },
    recorded_at: '2026-01-01T00:00:00Z',
    hash: 'h',
    ...fields,
  }
}
