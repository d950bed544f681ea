import { describe, expect, it } from 'vitest'
import { OnceCommand, type CommandIds } from './once'

function counter() {
  let n = 0
  return () => `id${++n}`
}

describe('OnceCommand', () => {
  it('a second submit while the first is under way is the same command, sent once', async () => {
    const once = new OnceCommand<string>(counter())
    const sent: CommandIds[] = []
    let release!: (v: string) => void
    const send = (ids: CommandIds) => {
      sent.push(ids)
      return new Promise<string>((r) => (release = r))
    }
    const a = once.submit(send)
    const b = once.submit(send)
    expect(once.pending).toBe(true)
    release('done')
    expect(await a).toBe('done')
    expect(await b).toBe('done')
    expect(sent).toEqual([{ aggregateId: 'id1', commandId: 'id2' }])
    expect(once.pending).toBe(false)
  })

  it('a retry after a failure repeats the same ids; after a success the next command has new ones', async () => {
    const once = new OnceCommand<string>(counter())
    const sent: CommandIds[] = []
    await expect(
      once.submit(async (ids) => {
        sent.push(ids)
        throw new Error('network')
      }),
    ).rejects.toThrow('network')
    await once.submit(async (ids) => {
      sent.push(ids)
      return 'ok'
    })
    await once.submit(async (ids) => {
      sent.push(ids)
      return 'ok'
    })
    expect(sent.map((i) => i.commandId)).toEqual(['id2', 'id2', 'id4'])
    expect(sent.map((i) => i.aggregateId)).toEqual(['id1', 'id1', 'id3'])
  })
})
