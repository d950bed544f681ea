import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { FakeChannels, FakeEventSource as FakeEventSourceBase, FakeLocks } from '../test/fakes'
import {
  ResourceHub,
  ResourceStream,
  defineResource,
  readUrlOf,
  withParam,
  type ResourceType,
  type ResourceView,
  type StreamCallbacks,
  type StreamLike,
  type StreamMode,
} from './resource'

// A list resource: `snapshot` replaces, `item` upserts by id.
interface Item {
  id: string
  v: number
}
interface List {
  items: Item[]
}
const listType = defineResource<List>(
  'test-list',
  {
    snapshot: (_s, d) => ({ items: (d as List).items }),
    item: (s, d) => {
      const it = d as Item
      const items = (s?.items ?? []).filter((x) => x.id !== it.id)
      return { items: [...items, it] }
    },
  },
  'snapshot',
)

// --- ResourceStream ----------------------------------------------------------

class FakeEventSource extends FakeEventSourceBase {
  static instances: FakeEventSource[] = []
  static get last(): FakeEventSource {
    return FakeEventSource.instances[FakeEventSource.instances.length - 1]
  }
  send(event: string, id: number, data: unknown): void {
    this.message(event, id, data)
  }
}

let answers: (() => Response)[]
let fetched: string[]
const fakeFetch = async (url: string) => {
  fetched.push(url)
  const next = answers.shift()
  if (!next) throw new TypeError('Failed to fetch')
  return next()
}
let views: ResourceView<unknown>[]
let unauthorized: number
let stream: ResourceStream

function follow(url = '/api/things/live?status=x', extra: { pollMs?: number; minPosition?: number } = {}) {
  stream = new ResourceStream({
    url,
    type: listType as ResourceType<unknown>,
    EventSource: FakeEventSource,
    fetch: fakeFetch,
    onChange: (v) => views.push(v),
    onUnauthorized: () => unauthorized++,
    random: () => 0.5,
    ...extra,
  })
  return stream
}
const last = () => views[views.length - 1]
const ids = () => (last().state as List | undefined)?.items.map((i) => `${i.id}:${i.v}`)

