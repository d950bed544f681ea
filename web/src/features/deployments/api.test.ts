import { afterEach, describe, expect, it, vi } from 'vitest'
import { sendDeploymentCommand } from './api'

afterEach(() => vi.unstubAllGlobals())

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
