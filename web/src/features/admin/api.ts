import { del, get, post, put } from '../../lib/api'
import type { Actor, Role, User } from '../../lib/types'

export const adminKeys = {
  users: ['admin', 'users'] as const,
  tokens: ['admin', 'tokens'] as const,
  sessions: ['admin', 'sessions'] as const,
  invites: ['admin', 'invites'] as const,
}

/** Lists may come bare or wrapped (`{users: […]}`): take either. */
function listOf<T>(body: unknown, field: string): T[] {
  if (Array.isArray(body)) return body as T[]
  if (body && typeof body === 'object' && Array.isArray((body as Record<string, unknown>)[field]))
    return (body as Record<string, T[]>)[field]
  return []
}

export interface Passkey {
  credential_id: string
  created_at?: string | null
  last_used_at?: string | null
}
export interface AdminUser extends User {
  created_at?: string
  /** When an admin disabled the account (null or absent: it is enabled). */
  disabled_at?: string | null
  /** Absent from an older herald. */
  passkeys?: Passkey[]
}
export const fetchUsers = async (signal?: AbortSignal) => listOf<AdminUser>(await get<unknown>('/api/users', signal), 'users')
const userPath = (id: string) => `/api/users/${encodeURIComponent(id)}`
// Every admin write goes through post/put/del: a 403 `reauth_required` runs the
// passkey step-up and the request is sent again once.
export const setRoles = (id: string, roles: Role[]) => put<unknown>(`${userPath(id)}/roles`, { roles })
export const disableUser = (id: string) => post<{ user: AdminUser }>(`${userPath(id)}/disable`)
export const enableUser = (id: string) => post<{ user: AdminUser }>(`${userPath(id)}/enable`)
export const removePasskey = (userId: string, credentialId: string) =>
  del<void>(`${userPath(userId)}/passkeys/${encodeURIComponent(credentialId)}`)

export interface Invite {
  id?: string
  code: string
  role: Role
  expires_at: string
  /** The link to send, as herald builds it from its public origin. */
  url?: string
}
export interface InviteRecord {
  id: string
  role: Role
  created_at: string
  created_by?: Actor
  expires_at: string
  used_by?: string | null
}
export const createInvite = (role: Role) => post<Invite>('/api/invites', { role })
export const fetchInvites = async (signal?: AbortSignal) =>
  listOf<InviteRecord>(await get<unknown>('/api/invites', signal), 'invites')
export const inviteLink = (inv: Invite) =>
  inv.url ?? `${window.location.origin}/register?invite=${encodeURIComponent(inv.code)}`

export interface Token {
  id: string
  name: string
  role: Role
  created_at: string
  created_by?: Actor
  revoked_at?: string | null
}
export interface NewToken {
  id: string
  token: string
  name?: string
  role?: Role
}
export const fetchTokens = async (signal?: AbortSignal) => listOf<Token>(await get<unknown>('/api/tokens', signal), 'tokens')
export const createToken = (name: string, role: Role) => post<NewToken>('/api/tokens', { name, role })
export const revokeToken = (id: string) => del<void>(`/api/tokens/${encodeURIComponent(id)}`)

export interface Session {
  id: string
  user_id?: string
  username?: string
  user?: { id?: string; username?: string; display_name?: string | null }
  created_at?: string
  last_seen_at?: string | null
  expires_at?: string | null
  user_agent?: string | null
  current?: boolean
}
export const fetchSessions = async (signal?: AbortSignal) =>
  listOf<Session>(await get<unknown>('/api/sessions', signal), 'sessions')
export const revokeSession = (id: string) => del<void>(`/api/sessions/${encodeURIComponent(id)}`)