describe('ResourceStream', () => {
  beforeEach(() => {
    vi.useFakeTimers()
    FakeEventSource.instances = []
    answers = []
    fetched = []
    views = []
    unauthorized = 0
  })
  afterEach(() => {
    stream?.stop()
    vi.useRealTimers()
  })

  it('opens one EventSource with credentials and folds each named event into the state, at its id', () => {
    follow().run('stream')
    expect(FakeEventSource.instances).toHaveLength(1)
    const es = FakeEventSource.last
    expect(es.url).toBe('/api/things/live?status=x')
    expect(es.init).toEqual({ withCredentials: true })
    es.open()
    expect(last()?.status ?? 'connecting').toBe('connecting')
    es.send('snapshot', 7, { items: [{ id: 'a', v: 1 }] })
    expect(last()).toMatchObject({ status: 'live', position: 7 })
    es.send('item', 9, { id: 'b', v: 1 })
    es.send('item', 10, { id: 'a', v: 2 })
    es.send('unknown', 11, { id: 'c', v: 1 })
    expect(ids()).toEqual(['b:1', 'a:2'])
    expect(last().position).toBe(10)
  })

  it("leaves a dropped stream to the browser's own reconnect (Last-Event-ID), and says so only if it takes long", async () => {
    follow().run('stream')
    const es = FakeEventSource.last
    es.open()
    es.send('snapshot', 3, { items: [] })
    es.drop()
    await vi.advanceTimersByTimeAsync(1_000)
    expect(last().status).toBe('live')
    es.open()
    es.send('item', 4, { id: 'a', v: 1 })
    es.drop()
    await vi.advanceTimersByTimeAsync(3_500)
    expect(last().status).toBe('reconnecting')
    es.open()
    expect(last().status).toBe('live')
    // Still the same EventSource: the browser resumed it, and herald sent what changed after 4.
    expect(FakeEventSource.instances).toHaveLength(1)
    expect(ids()).toEqual(['a:1'])
    expect(fetched).toEqual([])
  })

  it('when the browser gives up, asks herald why: a 404 is shown until a retry, which can wait for a position', async () => {
    follow('/api/things/t/live').run('stream')
    answers.push(() => new Response(JSON.stringify({ status: 404, detail: 'no post is tagged t' }), { status: 404 }))
    FakeEventSource.last.fail()
    await vi.advanceTimersByTimeAsync(0)
    expect(fetched).toEqual(['/api/things/t/live'])
    expect(last()).toMatchObject({ status: 'failed', error: { status: 404, problem: { detail: 'no post is tagged t' } } })
    await vi.advanceTimersByTimeAsync(60_000)
    expect(FakeEventSource.instances).toHaveLength(1)
    stream.retry(42)
    expect(FakeEventSource.instances).toHaveLength(2)
    expect(FakeEventSource.last.url).toBe('/api/things/t/live?min_position=42')
    expect(last()).toMatchObject({ status: 'connecting', error: null })
    FakeEventSource.last.open()
    FakeEventSource.last.send('snapshot', 42, { items: [{ id: 'p', v: 1 }] })
    expect(last()).toMatchObject({ status: 'live', position: 42 })
  })

  it('after a refusal that may pass (5xx, 429, no answer), connects afresh after a back-off and takes the fresh state', async () => {
    follow().run('stream')
    const first = FakeEventSource.last
    first.open()
    first.send('snapshot', 5, { items: [{ id: 'a', v: 1 }, { id: 'b', v: 1 }] })
    answers.push(() => new Response('', { status: 503 }))
    first.fail()
    await vi.advanceTimersByTimeAsync(0)
    expect(last().status).toBe('reconnecting')
    expect(FakeEventSource.instances).toHaveLength(1)
    // No answer at all: herald is down.
    await vi.advanceTimersByTimeAsync(1_000)
    expect(FakeEventSource.instances).toHaveLength(2)
    FakeEventSource.last.fail()
    await vi.advanceTimersByTimeAsync(0)
    answers.push(() => new Response('', { status: 429, headers: { 'retry-after': '5' } }))
    await vi.advanceTimersByTimeAsync(1_500)
    expect(FakeEventSource.instances).toHaveLength(3)
    FakeEventSource.last.fail()
    await vi.advanceTimersByTimeAsync(4_000)
    expect(FakeEventSource.instances).toHaveLength(3)
    await vi.advanceTimersByTimeAsync(1_000)
    expect(FakeEventSource.instances).toHaveLength(4)
    const fresh = FakeEventSource.last
    expect(fresh.url).toBe('/api/things/live?status=x')
    expect(last().state).toBeDefined()
    fresh.open()
    fresh.send('snapshot', 9, { items: [{ id: 'b', v: 2 }] })
    expect(ids()).toEqual(['b:2'])
    expect(last()).toMatchObject({ status: 'live', position: 9 })
  })

  it('a 401 ends the session: it stops and says so', async () => {
    follow().run('stream')
    answers.push(() => new Response('', { status: 401 }))
    FakeEventSource.last.fail()
    await vi.advanceTimersByTimeAsync(0)
    expect(unauthorized).toBe(1)
    expect(last().status).toBe('stopped')
    await vi.advanceTimersByTimeAsync(60_000)
    expect(FakeEventSource.instances).toHaveLength(1)
  })

  it('polls the address without /live while told to, and streams again when told', async () => {
    answers.push(() => new Response(JSON.stringify({ items: [{ id: 'a', v: 1 }], position: 4 })))
    answers.push(() => new Response(JSON.stringify({ items: [{ id: 'a', v: 2 }], position: 6 })))
    follow('/api/things/live?status=x', { pollMs: 3_000 }).run('poll')
    expect(FakeEventSource.instances).toHaveLength(0)
    await vi.advanceTimersByTimeAsync(0)
    expect(fetched).toEqual(['/api/things?status=x'])
    expect(last()).toMatchObject({ status: 'polling', position: 4 })
    await vi.advanceTimersByTimeAsync(3_000)
    expect(ids()).toEqual(['a:2'])
    stream.run('stream')
    expect(FakeEventSource.instances).toHaveLength(1)
    await vi.advanceTimersByTimeAsync(10_000)
    expect(fetched).toHaveLength(2)
  })

  it('a stream opened after a command waits for its position', () => {
    follow('/api/posts/p1/live', { minPosition: 42 }).run('stream')
    expect(FakeEventSource.last.url).toBe('/api/posts/p1/live?min_position=42')
  })

  it('builds addresses', () => {
    expect(readUrlOf('/api/feeds/rust/live?limit=5')).toBe('/api/feeds/rust?limit=5')
    expect(readUrlOf('/api/deployments/live')).toBe('/api/deployments')
    expect(withParam('/api/posts/p/live', 'min_position', 9)).toBe('/api/posts/p/live?min_position=9')
    expect(withParam('/api/x/live?a=1&min_position=2', 'min_position', 9)).toBe('/api/x/live?a=1&min_position=9')
  })
})

