import { describe, expect, it } from 'vitest'
import { KNOWN_EVENT_TYPES } from '../live/eventTypes'
import { describeEvent } from './describe'
import type { Envelope } from './types'

const ev = (type: string, data: Record<string, unknown>): Envelope => ({
  position: 1,
  id: 'e1',
  stream: 'user-u2',
  version: 1,
  type,
  schema: 1,
  data,
  actor: { kind: 'user', id: 'u1', name: 'alice' },
  recorded_at: '2026-01-01T00:00:00Z',
  hash: 'h',
})

describe('describeEvent: account events', () => {
  it('says who was disabled, enabled, or lost a passkey', () => {
    expect(describeEvent(ev('UserDisabled', { user_id: 'u2', username: 'bob' }))).toBe('disabled the account bob')
    expect(describeEvent(ev('UserEnabled', { user_id: 'u2', username: 'bob' }))).toBe('enabled the account bob again')
    expect(describeEvent(ev('PasskeyRemoved', { username: 'bob', credential_id: 'AAAABBBBCCCCDDDD' }))).toBe(
      'removed a passkey of bob (AAAABBBBCC…)',
    )
  })
  it('listens for them on the live stream', () => {
    for (const t of ['UserDisabled', 'UserEnabled', 'PasskeyRemoved']) expect(KNOWN_EVENT_TYPES).toContain(t)
  })
})
