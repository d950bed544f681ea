import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import type { Envelope } from '../lib/types'
import { FakeEventSource as FakeEventSourceBase } from '../test/fakes'
import { LiveConnection, backoffDelay, type LiveOptions, type StatusInfo } from './connection'

// --- a fake herald: an in-memory log, GET /api/events, and fake EventSources --

function envelope(position: number, type = 'DeploymentProgressed'): Envelope {
  return {
    position,
    id: `e${position}`,
    stream: 'deployment-d1',
    version: position,
    type,
    schema: 1,
    data: {},
    actor: { kind: 'user', id: 'u1', name: 'alice' },
    recorded_at: new Date(0).toISOString(),
    hash: 'h',
  }
}

class FakeEventSource extends FakeEventSourceBase {
  static instances: FakeEventSource[] = []
  static get last(): FakeEventSource {
    return FakeEventSource.instances[FakeEventSource.instances.length - 1]
  }
  get after(): number {
    return Number(new URL(this.url, 'http://x').searchParams.get('after'))
  }
  /** As herald sends it: `event: <type>`, `id: <position>`, `data: <envelope>`. */
  send(e: Envelope): void {
    this.message(e.type, e.position, e)
  }
}

class FakeHerald {
  log: Envelope[] = []
  up = true
  authorized = true
  reads: string[] = []

  append(n: number, type?: string): Envelope[] {
    const added: Envelope[] = []
    for (let i = 0; i < n; i++) added.push(envelope(this.log.length + 1 + i, type))
    this.log.push(...added)
    return added
  }

  fetch = async (input: string): Promise<Response> => {
    this.reads.push(input)
    if (!this.up) throw new TypeError('Failed to fetch')
    if (!this.authorized) return new Response('{"status":401}', { status: 401 })
    const url = new URL(input, 'http://herald')
    const after = Number(url.searchParams.get('after') ?? 0)
    const limit = Number(url.searchParams.get('limit') ?? 100)
    const events = this.log.filter((e) => e.position > after).slice(0, limit)
    const head = this.log.length
    const next_after = events.length ? events[events.length - 1].position : Math.max(after, head)
    return new Response(JSON.stringify({ events, next_after, head }), { status: 200 })
  }
}

const TYPES = ['DeploymentStarted', 'DeploymentProgressed', 'DeploymentSucceeded']

let herald: FakeHerald
let applied: number[]
let statuses: StatusInfo[]
let conn: LiveConnection

function connect(extra: Partial<LiveOptions> = {}): LiveConnection {
  conn = new LiveConnection({
    EventSource: FakeEventSource,
    fetch: herald.fetch,
    timers: {
      setTimeout: (fn, ms) => setTimeout(fn, ms),
      clearTimeout: (id) => clearTimeout(id as ReturnType<typeof setTimeout>),
      now: () => Date.now(),
    },
    random: () => 0.5,
    eventTypes: TYPES,
    onEvents: (events) => applied.push(...events.map((e) => e.position)),
    onStatus: (s) => statuses.push(s),
    backoffBaseMs: 1000,
    backoffCapMs: 30_000,
    ...extra,
  })
  return conn
}

const status = () => conn.info.status
const flush = () => vi.advanceTimersByTimeAsync(0)

beforeEach(() => {
  vi.useFakeTimers()
  FakeEventSource.instances = []
  herald = new FakeHerald()
  applied = []
  statuses = []
})

afterEach(() => {
  conn?.stop()
  vi.useRealTimers()
})

describe('backoffDelay', () => {
  it('doubles from the base, with jitter in the upper half, and stops at the cap', () => {
    const lo = () => 0
    const hi = () => 0.999999
    expect([1, 2, 3, 4, 5].map((n) => backoffDelay(n, 1000, 30_000, lo))).toEqual([500, 1000, 2000, 4000, 8000])
    expect([1, 2, 3, 4, 5].map((n) => backoffDelay(n, 1000, 30_000, hi))).toEqual([1000, 2000, 4000, 8000, 16000])
    expect(backoffDelay(6, 1000, 30_000, hi)).toBe(30_000)
    expect(backoffDelay(60, 1000, 30_000, hi)).toBe(30_000)
    expect(backoffDelay(60, 1000, 30_000, lo)).toBe(15_000)
  })
})