// --- ResourceHub ---------------------------------------------------------------

/** Stands in for a ResourceStream: the test plays herald through it. */
class FakeStream implements StreamLike {
  static all: FakeStream[] = []
  mode: StreamMode | null = null
  stopped = false
  retries: (number | undefined)[] = []
  constructor(
    readonly url: string,
    readonly cb: StreamCallbacks,
  ) {
    FakeStream.all.push(this)
  }
  static open(): FakeStream[] {
    return FakeStream.all.filter((s) => !s.stopped)
  }
  run(mode: StreamMode): void {
    this.mode = mode
  }
  stop(): void {
    this.stopped = true
  }
  retry(min?: number): void {
    this.retries.push(min)
  }
  nudge(): void {}
  emit(items: Item[], position: number): void {
    this.cb.onChange({ state: { items }, status: 'live', position, error: null })
  }
}

interface Tab {
  hub: ResourceHub
  seen: Map<string, number[]>
  follow(url: string): () => void
}

function browser(maxStreams = 3) {
  const locks = new FakeLocks()
  const channels = new FakeChannels()
  let n = 0
  return (options: { locks?: FakeLocks | null } = {}): Tab => {
    const hub = new ResourceHub({
      locks: options.locks === null ? null : locks,
      BroadcastChannel: channels.Ctor,
      createStream: (url, _type, cb) => new FakeStream(url, cb),
      maxStreams,
      tabId: `t${++n}`,
    })
    const seen = new Map<string, number[]>()
    hub.start()
    return {
      hub,
      seen,
      follow: (url) =>
        hub.subscribe(listType as ResourceType<unknown>, url, (v) => seen.set(url, [...(seen.get(url) ?? []), v.position])),
    }
  }
}

// Long enough for a lock grant and a message or two on a busy machine.
const settle = () => new Promise((r) => setTimeout(r, 25))
const streamOf = (url: string) => FakeStream.open().filter((s) => s.url === url)

