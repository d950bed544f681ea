// Resource streams: the state of one read-model resource, live (herald's
// `GET /api/…/live`: a deployments list, one deployment, the feeds, a feed, a
// post). Each message is a named event whose data a `ResourceType`'s reducer
// folds into the state (a `snapshot` replaces, a `deployment` upserts, …);
// every message's `id:` is the read-model position the state reflects (a
// changed resource's: its last change's), so a reconnect misses nothing.
//
// `ResourceStream` follows one address with one EventSource. It lets the
// browser reconnect on its own, so the reconnect carries `Last-Event-ID` and
// herald sends only what changed. When the EventSource gives up (an HTTP error:
// a 404, a 401, a 429, a 5xx), the same address is asked once with fetch to
// learn the status: a 4xx is the answer (shown, until `retry`), a 401 ends the
// session, anything else is retried after a back-off with a fresh connect (no
// Last-Event-ID: herald sends the whole state, which replaces the old).
//
// `ResourceHub` shares the streams of every tab of the browser: browsers allow
// 6 HTTP/1.1 connections per host, and an EventSource per resource per tab
// would soon leave none for page loads. As with the event stream (shared.ts),
// the tab holding a Web Lock runs every stream any tab wants, one per address,
// and passes each new state to the tabs over a BroadcastChannel. At most
// `maxStreams` addresses stream at once (the most recently wanted); the others
// are read every few seconds without `/live` instead (the same state, as JSON).
// Each tab holds a lock of its own for as long as it lives, so the leading tab
// learns when a tab is gone (that lock is granted to it) and drops its wants.
//
// Framework-free: EventSource, fetch, timers, locks and channels are injected.

import type { Problem } from '../lib/api'
import { backoffDelay, type EventSourceLike, type Timers } from './connection'
import type { BroadcastChannelCtor, BroadcastChannelLike, LockManagerLike } from './shared'

/** Folds one message's data into the state. */
export type Reducer<S> = (state: S | undefined, data: unknown) => S | undefined

export interface ResourceType<S> {
  /** Names the type across tabs (the leading tab reduces with it). */
  name: string
  /** The stream's named events and how each changes the state. */
  events: Readonly<Record<string, Reducer<S>>>
  /** The address without `/live` answers with what this event carries (read while not streaming). */
  readEvent: string
}

const registry = new Map<string, ResourceType<unknown>>()

/** A resource type, known to every tab by its name. */
export function defineResource<S>(name: string, events: Record<string, Reducer<S>>, readEvent: string): ResourceType<S> {
  if (!(readEvent in events)) throw new Error(`${name}: ${readEvent} is not one of its events`)
  const type: ResourceType<S> = { name, events, readEvent }
  registry.set(name, type as unknown as ResourceType<unknown>)
  return type
}

export const resourceTypeNamed = (name: string): ResourceType<unknown> | undefined => registry.get(name)

export type ResourceStatus =
  /** Before the first state. */
  | 'connecting'
  | 'live'
  /** The stream dropped and is being resumed. */
  | 'reconnecting'
  /** Read every few seconds instead of streamed (too many streams open in this browser). */
  | 'polling'
  /** herald answered with a 4xx (`error`): nothing more until `retry`. */
  | 'failed'
  | 'stopped'

/** herald's refusal of a resource (404: there is none), as plain data (it crosses tabs). */
export interface ResourceError {
  status: number
  problem: Problem
}

export interface ResourceView<S> {
  state: S | undefined
  status: ResourceStatus
  /** The position the state reflects (the last message's id; 0 before the first). */
  position: number
  error: ResourceError | null
}

export type ResourceEventSourceCtor = new (url: string, init?: { withCredentials?: boolean }) => EventSourceLike

export interface ResourceStreamOptions {
  /** The resource stream's address, e.g. `/api/feeds/rust/live?min_position=42`. */
  url: string
  type: ResourceType<unknown>
  EventSource: ResourceEventSourceCtor
  fetch: (input: string, init?: RequestInit) => Promise<Response>
  onChange: (view: ResourceView<unknown>) => void
  /** herald answered 401: the session is over. The stream stops. */
  onUnauthorized?: () => void
  timers?: Timers
  random?: () => number
  /** While polling, how often the state is read. */
  pollMs?: number
  backoffBaseMs?: number
  backoffCapMs?: number
  /** A dropped stream that the browser resumes within this long is not reported as reconnecting. */
  graceMs?: number
  /** The first connection asks herald to wait until its read model reflects this position (after a command). */
  minPosition?: number
}

