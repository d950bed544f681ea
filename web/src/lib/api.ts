// The one API client (docs/API.md): JSON in and out, cookies for auth, every error a
// problem+json turned into an `ApiError` whose `message` is plain words.

export interface Problem {
  type?: string
  title?: string
  status?: number
  detail?: string
  [extension: string]: unknown
}

export class ApiError extends Error {
  readonly status: number
  readonly problem: Problem
  readonly retryAfter: number | null

  constructor(status: number, problem: Problem, retryAfter: number | null = null) {
    super(plainWords(status, problem, retryAfter))
    this.name = 'ApiError'
    this.status = status
    this.problem = problem
    this.retryAfter = retryAfter
  }

  /** A command refused because the session must confirm with its passkey again. */
  get reauthRequired(): boolean {
    return this.status === 403 && this.problem.reauth_required === true
  }
}

/** Could not reach herald at all (network down, server stopped). */
export class NetworkError extends Error {
  constructor(cause?: unknown) {
    super('Could not reach herald. Check your connection; the console keeps trying.')
    this.name = 'NetworkError'
    this.cause = cause
  }
}

function sentence(s: string): string {
  const t = s.trim()
  if (!t) return t
  const first = t[0].toUpperCase() + t.slice(1)
  return /[.!?]$/.test(first) ? first : `${first}.`
}

/** What a person should read for an error answer. */
export function plainWords(status: number, p: Problem, retryAfter: number | null = null): string {
  const detail = p.detail ? sentence(p.detail) : ''
  switch (status) {
    case 400:
      return `herald could not accept this: ${detail || 'the request was malformed.'}`
    case 401:
      return 'You are signed out. Sign in again to continue.'
    case 403:
      if (p.reauth_required === true) return 'Confirm it is you with your passkey to do this.'
      return `You are not allowed to do this. ${detail}`.trim()
    case 404:
      return detail ? `Not found: ${detail}` : 'Not found.'
    case 409: {
      const seen = typeof p.expected_version === 'number' ? p.expected_version : null
      const now = typeof p.actual_version === 'number' ? p.actual_version : null
      const versions = seen !== null && now !== null ? ` (you saw version ${seen}, it is now at version ${now})` : ''
      return `Someone else changed this first${versions}. The view now shows the latest state: check it and try again.`
    }
    case 413:
      return 'That is too large to send. Shorten it and try again.'
    case 422: {
      const rule = p.title && p.title !== 'Unprocessable Entity' ? sentence(p.title) : 'Refused by a rule.'
      return detail ? `${rule} ${detail}` : rule
    }
    case 429:
      return retryAfter
        ? `Too many requests. Wait ${retryAfter} s and try again.`
        : 'Too many requests. Wait a moment and try again.'
    default:
      if (status >= 500) return `herald had a problem and could not do this${detail ? `: ${detail}` : '.'} Try again shortly.`
      return detail || `The request failed (HTTP ${status}).`
  }
}

/**
 * Called when a command answers 403 with `reauth_required: true`; resolves once
 * the passkey step-up succeeded (the command is then retried once), rejects when
 * the person cancels.
 */
export type ReauthHandler = () => Promise<void>
let reauthHandler: ReauthHandler | null = null
export function setReauthHandler(h: ReauthHandler | null): void {
  reauthHandler = h
}

/** Called on any 401, so the app can show the login page. */
let unauthorizedHandler: (() => void) | null = null
export function setUnauthorizedHandler(h: (() => void) | null): void {
  unauthorizedHandler = h
}

export interface RequestOptions {
  method?: string
  body?: unknown
  signal?: AbortSignal
  /** Run the passkey step-up on `reauth_required` and retry once (commands, admin writes). */
  stepUp?: boolean
  /** Do not call the global 401 handler (e.g. `GET /api/me`, the login calls). */
  quiet401?: boolean
}

async function send(path: string, opts: RequestOptions): Promise<Response> {
  const headers: Record<string, string> = { accept: 'application/json' }
  let body: string | undefined
  if (opts.body !== undefined) {
    headers['content-type'] = 'application/json'
    body = JSON.stringify(opts.body)
  }
  try {
    // Same-origin only: the browser adds `Sec-Fetch-Site: same-origin`, which
    // is what herald's CSRF rule asks of a cookie-authenticated write.
    return await fetch(path, {
      method: opts.method ?? 'GET',
      headers,
      body,
      credentials: 'same-origin',
      signal: opts.signal,
    })
  } catch (e) {
    if (e instanceof DOMException && e.name === 'AbortError') throw e
    throw new NetworkError(e)
  }
}

export async function toApiError(res: Response): Promise<ApiError> {
  let problem: Problem = {}
  const text = await res.text().catch(() => '')
  if (text) {
    try {
      const parsed: unknown = JSON.parse(text)
      if (parsed && typeof parsed === 'object') problem = parsed as Problem
    } catch {
      problem = { detail: text.slice(0, 300) }
    }
  }
  const ra = Number(res.headers.get('retry-after'))
  return new ApiError(res.status, problem, Number.isFinite(ra) && ra > 0 ? ra : null)
}

/** Sends a request; resolves with the parsed JSON body (or `undefined` for 204). */
export async function api<T>(path: string, opts: RequestOptions = {}): Promise<T> {
  let res = await send(path, opts)
  if (!res.ok) {
    let err = await toApiError(res)
    if (err.reauthRequired && opts.stepUp !== false && reauthHandler && (opts.method ?? 'GET') !== 'GET') {
      await reauthHandler()
      res = await send(path, opts)
      if (!res.ok) err = await toApiError(res)
    }
    if (!res.ok) {
      if (err.status === 401 && !opts.quiet401) unauthorizedHandler?.()
      throw err
    }
  }
  if (res.status === 204) return undefined as T
  const text = await res.text()
  return (text ? JSON.parse(text) : undefined) as T
}

export const get = <T>(path: string, signal?: AbortSignal) => api<T>(path, { signal })
export const post = <T>(path: string, body?: unknown) => api<T>(path, { method: 'POST', body, stepUp: true })
export const put = <T>(path: string, body?: unknown) => api<T>(path, { method: 'PUT', body, stepUp: true })
export const del = <T>(path: string) => api<T>(path, { method: 'DELETE', stepUp: true })

/** The message to show for anything a request threw. */
export function errorMessage(e: unknown): string {
  if (e instanceof ApiError || e instanceof NetworkError) return e.message
  // The browser's WebAuthn refusals (also as @simplewebauthn/browser's WebAuthnError).
  if (e instanceof Error && e.name === 'NotAllowedError')
    return 'No passkey was used: the prompt was closed or timed out, or this device has no passkey for herald (try again with your username).'
  if (e instanceof Error && e.name === 'InvalidStateError')
    return 'This device already has a passkey for this account. Sign in instead.'
  if (e instanceof Error) return e.message
  return String(e)
}

/** A fresh id for `aggregate_id` / `command_id`. */
export function newId(): string {
  if (typeof crypto !== 'undefined' && 'randomUUID' in crypto) return crypto.randomUUID()
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`
}