describe('ResourceHub: the streams of every tab, run once in the browser', () => {
  beforeEach(() => {
    FakeStream.all = []
  })

  it('one stream per address for all tabs; each tab gets every state; when the leading tab goes another runs it', async () => {
    const tab = browser()
    const a = tab()
    await settle()
    const b = tab()
    const c = tab()
    a.follow('/list')
    b.follow('/list')
    await settle()
    expect([a.hub.mode, b.hub.mode, c.hub.mode]).toEqual(['leader', 'follower', 'follower'])
    expect(streamOf('/list')).toHaveLength(1)
    streamOf('/list')[0].emit([{ id: 'x', v: 1 }], 5)
    await settle()
    // A tab that asks later gets the state at once.
    c.follow('/list')
    await settle()
    expect(FakeStream.open()).toHaveLength(1)
    expect([a.seen.get('/list'), b.seen.get('/list'), c.seen.get('/list')]).toEqual([[5], [5], [5]])

    a.hub.stop()
    await settle()
    expect(b.hub.mode).toBe('leader')
    const next = FakeStream.open()
    expect(next.map((s) => [s.url, s.mode])).toEqual([['/list', 'stream']])
    next[0].emit([{ id: 'x', v: 2 }], 8)
    await settle()
    expect(b.seen.get('/list')).toEqual([5, 8])
    expect(c.seen.get('/list')).toEqual([5, 8])
    b.hub.stop()
    c.hub.stop()
  })

  it('streams at most maxStreams addresses, the most recently wanted; the rest are polled', async () => {
    const tab = browser(2)
    const a = tab()
    await settle()
    const b = tab()
    a.follow('/one')
    await settle()
    b.follow('/two')
    await settle()
    const dropThree = b.follow('/three')
    await settle()
    const mode = (url: string) => streamOf(url)[0]?.mode
    expect([mode('/one'), mode('/two'), mode('/three')]).toEqual(['poll', 'stream', 'stream'])
    expect(a.hub.streaming.sort()).toEqual(['/three', '/two'])
    dropThree()
    await settle()
    expect(streamOf('/three')).toEqual([])
    expect([mode('/one'), mode('/two')]).toEqual(['stream', 'stream'])
    a.hub.stop()
    b.hub.stop()
  })

  it("drops a tab's wants when the tab is gone, even without a word from it", async () => {
    const locks = new FakeLocks()
    const channels = new FakeChannels()
    const make = (id: string) => {
      const hub = new ResourceHub({
        locks,
        BroadcastChannel: channels.Ctor,
        createStream: (url, _t, cb) => new FakeStream(url, cb),
        tabId: id,
      })
      hub.start()
      return hub
    }
    const a = make('a')
    await settle()
    const b = make('b')
    b.subscribe(listType as ResourceType<unknown>, '/only-b', () => {})
    await settle()
    expect(streamOf('/only-b')).toHaveLength(1)
    // The tab closes: the browser releases its locks, no message is sent.
    ;(b as unknown as { releaseTab: () => void }).releaseTab()
    await settle()
    expect(streamOf('/only-b')).toEqual([])
    a.stop()
  })

  it("says what a tab wants only once the tab's own lock is held, however slow the lock manager is to answer it", async () => {
    const locks = new FakeLocks()
    const channels = new FakeChannels()
    const make = (id: string, lag: number) => {
      const hub = new ResourceHub({
        locks: locks.withLag(lag),
        BroadcastChannel: channels.Ctor,
        createStream: (url, _t, cb) => new FakeStream(url, cb),
        tabId: id,
      })
      const seen: number[] = []
      hub.subscribe(listType as ResourceType<unknown>, '/list', (v) => seen.push(v.position))
      hub.start()
      return { hub, seen }
    }
    const a = make('a', 0)
    await settle()
    const b = make('b', 30)
    await new Promise((r) => setTimeout(r, 60))
    const s = streamOf('/list')
    expect(s).toHaveLength(1)
    s[0].emit([], 3)
    await settle()
    expect(b.seen).toEqual([3])
    expect(b.hub.mode).toBe('follower')
    a.hub.stop()
    b.hub.stop()
  })

  it('passes a retry to the leading tab, and without Web Locks each tab runs its own', async () => {
    const tab = browser()
    const a = tab()
    await settle()
    const b = tab()
    b.follow('/feed')
    await settle()
    b.hub.retry('/feed', 12)
    await settle()
    expect(streamOf('/feed')[0].retries).toEqual([12])
    const solo = tab({ locks: null })
    solo.follow('/feed')
    expect(solo.hub.mode).toBe('solo')
    expect(streamOf('/feed')).toHaveLength(2)
    for (const t of [a, b, solo]) t.hub.stop()
  })

  it("a page's minPosition shapes only the stream it opens: a second page on the address, in any tab, shares it", async () => {
    const made: [string, number | undefined][] = []
    const tab = (id: string, locks: FakeLocks, channels: FakeChannels) => {
      const hub = new ResourceHub({
        locks,
        BroadcastChannel: channels.Ctor,
        createStream: (url, _t, cb, min) => {
          made.push([url, min])
          return new FakeStream(url, cb)
        },
        tabId: id,
      })
      hub.start()
      return hub
    }
    const [locks, channels] = [new FakeLocks(), new FakeChannels()]
    const a = tab('a', locks, channels)
    await settle()
    const b = tab('b', locks, channels)
    const list = listType as ResourceType<unknown>
    b.subscribe(list, '/api/posts/p1/live', () => {}, 42)
    await settle()
    a.subscribe(list, '/api/posts/p1/live', () => {})
    b.subscribe(list, '/api/posts/p1/live', () => {}, 50)
    await settle()
    expect(made).toEqual([['/api/posts/p1/live', 42]])
    expect(streamOf('/api/posts/p1/live')).toHaveLength(1)
    a.stop()
    b.stop()
  })

  it('a page that subscribes before the hub starts is served once it does', async () => {
    const tab = browser()
    const a = tab()
    await settle()
    const b = new ResourceHub({
      locks: new FakeLocks(),
      BroadcastChannel: null,
      createStream: (url, _t, cb) => new FakeStream(url, cb),
    })
    b.subscribe(listType as ResourceType<unknown>, '/early', () => {})
    expect(streamOf('/early')).toEqual([])
    b.start()
    expect(streamOf('/early').map((s) => s.mode)).toEqual(['stream'])
    b.stop()
    expect(streamOf('/early')).toEqual([])
    // Started again (React runs effects twice in development): served again.
    b.start()
    expect(streamOf('/early')).toHaveLength(1)
    b.stop()
    a.hub.stop()
  })
})
