import { afterEach, describe, expect, it, vi } from 'vitest'
import { setReauthHandler } from '../../lib/api'
import { createInvite, createToken, disableUser, enableUser, removePasskey, revokeSession, revokeToken, setRoles } from './api'

afterEach(() => {
  setReauthHandler(null)
  vi.unstubAllGlobals()
})

const reauth = () =>
  new Response(JSON.stringify({ status: 403, title: 'Forbidden', reauth_required: true }), {
    status: 403,
    headers: { 'content-type': 'application/problem+json' },
  })

describe('admin actions', () => {
  const actions: [string, () => Promise<unknown>, string, string][] = [
    ['mint an API token', () => createToken('ci', 'operator'), 'POST', '/api/tokens'],
    ['revoke an API token', () => revokeToken('t1'), 'DELETE', '/api/tokens/t1'],
    ['create an admin invite', () => createInvite('admin'), 'POST', '/api/invites'],
    ['change roles', () => setRoles('u2', ['viewer']), 'PUT', '/api/users/u2/roles'],
    ["end another user's session", () => revokeSession('s1'), 'DELETE', '/api/sessions/s1'],
    ['disable a user', () => disableUser('u2'), 'POST', '/api/users/u2/disable'],
    ['enable a user', () => enableUser('u2'), 'POST', '/api/users/u2/enable'],
    ['remove a passkey', () => removePasskey('u2', 'cred/1'), 'DELETE', '/api/users/u2/passkeys/cred%2F1'],
  ]
  for (const [what, run, method, path] of actions) {
    it(`${what}: a reauth_required 403 runs the step-up and sends it again`, async () => {
      const calls: string[] = []
      let n = 0
      vi.stubGlobal(
        'fetch',
        vi.fn(async (url: string, init: RequestInit) => {
          calls.push(`${init.method} ${url}`)
          return n++ === 0 ? reauth() : new Response(init.method === 'DELETE' ? null : '{"ok":true}', { status: init.method === 'DELETE' ? 204 : 200 })
        }),
      )
      const stepUp = vi.fn(async () => {})
      setReauthHandler(stepUp)
      await run()
      expect(stepUp).toHaveBeenCalledTimes(1)
      expect(calls).toEqual([`${method} ${path}`, `${method} ${path}`])
    })
  }
})