export type StreamMode = 'stream' | 'poll'

/** What the hub runs for one address. */
export interface StreamLike {
  /** Starts, or switches between streaming and polling. */
  run(mode: StreamMode): void
  stop(): void
  /** Connects afresh now (after a refusal, or to wait for `min_position`). */
  retry(minPosition?: number): void
  /** The browser is online again: a waiting retry goes now. */
  nudge(): void
}

const realTimers: Timers = {
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (id) => globalThis.clearTimeout(id as ReturnType<typeof setTimeout>),
  now: () => Date.now(),
}

/** `url` with `name=value` set in its query. */
export function withParam(url: string, name: string, value: string | number): string {
  const [path, query = ''] = url.split('?', 2)
  const q = new URLSearchParams(query)
  q.set(name, String(value))
  return `${path}?${q}`
}

/** The read-model address of a resource stream: `/api/feeds/rust/live?limit=5` → `/api/feeds/rust?limit=5`. */
export function readUrlOf(url: string): string {
  const [path, query] = url.split('?', 2)
  const read = path.replace(/\/live$/, '')
  return query ? `${read}?${query}` : read
}

const CLOSED = 2

export class ResourceStream implements StreamLike {
  private readonly o: Required<Omit<ResourceStreamOptions, 'onUnauthorized' | 'minPosition'>> &
    Pick<ResourceStreamOptions, 'onUnauthorized'>
  private view: ResourceView<unknown> = { state: undefined, status: 'connecting', position: 0, error: null }
  private mode: StreamMode | null = null
  private es: EventSourceLike | null = null
  private minPosition: number | null = null
  private failures = 0
  /** Bumped on every (re)connect and stop: late answers of an older attempt are ignored. */
  private generation = 0
  private timer: unknown = null
  private graceTimer: unknown = null
  private waiting = false
  private probe: AbortController | null = null

  constructor(options: ResourceStreamOptions) {
    this.o = {
      timers: realTimers,
      random: Math.random,
      pollMs: 3_000,
      backoffBaseMs: 1_000,
      backoffCapMs: 10_000,
      graceMs: 3_000,
      ...options,
    }
    this.minPosition = options.minPosition ?? null
  }

  get current(): ResourceView<unknown> {
    return this.view
  }

  run(mode: StreamMode): void {
    if (this.mode === mode || this.view.status === 'stopped') return
    this.mode = mode
    if (this.view.status === 'failed') return
    this.connect()
  }

  stop(): void {
    this.generation++
    this.close()
    this.mode = null
    this.update({ status: 'stopped' })
  }

  retry(minPosition?: number): void {
    if (this.view.status === 'stopped' || this.mode === null) return
    if (minPosition !== undefined) this.minPosition = Math.max(this.minPosition ?? 0, minPosition)
    this.failures = 0
    if (this.view.error) this.update({ error: null, status: this.view.state === undefined ? 'connecting' : 'reconnecting' })
    this.connect()
  }

  nudge(): void {
    if (this.waiting) this.connect()
  }

  // ---------------------------------------------------------------------------

  private address(): string {
    const url = this.mode === 'poll' ? readUrlOf(this.o.url) : this.o.url
    return this.minPosition !== null ? withParam(url, 'min_position', this.minPosition) : url
  }

  private close(): void {
    this.es?.close()
    this.es = null
    this.probe?.abort()
    this.probe = null
    this.clear()
    this.clearGrace()
  }

  private clear(): void {
    if (this.timer !== null) this.o.timers.clearTimeout(this.timer)
    this.timer = null
    this.waiting = false
  }

  private clearGrace(): void {
    if (this.graceTimer !== null) this.o.timers.clearTimeout(this.graceTimer)
    this.graceTimer = null
  }

  private connect(): void {
    this.generation++
    this.close()
    if (this.mode === 'poll') void this.poll()
    else this.openStream()
  }

  private update(change: Partial<ResourceView<unknown>>): void {
    const next = { ...this.view, ...change }
    const same =
      next.state === this.view.state &&
      next.status === this.view.status &&
      next.position === this.view.position &&
      next.error === this.view.error
    this.view = next
    if (!same) this.o.onChange(next)
  }

