import {
  startAuthentication,
  startRegistration,
  type PublicKeyCredentialCreationOptionsJSON,
  type PublicKeyCredentialRequestOptionsJSON,
} from '@simplewebauthn/browser'
import { ApiError, api } from '../../lib/api'
import type { Me, User } from '../../lib/types'

export const meKey = ['me'] as const

/** `GET /api/me`; `null` when signed out (401). */
export async function fetchMe(signal?: AbortSignal): Promise<Me | null> {
  try {
    return await api<Me>('/api/me', { signal, quiet401: true })
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return null
    throw e
  }
}

export const setupKey = ['auth', 'setup'] as const

/**
 * `GET /api/auth/setup` (no credential): whether herald still waits for its
 * first admin. `null` when this herald has no such endpoint (404: an older
 * server, where the first account becomes admin without a code).
 */
export async function fetchSetup(signal?: AbortSignal): Promise<{ setup_required: boolean } | null> {
  try {
    const body = await api<{ setup_required?: unknown }>('/api/auth/setup', { signal, quiet401: true })
    return { setup_required: body?.setup_required === true }
  } catch (e) {
    if (e instanceof ApiError && (e.status === 404 || e.status === 405)) return null
    throw e
  }
}

/** A wrong or used setup code (403 from register/start). */
export class BadSetupCode extends Error {
  constructor(detail?: string) {
    super(
      `herald did not accept that setup code${detail ? ` (${detail.replace(/\.$/, '')})` : ''}. Copy it again from the terminal where \`herald serve\` runs, or make one with \`herald invite create --role admin\`.`,
    )
    this.name = 'BadSetupCode'
  }
}

interface Ceremony<O> {
  ceremony: string
  options: { publicKey: O } | O
}

// webauthn-rs wraps the options in `publicKey`; accept them bare too.
function publicKeyOf<O>(options: { publicKey: O } | O): O {
  return options && typeof options === 'object' && 'publicKey' in options
    ? (options as { publicKey: O }).publicKey
    : (options as O)
}

/** Registers a passkey for a new account, with an invite code (or the first-run setup code). */
export async function registerWithPasskey(input: {
  username: string
  display_name?: string
  invite?: string
}): Promise<User> {
  const start = await api<Ceremony<PublicKeyCredentialCreationOptionsJSON>>('/api/auth/register/start', {
    method: 'POST',
    body: input,
    quiet401: true,
  })
  const credential = await startRegistration({ optionsJSON: publicKeyOf(start.options) })
  const done = await api<{ user: User }>('/api/auth/register/finish', {
    method: 'POST',
    body: { ceremony: start.ceremony, credential },
    quiet401: true,
  })
  return done.user
}

/** Signs in with a passkey; the username may be left out for a discoverable one. */
export async function loginWithPasskey(username?: string): Promise<User> {
  const start = await api<Ceremony<PublicKeyCredentialRequestOptionsJSON>>('/api/auth/login/start', {
    method: 'POST',
    body: username ? { username } : {},
    quiet401: true,
  })
  const credential = await startAuthentication({ optionsJSON: publicKeyOf(start.options) })
  const done = await api<{ user: User }>('/api/auth/login/finish', {
    method: 'POST',
    body: { ceremony: start.ceremony, credential },
    quiet401: true,
  })
  return done.user
}

export async function logout(): Promise<void> {
  await api<void>('/api/auth/logout', { method: 'POST', quiet401: true })
}
