import { describe, expect, it } from 'vitest'
import { Features } from '../../lib/feature'
import { makeEnvelope } from '../../test/envelope'
import { adminKeys } from './api'
import { admin, adminListsChangedBy } from '.'

const ev = (type: string, data: Record<string, unknown> = {}, stream = 'user-u2') => makeEnvelope({ stream, type, data })

describe('the admin feature', () => {
  it('says who was disabled, enabled, or lost a passkey', () => {
    const { describe: words } = new Features([admin])
    expect(words(ev('UserDisabled', { user_id: 'u2', username: 'bob' }))).toBe('disabled the account bob')
    expect(words(ev('UserEnabled', { user_id: 'u2', username: 'bob' }))).toBe('enabled the account bob again')
    expect(words(ev('PasskeyRemoved', { username: 'bob', credential_id: 'AAAABBBBCCCCDDDD' }))).toBe('removed a passkey of bob (AAAABBBBCC…)')
  })

  it('listens for its events on the live stream', () => {
    for (const t of ['UserDisabled', 'UserEnabled', 'PasskeyRemoved', 'InviteCreated']) expect(new Features([admin]).eventTypes).toContain(t)
  })

  it('reads again the lists an event changes: a registration uses up an invite', () => {
    expect(adminListsChangedBy([ev('UserRegistered', { username: 'bob' })])).toEqual([adminKeys.users, adminKeys.sessions, adminKeys.invites])
    expect(adminListsChangedBy([ev('TokenRevoked', {}, 'token-t1')])).toEqual([adminKeys.tokens])
    expect(adminListsChangedBy([ev('LoggedOut', {}, 'session-s1')])).toEqual([adminKeys.sessions])
  })
})