describe('LiveConnection', () => {
  it('after a step-up (a new session), resumes at once from the last position without showing a drop', async () => {
    herald.append(3)
    connect().start()
    await flush()
    const first = FakeEventSource.last
    first.open()
    const [e4] = herald.append(1)
    first.send(e4)
    statuses = []
    // The console calls reconnect() once the step-up answered; herald then ends the old stream.
    conn.reconnect()
    expect(first.closed).toBe(true)
    const second = FakeEventSource.last
    expect(second).not.toBe(first)
    expect(second.after).toBe(4)
    second.open()
    // herald ends the new session's first stream too late to matter (the old one's end, in another order).
    second.fail()
    const third = FakeEventSource.last
    expect(third).not.toBe(second)
    expect(third.after).toBe(4)
    third.open()
    const [e5] = herald.append(1)
    third.send(e5)
    expect(applied).toEqual([4, 5])
    expect(statuses.map((s) => s.status).filter((s) => s !== 'live')).toEqual([])
    // Later drops are reported as before.
    await vi.advanceTimersByTimeAsync(11_000)
    third.fail()
    expect(status()).toBe('reconnecting')
  })

  it('reads the head, then follows from it with ?after=', async () => {
    herald.append(7)
    connect().start()
    expect(status()).toBe('connecting')
    await flush()
    expect(FakeEventSource.instances).toHaveLength(1)
    expect(FakeEventSource.last.url).toBe('/api/events/live?after=7')
    FakeEventSource.last.open()
    expect(status()).toBe('live')
    const [e8] = herald.append(1)
    FakeEventSource.last.send(e8)
    expect(applied).toEqual([8])
    expect(conn.position).toBe(8)
  })

  it('never applies a position at or below the last one applied', async () => {
    connect().start(0)
    const es = FakeEventSource.last
    es.open()
    const [e1, e2, e3] = herald.append(3)
    es.send(e1)
    es.send(e2)
    es.send(e1)
    es.send(e2)
    es.send(e3)
    es.send(e2)
    expect(applied).toEqual([1, 2, 3])
  })

  it('reconnects after a drop with ?after= the last applied position, catching up with nothing missing or twice', async () => {
    connect().start(0)
    const first = FakeEventSource.last
    first.open()
    const [e1, e2] = herald.append(2)
    first.send(e1)
    first.send(e2)
    // Committed, but the stream drops before sending them.
    herald.append(3)
    first.fail()
    expect(first.closed).toBe(true)
    expect(status()).toBe('reconnecting')
    // Committed while away.
    herald.append(1)
    await vi.advanceTimersByTimeAsync(2000)
    expect(FakeEventSource.instances).toHaveLength(2)
    // The catch-up read right after the drop applied 3..5; the new stream resumes after them.
    expect(applied).toEqual([1, 2, 3, 4, 5])
    expect(FakeEventSource.last.after).toBe(5)
    const second = FakeEventSource.last
    second.open()
    expect(status()).toBe('live')
    // What the server sends from there, even repeated, applies once.
    for (const e of herald.log) second.send(e)
    const [e7] = herald.append(1)
    second.send(e7)
    second.send(e7)
    expect(applied).toEqual([1, 2, 3, 4, 5, 6, 7])
  })

  it('backs off exponentially with jitter up to the cap while herald is down, then says offline', async () => {
    connect({ random: () => 0.999999 }).start(0)
    FakeEventSource.last.open()
    herald.up = false
    const opened: number[] = []
    const t0 = Date.now()
    FakeEventSource.last.fail()
    for (let i = 0; i < 8; i++) {
      const before = FakeEventSource.instances.length
      // Advance until the next attempt is made.
      while (FakeEventSource.instances.length === before) await vi.advanceTimersByTimeAsync(100)
      opened.push(Date.now())
      FakeEventSource.last.fail()
    }
    const gaps = opened.map((t, i) => t - (i === 0 ? t0 : opened[i - 1]))
    // Attempt n waits min(30 s, 1 s * 2^(n-1)); with random near 1, the whole of it.
    expect(gaps.map((g) => Math.round(g / 100) * 100)).toEqual([1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000])
    expect(status()).toBe('offline')
    expect(statuses.some((s) => s.status === 'reconnecting')).toBe(true)
    // herald is back: the next attempt opens and the back-off starts over.
    herald.up = true
    await vi.advanceTimersByTimeAsync(30_000)
    FakeEventSource.last.open()
    expect(status()).toBe('live')
    FakeEventSource.last.fail()
    const n = FakeEventSource.instances.length
    await vi.advanceTimersByTimeAsync(1000)
    expect(FakeEventSource.instances.length).toBe(n + 1)
  })

  it('reads a gap the EventSource skipped (an event type it has no listener for) before going on', async () => {
    connect().start(0)
    const es = FakeEventSource.last
    es.open()
    const [e1] = herald.append(1)
    herald.append(1, 'SomethingNew')
    const [e3] = herald.append(1)
    es.send(e1)
    es.send(herald.log[1]) // not surfaced: no listener for 'SomethingNew'
    es.send(e3)
    expect(applied).toEqual([1])
    await flush()
    expect(applied).toEqual([1, 2, 3])
    const [e4] = herald.append(1)
    es.send(e3)
    es.send(e4)
    expect(applied).toEqual([1, 2, 3, 4])
  })

  it('applies events strictly in order, without gaps, whatever order SSE, catch-up reads and polls bring them in', async () => {
    connect().start(0)
    const es = FakeEventSource.last
    es.open()
    herald.append(30)
    // Deliver a shuffled subset over SSE, with repeats.
    const order = [3, 1, 2, 2, 7, 5, 4, 9, 8, 6, 10, 15, 12, 1, 30]
    for (const p of order) es.send(herald.log[p - 1])
    await vi.advanceTimersByTimeAsync(10)
    es.fail()
    await vi.advanceTimersByTimeAsync(5000)
    FakeEventSource.last.open()
    expect(applied).toEqual(Array.from({ length: 30 }, (_, i) => i + 1))
  })

  it('polls /api/events when SSE never opens while herald answers, and says so', async () => {
    herald.append(2)
    connect({ openTimeoutMs: 5000, failuresBeforePolling: 3 }).start()
    await flush()
    // First attempt: no open within the timeout. Next two: errors before any open.
    await vi.advanceTimersByTimeAsync(5000)
    expect(status()).toBe('reconnecting')
    await vi.advanceTimersByTimeAsync(1000)
    FakeEventSource.last.fail()
    await vi.advanceTimersByTimeAsync(2000)
    FakeEventSource.last.fail()
    await flush()
    expect(status()).toBe('polling')
    expect(conn.info.pollingReason).toBe('never-opened')
    herald.append(2)
    herald.reads = []
    await vi.advanceTimersByTimeAsync(1000)
    expect(applied).toEqual([3, 4])
    expect(herald.reads.every((r) => r.startsWith('/api/events?after='))).toBe(true)
    // Polls go on, each from the last applied position.
    herald.append(1)
    await vi.advanceTimersByTimeAsync(1000)
    expect(applied).toEqual([3, 4, 5])
    await vi.advanceTimersByTimeAsync(1000)
    expect(herald.reads[herald.reads.length - 1]).toBe('/api/events?after=5&limit=500')
  })

  it('polls when SSE opens but delivers nothing (a buffering proxy), with nothing missing or twice', async () => {
    connect({ checkAfterOpenMs: 5000, deliveryGraceMs: 3000 }).start(0)
    const es = FakeEventSource.last
    es.open()
    expect(status()).toBe('live')
    herald.append(3) // committed, but the proxy holds the stream back
    await vi.advanceTimersByTimeAsync(5000)
    // The check read them already; SSE gets a grace period to catch up.
    expect(applied).toEqual([1, 2, 3])
    expect(status()).toBe('live')
    await vi.advanceTimersByTimeAsync(3000)
    expect(status()).toBe('polling')
    expect(conn.info.pollingReason).toBe('no-delivery')
    expect(es.closed).toBe(true)
    es.send(herald.log[0]) // a late delivery from the closed stream changes nothing
    herald.append(1)
    await vi.advanceTimersByTimeAsync(1000)
    expect(applied).toEqual([1, 2, 3, 4])
  })

  it('stays live when SSE delivers within the grace period', async () => {
    connect({ checkAfterOpenMs: 5000, deliveryGraceMs: 3000 }).start(0)
    const es = FakeEventSource.last
    es.open()
    herald.append(2)
    await vi.advanceTimersByTimeAsync(5000)
    es.send(herald.log[0])
    es.send(herald.log[1])
    await vi.advanceTimersByTimeAsync(3000)
    expect(status()).toBe('live')
    expect(applied).toEqual([1, 2])
  })

  it('goes back to SSE from polling when a trial stream delivers', async () => {
    connect({ checkAfterOpenMs: 5000, deliveryGraceMs: 3000, sseRetryWhilePollingMs: 30_000 }).start(0)
    FakeEventSource.last.open()
    herald.append(1)
    await vi.advanceTimersByTimeAsync(8000)
    expect(status()).toBe('polling')
    const before = FakeEventSource.instances.length
    await vi.advanceTimersByTimeAsync(30_000)
    expect(FakeEventSource.instances.length).toBe(before + 1)
    const trial = FakeEventSource.last
    expect(trial.after).toBe(1)
    trial.open()
    expect(status()).toBe('polling') // opening alone proves nothing here
    const [e2] = herald.append(1)
    trial.send(e2)
    expect(status()).toBe('live')
    expect(applied).toEqual([1, 2])
    // No more polling.
    herald.reads = []
    await vi.advanceTimersByTimeAsync(4000)
    expect(herald.reads).toEqual([])
  })

  it('stops and reports when herald answers 401 (the session ended)', async () => {
    const onUnauthorized = vi.fn()
    connect({ onUnauthorized }).start(0)
    FakeEventSource.last.open()
    herald.authorized = false
    FakeEventSource.last.fail()
    await flush()
    expect(onUnauthorized).toHaveBeenCalledOnce()
    expect(status()).toBe('stopped')
    await vi.advanceTimersByTimeAsync(60_000)
    expect(FakeEventSource.instances).toHaveLength(1)
  })

  it('retries the first read with back-off when herald cannot be reached at start', async () => {
    herald.up = false
    const onReady = vi.fn()
    connect({ onReady }).start()
    await flush()
    expect(status()).toBe('reconnecting')
    expect(FakeEventSource.instances).toHaveLength(0)
    herald.up = true
    herald.append(4)
    await vi.advanceTimersByTimeAsync(1000)
    expect(onReady).toHaveBeenCalledWith(4)
    expect(FakeEventSource.last.after).toBe(4)
  })

  it('nudge() retries at once instead of waiting out the back-off', async () => {
    connect({ random: () => 0.999999 }).start(0)
    FakeEventSource.last.open()
    herald.up = false
    for (let i = 0; i < 4; i++) {
      FakeEventSource.last.fail()
      await vi.advanceTimersByTimeAsync(20_000)
    }
    FakeEventSource.last.fail()
    await flush()
    const n = FakeEventSource.instances.length
    herald.up = true
    conn.nudge()
    expect(FakeEventSource.instances.length).toBe(n + 1)
  })

  it('starts over from the head when the log was replaced with a shorter one', async () => {
    const onReady = vi.fn()
    herald.append(5)
    connect({ onReady }).start()
    await flush()
    FakeEventSource.last.open()
    // The store is replaced: herald refuses ?after=5 now, and its log ends at 2.
    herald.log = []
    herald.append(2)
    FakeEventSource.last.fail()
    await flush()
    expect(onReady).toHaveBeenLastCalledWith(2)
    expect(FakeEventSource.last.after).toBe(2)
    FakeEventSource.last.open()
    const [e3] = herald.append(1)
    FakeEventSource.last.send(e3)
    expect(applied).toEqual([3])
  })
})