  private apply(event: string, data: unknown, id: number | null): void {
    const reduce = this.o.type.events[event]
    if (!reduce) return
    const state = reduce(this.view.state, data)
    this.failures = 0
    this.update({ state, position: id ?? this.view.position, status: this.mode === 'poll' ? 'polling' : 'live' })
  }

  private openStream(): void {
    const gen = this.generation
    const es = new this.o.EventSource(this.address(), { withCredentials: true })
    this.es = es
    const onMessage = (name: string) => (ev: MessageEvent | Event) => {
      if (gen !== this.generation) return
      const m = ev as MessageEvent
      if (typeof m.data !== 'string') return
      let data: unknown
      try {
        data = JSON.parse(m.data)
      } catch {
        return
      }
      const id = Number(m.lastEventId)
      this.clearGrace()
      this.apply(name, data, m.lastEventId && Number.isSafeInteger(id) ? id : null)
    }
    for (const name of Object.keys(this.o.type.events)) es.addEventListener(name, onMessage(name))
    es.addEventListener('open', () => {
      if (gen !== this.generation) return
      this.clearGrace()
      this.failures = 0
      // Live once the state is here: a reconnect resumes the state it had.
      if (this.view.state !== undefined) this.update({ status: 'live' })
    })
    es.addEventListener('error', () => {
      if (gen !== this.generation) return
      if (es.readyState === CLOSED) {
        // The browser gave up on this address: find out why.
        this.generation++
        this.es?.close()
        this.es = null
        this.clearGrace()
        void this.diagnose()
        return
      }
      // The browser reconnects on its own, with Last-Event-ID.
      if (this.graceTimer === null && this.view.status === 'live') {
        this.graceTimer = this.o.timers.setTimeout(() => {
          this.graceTimer = null
          if (gen === this.generation && this.view.status === 'live') this.update({ status: 'reconnecting' })
        }, this.o.graceMs)
      }
    })
  }

  /** Asks the address once, as the EventSource did, to learn herald's answer. */
  private async diagnose(): Promise<void> {
    const gen = this.generation
    const probe = new AbortController()
    this.probe = probe
    let res: Response
    try {
      res = await this.o.fetch(this.address(), {
        credentials: 'same-origin',
        headers: { accept: 'text/event-stream' },
        signal: probe.signal,
      })
    } catch {
      if (gen === this.generation) this.later()
      return
    }
    if (gen !== this.generation) {
      void res.body?.cancel().catch(() => {})
      return
    }
    if (res.ok) {
      // It answers now: a stream again, after a pause so that a stream that keeps failing does not spin.
      probe.abort()
      this.later()
      return
    }
    await this.refused(res, gen)
  }

  /** A non-2xx answer: 401 ends the session, a 4xx is shown, the rest is retried. */
  private async refused(res: Response, gen: number): Promise<void> {
    if (res.status === 401) {
      this.stop()
      this.o.onUnauthorized?.()
      return
    }
    if (res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429) {
      let problem: Problem = {}
      try {
        const body: unknown = JSON.parse(await res.text())
        if (body && typeof body === 'object') problem = body as Problem
      } catch {
        // No problem+json: the status says enough.
      }
      if (gen !== this.generation) return
      this.close()
      this.update({ status: 'failed', error: { status: res.status, problem } })
      return
    }
    const retryAfter = Number(res.headers.get('retry-after'))
    this.later(Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : undefined)
  }

  private later(ms?: number): void {
    this.failures++
    this.clear()
    if (this.view.status !== 'connecting') this.update({ status: 'reconnecting' })
    const delay = ms ?? backoffDelay(this.failures, this.o.backoffBaseMs, this.o.backoffCapMs, this.o.random)
    this.waiting = true
    const gen = this.generation
    this.timer = this.o.timers.setTimeout(() => {
      this.timer = null
      this.waiting = false
      if (gen === this.generation) this.connect()
    }, delay)
  }

  private async poll(): Promise<void> {
    const gen = this.generation
    let res: Response
    try {
      res = await this.o.fetch(this.address(), { credentials: 'same-origin', headers: { accept: 'application/json' } })
    } catch {
      if (gen === this.generation) this.later()
      return
    }
    if (gen !== this.generation) return
    if (!res.ok) return this.refused(res, gen)
    let data: unknown
    try {
      data = await res.json()
    } catch {
      return this.later()
    }
    if (gen !== this.generation) return
    const position = data && typeof data === 'object' ? (data as { position?: unknown }).position : undefined
    this.apply(this.o.type.readEvent, data, typeof position === 'number' ? position : null)
    this.timer = this.o.timers.setTimeout(() => {
      this.timer = null
      if (gen === this.generation) void this.poll()
    }, this.o.pollMs)
  }
}

