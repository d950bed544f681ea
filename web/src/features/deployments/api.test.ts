import { afterEach, describe, expect, it, vi } from 'vitest'
import { fetchDeployments, sendDeploymentCommand } from './api'
import type { Deployment } from './types'

const dep = (i: number, status: Deployment['status'] = 'in_progress'): Deployment => ({
  id: `d${i}`,
  service: `svc${i}`,
  version: null,
  environment: null,
  status,
  progress: 0,
  message: null,
  reason: null,
  started_by: { kind: 'user', id: 'u1', name: 'alice' },
  started_at: '2026-01-01T00:00:00Z',
  updated_at: '2026-01-01T00:00:00Z',
  stream_version: 1,
})

function stubList(count: number) {
  const urls: string[] = []
  vi.stubGlobal(
    'fetch',
    vi.fn(async (url: string) => {
      urls.push(url)
      const limit = Number(new URL(url, 'http://h').searchParams.get('limit'))
      const body = { deployments: Array.from({ length: Math.min(count, limit) }, (_, i) => dep(i)), position: 0 }
      return new Response(JSON.stringify(body), { status: 200 })
    }),
  )
  return urls
}

afterEach(() => vi.unstubAllGlobals())

describe('fetchDeployments', () => {
  it('lets herald filter by status, and reads one more than it shows to know there are more', async () => {
    const urls = stubList(250)
    const list = await fetchDeployments({ status: 'failed', limit: 200 })
    expect(urls).toEqual(['/api/deployments?status=failed&limit=201'])
    expect(list.deployments).toHaveLength(200)
    expect(list.more).toBe(true)
    expect(list.status).toBe('failed')
  })

  it('says there are no more when everything fits', async () => {
    const urls = stubList(150)
    const list = await fetchDeployments({ limit: 200 })
    expect(urls).toEqual(['/api/deployments?limit=201'])
    expect(list.deployments).toHaveLength(150)
    expect(list.more).toBe(false)
  })

  it("at herald's maximum it cannot read one more, so a full list may have more and a short one has not", async () => {
    let urls = stubList(1500)
    let list = await fetchDeployments({ limit: 5000 })
    expect(urls).toEqual(['/api/deployments?limit=1000'])
    expect(list.deployments).toHaveLength(1000)
    expect(list.more).toBe(true)
    urls = stubList(999)
    list = await fetchDeployments({ limit: 1000 })
    expect(urls).toEqual(['/api/deployments?limit=1000'])
    expect(list.more).toBe(false)
  })
})

describe('sendDeploymentCommand', () => {
  it('sends the command id it is given, so a repeat is the same command', async () => {
    const bodies: unknown[] = []
    vi.stubGlobal(
      'fetch',
      vi.fn(async (_url: string, init: RequestInit) => {
        bodies.push(JSON.parse(String(init.body)))
        return new Response('{"stream":"deployment-a","version":1,"position":1,"events":[]}', { status: 200 })
      }),
    )
    const cmd = { type: 'StartDeployment' as const, data: { service: 'api' } }
    await sendDeploymentCommand('a', cmd, 0, 'c1')
    await sendDeploymentCommand('a', cmd, 0, 'c1')
    expect(bodies).toEqual([
      { type: 'StartDeployment', aggregate_id: 'a', expected_version: 0, command_id: 'c1', data: { service: 'api' } },
      { type: 'StartDeployment', aggregate_id: 'a', expected_version: 0, command_id: 'c1', data: { service: 'api' } },
    ])
  })
})
