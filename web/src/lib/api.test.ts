import { afterEach, describe, expect, it, vi } from 'vitest'
import { ApiError, api, plainWords, post, setReauthHandler, setUnauthorizedHandler } from './api'

const problem = (status: number, body: object, headers: Record<string, string> = {}) =>
  new Response(JSON.stringify({ status, ...body }), {
    status,
    headers: { 'content-type': 'application/problem+json', ...headers },
  })

afterEach(() => {
  setReauthHandler(null)
  setUnauthorizedHandler(null)
  vi.unstubAllGlobals()
})

describe('plainWords', () => {
  it('says what a 409 means and which versions clashed', () => {
    expect(plainWords(409, { detail: 'x', expected_version: 2, actual_version: 3 })).toBe(
      'Someone else changed this first (you saw version 2, it is now at version 3). The view now shows the latest state: check it and try again.',
    )
  })
  it('names the rule of a 422 and its detail', () => {
    expect(
      plainWords(422, {
        title: 'Deployment not in progress',
        detail: 'the deployment has already finished (status succeeded)',
      }),
    ).toBe('Deployment not in progress. The deployment has already finished (status succeeded).')
  })
  it('passes a 400 detail on, and asks for a passkey on reauth', () => {
    expect(plainWords(400, { detail: 'data.percent: must be from 0 to 100 (got 120)' })).toBe(
      'herald could not accept this: Data.percent: must be from 0 to 100 (got 120).',
    )
    expect(plainWords(403, { reauth_required: true, detail: 'StartDeployment needs…' })).toMatch(/passkey/)
    expect(plainWords(429, {}, 7)).toBe('Too many requests. Wait 7 s and try again.')
  })
})

describe('api', () => {
  it('sends JSON same-origin and throws the problem in plain words', async () => {
    const fetch = vi.fn().mockResolvedValue(problem(422, { title: 'Deployment already started', detail: 'a deployment with this id exists' }))
    vi.stubGlobal('fetch', fetch)
    const err = await post('/api/commands', { type: 'StartDeployment' }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ApiError)
    expect((err as ApiError).status).toBe(422)
    expect((err as Error).message).toBe('Deployment already started. A deployment with this id exists.')
    const [url, init] = fetch.mock.calls[0]
    expect(url).toBe('/api/commands')
    expect(init).toMatchObject({ method: 'POST', credentials: 'same-origin', body: '{"type":"StartDeployment"}' })
    expect(init.headers['content-type']).toBe('application/json')
  })

  it('runs the passkey step-up on reauth_required, then retries the command once', async () => {
    const fetch = vi
      .fn()
      .mockResolvedValueOnce(problem(403, { reauth_required: true, detail: 'needs a passkey' }))
      .mockResolvedValueOnce(new Response('{"position":9}', { status: 200 }))
    vi.stubGlobal('fetch', fetch)
    const stepUp = vi.fn().mockResolvedValue(undefined)
    setReauthHandler(stepUp)
    await expect(post('/api/commands', { type: 'StartDeployment' })).resolves.toEqual({ position: 9 })
    expect(stepUp).toHaveBeenCalledOnce()
    expect(fetch).toHaveBeenCalledTimes(2)
    expect(fetch.mock.calls[1][1].body).toBe(fetch.mock.calls[0][1].body)
  })

  it('does not retry when the step-up is cancelled, nor more than once', async () => {
    const fetch = vi.fn().mockImplementation(async () => problem(403, { reauth_required: true }))
    vi.stubGlobal('fetch', fetch)
    setReauthHandler(vi.fn().mockRejectedValueOnce(new Error('cancelled')).mockResolvedValue(undefined))
    await expect(post('/api/commands', {})).rejects.toThrow('cancelled')
    expect(fetch).toHaveBeenCalledTimes(1)
    const err = await post('/api/commands', {}).catch((e: unknown) => e)
    expect((err as ApiError).reauthRequired).toBe(true)
    expect(fetch).toHaveBeenCalledTimes(3)
  })

  it('reports a 401 so the app can show the login page, except when asked not to', async () => {
    vi.stubGlobal('fetch', vi.fn().mockImplementation(async () => problem(401, { detail: 'no credential' })))
    const onUnauthorized = vi.fn()
    setUnauthorizedHandler(onUnauthorized)
    await expect(api('/api/deployments')).rejects.toThrow('You are signed out')
    expect(onUnauthorized).toHaveBeenCalledOnce()
    await expect(api('/api/me', { quiet401: true })).rejects.toBeInstanceOf(ApiError)
    expect(onUnauthorized).toHaveBeenCalledOnce()
  })
})