// --- sharing between the tabs of a browser -------------------------------------

export type ViewListener = (view: ResourceView<unknown>) => void

export interface StreamCallbacks {
  onChange: (view: ResourceView<unknown>) => void
  onUnauthorized: () => void
}

export interface ResourceHubOptions {
  /** `minPosition`: what the page that asked first waits for (see `ResourceStreamOptions.minPosition`). */
  createStream: (url: string, type: ResourceType<unknown>, callbacks: StreamCallbacks, minPosition?: number) => StreamLike
  /** `navigator.locks`; null or undefined: this tab runs its own streams. */
  locks?: LockManagerLike | null
  BroadcastChannel?: BroadcastChannelCtor | null
  /** Names the lock and the channel (default `herald-resources`). */
  name?: string
  /** At most this many addresses stream at once in the browser; the others are polled (default 3). */
  maxStreams?: number
  onUnauthorized?: () => void
  /** Finds a resource type by name (default: those made with `defineResource`). */
  resolveType?: (name: string) => ResourceType<unknown> | undefined
  tabId?: string
}

type Message =
  | { k: 'want'; tab: string; url: string; type: string; min?: number }
  | { k: 'drop'; tab: string; url: string }
  | { k: 'retry'; url: string; min?: number }
  | { k: 'nudge' }
  | { k: 'view'; url: string; view: ResourceView<unknown>; to?: string }
  | { k: 'leader' }
  | { k: 'unauthorized' }

interface Want {
  type: string
  /** The `minPosition` of the page that asked first. */
  min?: number
  listeners: Set<ViewListener>
  view: ResourceView<unknown> | null
}

interface Served {
  stream: StreamLike
  tabs: Set<string>
  /** When a tab last asked for it: the most recent ones stream. */
  wantedAt: number
  mode: StreamMode | null
  view: ResourceView<unknown> | null
}

export type HubRole = 'solo' | 'leader' | 'follower' | 'stopped'

export class ResourceHub {
  private readonly o: ResourceHubOptions
  private readonly tabBase: string
  private tab = ''
  private starts = 0
  private role: HubRole = 'stopped'
  private channel: BroadcastChannelLike | null = null
  private abort: AbortController | null = null
  /** This tab holds its own lock: the leader may hear its wants. */
  private registered = false
  private releaseLead: (() => void) | null = null
  private releaseTab: (() => void) | null = null
  /** This tab's wants, by address. */
  private readonly wants = new Map<string, Want>()
  /** Leading (or solo): the streams run for every tab, by address. */
  private readonly served = new Map<string, Served>()
  /** Leading: the tabs whose end is awaited (their lock). */
  private readonly watched = new Map<string, AbortController>()
  private seq = 0
  private readonly statusListeners = new Set<() => void>()

  constructor(options: ResourceHubOptions) {
    this.o = options
    this.tabBase = options.tabId ?? `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`
  }

  get mode(): HubRole {
    return this.role
  }

  /** How many addresses stream (not poll) from this tab: for tests and the curious. */
  get streaming(): string[] {
    return [...this.served].filter(([, s]) => s.mode === 'stream').map(([url]) => url)
  }

  /** Starts sharing (again, after a stop): what this tab subscribed to is asked for anew. */
  start(): void {
    if (this.role !== 'stopped') return
    // A new id per start: a leader still waiting for the old id's end drops only the old wants.
    this.tab = `${this.tabBase}-${++this.starts}`
    const abort = new AbortController()
    this.abort = abort
    const { locks, BroadcastChannel: BC } = this.o
    const name = this.o.name ?? 'herald-resources'
    if (locks && BC) {
      try {
        this.channel = new BC(name)
      } catch {
        this.channel = null
      }
    }
    if (!locks || !this.channel) {
      this.goSolo()
      return
    }
    this.role = 'follower'
    const channel = this.channel
    channel.addEventListener('message', (ev) => {
      if (this.channel === channel) this.onMessage(ev.data as Message)
    })
    // Held while this tab lives: the leader learns of its end when it is granted the lock. Only
    // once it is held does this tab say what it wants (else the leader's wait could come first).
    locks
      .request(`${name}-tab-${this.tab}`, { signal: abort.signal }, () => {
        if (this.abort !== abort) return Promise.resolve()
        return new Promise<void>((resolve) => {
          this.releaseTab = resolve
          this.registered = true
          if (this.role === 'follower') this.announce()
        })
      })
      .catch(() => {})
    locks
      .request(name, { signal: abort.signal }, () => {
        if (this.abort !== abort || this.role !== 'follower') return Promise.resolve()
        return new Promise<void>((resolve) => {
          this.releaseLead = resolve
          this.lead()
        })
      })
      .catch(() => {
        // The lock manager refused: this tab runs its own.
        if (this.abort === abort && this.role === 'follower') this.goSolo()
      })
  }

