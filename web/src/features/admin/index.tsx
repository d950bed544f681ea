import { Heading, Stack, Text } from '@chakra-ui/react'
import { text } from '../../lib/describe'
import type { Feature } from '../../lib/feature'
import { refetchSettled } from '../../live/cache'
import { useAuth } from '../auth/AuthContext'
import { AdminPage } from './AdminPage'
import { adminKeys } from './api'

function AdminOnly() {
  const { isAdmin } = useAuth()
  if (!isAdmin)
    return (
      <Stack gap="3">
        <Heading as="h1" size="xl">
          Admin
        </Heading>
        <Text>Only admins can manage users, invites, tokens and sessions.</Text>
      </Stack>
    )
  return <AdminPage />
}

/** Which admin lists an event of the accounts changes. */
export function adminListsChangedBy(events: { type: string; stream: string }[]): (readonly unknown[])[] {
  const keys = new Set<readonly unknown[]>()
  for (const e of events) {
    if (e.type.startsWith('Token')) keys.add(adminKeys.tokens)
    if (/^(User|Role|Passkey)/.test(e.type) || e.stream.startsWith('user-')) {
      keys.add(adminKeys.users)
      keys.add(adminKeys.sessions)
    }
    if (/(Session|Login|LoggedOut)/.test(e.type)) keys.add(adminKeys.sessions)
    // A registration uses up an invite.
    if (e.type.startsWith('Invite') || e.type === 'UserRegistered' || e.stream.startsWith('invite-')) keys.add(adminKeys.invites)
  }
  return [...keys]
}

const user = (v: unknown, otherwise: string) => text(v) ?? otherwise

/** Users and roles, invites, API tokens and sessions (admins only). */
export const admin: Feature = {
  name: 'admin',
  routes: [{ path: '/admin', element: <AdminOnly /> }],
  nav: { to: '/admin', label: 'Admin', role: 'admin' },
  live: {
    types: [
      'TokenCreated',
      'TokenRevoked',
      'UserRegistered',
      'RegistrationRefused',
      'LoginSucceeded',
      'LoginFailed',
      'LoggedOut',
      'SessionRevoked',
      'RolesChanged',
      'InviteCreated',
      'UserDisabled',
      'UserEnabled',
      'PasskeyRemoved',
    ],
    apply: (qc, events) => refetchSettled(qc, adminListsChangedBy(events)),
  },
  describe: {
    TokenCreated: ({ data: d }) => `created the API token ${text(d.name) ?? ''}${text(d.role) ? ` (${d.role})` : ''}`.trim(),
    TokenRevoked: ({ data: d }) => `revoked an API token${text(d.name) ? ` (${d.name})` : ''}`,
    SessionRevoked: () => 'ended a session',
    RolesChanged: ({ data: d }) => `set the roles of ${user(d.username, 'a user')} to ${Array.isArray(d.roles) ? d.roles.join(', ') : '?'}`,
    UserDisabled: ({ data: d }) => `disabled the account ${user(d.username, 'of a user')}${text(d.reason) ? `: ${d.reason}` : ''}`,
    UserEnabled: ({ data: d }) => `enabled the account ${user(d.username, 'of a user')} again`,
    PasskeyRemoved: ({ data: d }) =>
      `removed a passkey${text(d.username) ? ` of ${d.username}` : ''}${text(d.credential_id) ? ` (${String(d.credential_id).slice(0, 10)}…)` : ''}`,
    InviteCreated: ({ data: d }) => `created an invite${text(d.role) ? ` for a new ${d.role}` : ''}`,
  },
}
