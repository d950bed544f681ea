import { afterEach, describe, expect, it, vi } from 'vitest'
import { ApiError } from '../../lib/api'
import { fetchSetup, registerWithPasskey } from './api'

afterEach(() => vi.unstubAllGlobals())

const answer = (status: number, body: unknown) =>
  vi.fn(async () => new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } }))

describe('fetchSetup (first run)', () => {
  it('says whether herald waits for its first admin', async () => {
    vi.stubGlobal('fetch', answer(200, { setup_required: true }))
    expect(await fetchSetup()).toEqual({ setup_required: true })
    vi.stubGlobal('fetch', answer(200, { setup_required: false }))
    expect(await fetchSetup()).toEqual({ setup_required: false })
  })
  it('takes a 404 for an older herald without first-run setup', async () => {
    vi.stubGlobal('fetch', answer(404, { status: 404, title: 'Not Found' }))
    expect(await fetchSetup()).toBeNull()
  })
})

describe('registerWithPasskey', () => {
  it('sends the setup code as invite, and a wrong one comes back as a 403', async () => {
    const fetchMock = answer(403, { status: 403, title: 'Forbidden', detail: 'invite: not valid' })
    vi.stubGlobal('fetch', fetchMock)
    const err = await registerWithPasskey({ username: 'alice', display_name: 'Alice', invite: 'CODE' }).catch((e) => e)
    expect(err).toBeInstanceOf(ApiError)
    expect((err as ApiError).status).toBe(403)
    const [url, init] = fetchMock.mock.calls[0] as unknown as [string, RequestInit]
    expect(url).toBe('/api/auth/register/start')
    expect(JSON.parse(String(init.body))).toEqual({ username: 'alice', display_name: 'Alice', invite: 'CODE' })
  })
})