  /** Stops every stream this tab runs and leaves the others; what it subscribed to is kept for a new start. */
  stop(): void {
    if (this.role === 'stopped') return
    const wasFollower = this.role === 'follower'
    this.role = 'stopped'
    if (wasFollower && this.registered) for (const url of this.wants.keys()) this.post({ k: 'drop', tab: this.tab, url })
    this.registered = false
    // Forgotten first: their last "stopped" goes to no one.
    const streams = [...this.served.values()]
    this.served.clear()
    for (const s of streams) s.stream.stop()
    for (const w of this.watched.values()) w.abort()
    this.watched.clear()
    this.abort?.abort()
    this.abort = null
    this.releaseLead?.()
    this.releaseLead = null
    this.releaseTab?.()
    this.releaseTab = null
    this.channel?.close()
    this.channel = null
  }

  /**
   * Follows `url` (of `type`) for `listener`, which gets the current view at once if there is one.
   * `minPosition` (after a command) only shapes a stream this opens: one that is already open
   * follows the read model live, and brings that change when it comes.
   */
  subscribe(type: ResourceType<unknown>, url: string, listener: ViewListener, minPosition?: number): () => void {
    let want = this.wants.get(url)
    if (!want) {
      want = { type: type.name, listeners: new Set(), view: null, ...(minPosition ? { min: minPosition } : {}) }
      this.wants.set(url, want)
      this.want(url, type.name, want.min)
    } else if (want.view) {
      listener(want.view)
    }
    want.listeners.add(listener)
    const w = want
    return () => {
      w.listeners.delete(listener)
      if (w.listeners.size > 0 || this.wants.get(url) !== w) return
      this.wants.delete(url)
      this.notifyStatus()
      if (this.role === 'follower') {
        if (this.registered) this.post({ k: 'drop', tab: this.tab, url })
      }
      else this.unserve(url, this.tab)
    }
  }

  /** Connects to `url` afresh (after a refusal; with `minPosition`, waiting for that position). */
  retry(url: string, minPosition?: number): void {
    if (this.role === 'follower') this.post({ k: 'retry', url, ...(minPosition !== undefined ? { min: minPosition } : {}) })
    else this.served.get(url)?.stream.retry(minPosition)
  }

  nudge(): void {
    if (this.role === 'follower') this.post({ k: 'nudge' })
    else for (const s of this.served.values()) s.stream.nudge()
  }

  /** The statuses of this tab's resources. */
  statuses(): ResourceStatus[] {
    return [...this.wants.values()].map((w) => w.view?.status ?? 'connecting')
  }

  subscribeStatus(l: () => void): () => void {
    this.statusListeners.add(l)
    return () => this.statusListeners.delete(l)
  }

  // ---------------------------------------------------------------------------

  /** Tells the leader (whoever it is now) everything this tab wants. */
  private announce(): void {
    for (const [url, w] of this.wants) this.post({ k: 'want', tab: this.tab, url, type: w.type, min: w.min })
  }

  private want(url: string, type: string, min?: number): void {
    if (this.role === 'follower') {
      if (this.registered) this.post({ k: 'want', tab: this.tab, url, type, min })
    } else if (this.role === 'leader' || this.role === 'solo') {
      this.serve(url, type, this.tab, min)
    }
  }

  private goSolo(): void {
    this.role = 'solo'
    for (const [url, w] of this.wants) this.serve(url, w.type, this.tab, w.min)
  }

  private lead(): void {
    this.role = 'leader'
    for (const [url, w] of this.wants) this.serve(url, w.type, this.tab, w.min)
    // The other tabs say again what they want.
    this.post({ k: 'leader' })
  }

