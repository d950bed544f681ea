import { describe, expect, it } from 'vitest'
import { KNOWN_EVENT_TYPES } from '../live/eventTypes'
import { describeEvent } from './describe'
import { makeEnvelope } from '../test/envelope'

const ev = (type: string, data: Record<string, unknown>) => makeEnvelope({ stream: 'user-u2', type, data })

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
