import { beforeEach, describe, expect, it } from 'vitest'
import type { StatusInfo } from './connection'
import { SharedLive, type ConnectionCallbacks, type ConnectionLike, type LockManagerLike } from './shared'
import { makeEnvelope } from '../test/envelope'
import { FakeChannels, FakeLocks } from '../test/fakes'

// --- fakes: the leader's connection (Web Locks and BroadcastChannel: test/fakes.ts) --

const envelope = (position: number) => makeEnvelope({ position, version: position })

/** Stands in for LiveConnection: the test plays herald through it. */
class FakeConnection implements ConnectionLike {
  static all: FakeConnection[] = []
  startedAfter: number | undefined | null = null
  stopped = false
  reconnects = 0
  nudges = 0
  private applied = 0
  info: StatusInfo = { status: 'connecting', position: 0, attempt: 0, retryAt: null, pollingReason: null }
  constructor(
    readonly tab: string,
    private readonly cb: ConnectionCallbacks,
    private readonly head: number,
  ) {
    FakeConnection.all.push(this)
  }
  static open(): FakeConnection[] {
    return FakeConnection.all.filter((c) => c.startedAfter !== null && !c.stopped)
  }
  start(after?: number): void {
    this.startedAfter = after
    this.applied = after ?? this.head
    this.cb.onReady(this.applied)
    this.info = { ...this.info, status: 'live', position: this.applied }
    this.cb.onStatus(this.info)
  }
  stop(): void {
    this.stopped = true
    this.info = { ...this.info, status: 'stopped' }
    this.cb.onStatus(this.info)
  }
  nudge(): void {
    this.nudges++
  }
  reconnect(): void {
    this.reconnects++
  }
  /** What herald streams from `after`: LiveConnection hands on only what is past its position. */
  deliver(positions: number[]): void {
    const fresh = positions.filter((p) => p > this.applied).map(envelope)
    if (fresh.length === 0) return
    this.applied = fresh[fresh.length - 1].position
    this.info = { ...this.info, position: this.applied }
    this.cb.onEvents(fresh)
  }
}

interface Tab {
  name: string
  live: SharedLive
  seen: number[]
  statuses: string[]
  ready: number[]
}

function openTab(name: string, locks: LockManagerLike | null, channels: FakeChannels | null, head = 10): Tab {
  const tab: Tab = { name, live: null as unknown as SharedLive, seen: [], statuses: [], ready: [] }
  tab.live = new SharedLive({
    locks,
    BroadcastChannel: channels?.Ctor ?? null,
    createConnection: (cb) => new FakeConnection(name, cb, head),
    onEvents: (events) => tab.seen.push(...events.map((e) => e.position)),
    onStatus: (s) => tab.statuses.push(s.status),
    onReady: (p) => tab.ready.push(p),
  })
  tab.live.start()
  return tab
}

/** Tabs of one browser: one lock manager, one set of channels. */
function browser(): (name: string) => Tab {
  const locks = new FakeLocks()
  const channels = new FakeChannels()
  return (name) => openTab(name, locks, channels)
}

const settle = () => new Promise((r) => setTimeout(r, 5))

describe('SharedLive: one connection per browser', () => {
  beforeEach(() => {
    FakeConnection.all = []
  })

  it('elects one leader; every follower gets every event once; on close a follower takes over from the last position', async () => {
    const tab = browser()
    const a = tab('a')
    await settle()
    const b = tab('b')
    const c = tab('c')
    await settle()

    expect([a.live.mode, b.live.mode, c.live.mode]).toEqual(['leader', 'follower', 'follower'])
    expect(FakeConnection.open().map((x) => x.tab)).toEqual(['a'])
    // The followers learnt the leader's position and status from its answer to their hello.
    expect(b.ready).toEqual([10])
    expect(b.live.info.status).toBe('live')

    const leader = FakeConnection.open()[0]
    leader.deliver([11, 12])
    leader.deliver([13])
    await settle()
    for (const t of [a, b, c]) expect(t.seen, t.name).toEqual([11, 12, 13])

    // The leader's tab closes: b (next in the lock's queue) leads, from 13.
    a.live.stop()
    await settle()
    expect(b.live.mode).toBe('leader')
    expect(c.live.mode).toBe('follower')
    const open = FakeConnection.open()
    expect(open.map((x) => x.tab)).toEqual(['b'])
    expect(open[0].startedAfter).toBe(13)
    // The old leader's "stopped" stayed in its own tab.
    expect(c.statuses).not.toContain('stopped')

    // herald resends 13 (it is at or below the resume point) and goes on.
    open[0].deliver([13, 14, 15])
    await settle()
    expect(b.seen).toEqual([11, 12, 13, 14, 15])
    expect(c.seen).toEqual([11, 12, 13, 14, 15])
    expect(a.seen).toEqual([11, 12, 13])

    // And once more: c takes over from 15.
    b.live.stop()
    await settle()
    expect(c.live.mode).toBe('leader')
    expect(FakeConnection.open().map((x) => [x.tab, x.startedAfter])).toEqual([['c', 15]])
    c.live.stop()
  })

  it('a tab that joins while events flow starts at the first batch it sees, and nudges and step-up reconnects go to the leader', async () => {
    const tab = browser()
    const a = tab('a')
    await settle()
    const leader = FakeConnection.open()[0]
    leader.deliver([11])
    const b = tab('b')
    leader.deliver([12])
    await settle()
    expect(b.seen).toEqual([12])
    expect(b.ready[0]).toBe(11)
    b.live.nudge()
    b.live.reconnect()
    await settle()
    expect(leader.nudges).toBe(1)
    expect(leader.reconnects).toBe(1)
    expect(FakeConnection.open()).toHaveLength(1)
    a.live.stop()
    b.live.stop()
  })

  it('without Web Locks or BroadcastChannel, each tab runs its own connection', async () => {
    const a = openTab('a', null, new FakeChannels())
    const b = openTab('b', new FakeLocks(), null)
    await settle()
    expect([a.live.mode, b.live.mode]).toEqual(['solo', 'solo'])
    expect(FakeConnection.open().map((x) => x.tab)).toEqual(['a', 'b'])
    a.live.stop()
    b.live.stop()
  })
})