  private serve(url: string, typeName: string, tab: string, min?: number): void {
    let s = this.served.get(url)
    if (!s) {
      const type = (this.o.resolveType ?? resourceTypeNamed)(typeName)
      if (!type) return
      const entry: Served = { stream: null as unknown as StreamLike, tabs: new Set(), wantedAt: 0, mode: null, view: null }
      entry.stream = this.o.createStream(
        url,
        type,
        {
          onChange: (view) => {
            if (this.served.get(url) !== entry) return
            entry.view = view
            this.deliver(url, entry, view)
          },
          onUnauthorized: () => {
            this.post({ k: 'unauthorized' })
            this.o.onUnauthorized?.()
          },
        },
        min,
      )
      s = entry
      this.served.set(url, s)
    }
    s.tabs.add(tab)
    s.wantedAt = ++this.seq
    if (tab !== this.tab) this.watch(tab)
    this.rebalance()
    // A tab that asks for what is already here gets it at once (only it).
    if (s.view) {
      if (tab === this.tab) this.show(url, s.view)
      else this.post({ k: 'view', url, view: s.view, to: tab })
    }
  }

  private unserve(url: string, tab: string): void {
    const s = this.served.get(url)
    if (!s || !s.tabs.delete(tab) || s.tabs.size > 0) return
    this.served.delete(url)
    s.stream.stop()
    this.rebalance()
  }

  /** The most recently wanted addresses stream; the rest are polled. */
  private rebalance(): void {
    const max = this.o.maxStreams ?? 3
    const order = [...this.served.values()].sort((a, b) => b.wantedAt - a.wantedAt)
    // Demote first, so that no more than `max` are open at any moment.
    order.forEach((s, i) => {
      if (i >= max && s.mode !== 'poll') {
        s.mode = 'poll'
        s.stream.run('poll')
      }
    })
    order.forEach((s, i) => {
      if (i < max && s.mode !== 'stream') {
        s.mode = 'stream'
        s.stream.run('stream')
      }
    })
  }

  private deliver(url: string, s: Served, view: ResourceView<unknown>): void {
    if (s.tabs.has(this.tab)) this.show(url, view)
    if ([...s.tabs].some((t) => t !== this.tab)) this.post({ k: 'view', url, view })
  }

  private show(url: string, view: ResourceView<unknown>): void {
    const w = this.wants.get(url)
    if (!w) return
    const statusChanged = w.view?.status !== view.status
    w.view = view
    for (const l of [...w.listeners]) l(view)
    if (statusChanged) this.notifyStatus()
  }

  private notifyStatus(): void {
    for (const l of this.statusListeners) l()
  }

  /** Leading: drops a follower's wants once its tab is gone (its lock comes free). */
  private watch(tab: string): void {
    const locks = this.o.locks
    if (!locks || this.watched.has(tab)) return
    const ac = new AbortController()
    this.watched.set(tab, ac)
    locks
      .request(`${this.o.name ?? 'herald-resources'}-tab-${tab}`, { signal: ac.signal }, async () => {
        this.watched.delete(tab)
        if (this.role !== 'leader') return
        for (const url of [...this.served.keys()]) this.unserve(url, tab)
      })
      .catch(() => {})
  }

  private onMessage(m: Message): void {
    if (this.role === 'stopped' || !m || typeof m !== 'object') return
    if (this.role === 'leader') {
      switch (m.k) {
        case 'want':
          this.serve(m.url, m.type, m.tab, typeof m.min === 'number' && m.min > 0 ? m.min : undefined)
          break
        case 'drop':
          this.unserve(m.url, m.tab)
          break
        case 'retry':
          this.served.get(m.url)?.stream.retry(m.min)
          break
        case 'nudge':
          for (const s of this.served.values()) s.stream.nudge()
          break
      }
      return
    }
    if (this.role !== 'follower') return
    switch (m.k) {
      case 'view':
        if (m.to === undefined || m.to === this.tab) this.show(m.url, m.view)
        break
      case 'leader':
        if (this.registered) this.announce()
        break
      case 'unauthorized':
        this.o.onUnauthorized?.()
        break
    }
  }

  private post(m: Message): void {
    if (!this.channel) return
    try {
      this.channel.postMessage(m)
    } catch {
      // A closed channel: this tab is going away.
    }
  }
}
