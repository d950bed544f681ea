// The live connection to herald's log: one per tab, framework-free so that it
// can be tested with a fake EventSource, a fake fetch and fake timers.
//
// It follows `GET /api/events/live` (docs/API.md §6) and hands every event to
// `onEvents` exactly once, in position order:
//
// - It manages reconnection itself: on any error it closes the EventSource and
//   opens a new one with `?after=<last applied position>` after an exponential
//   back-off with jitter (a new EventSource object cannot send Last-Event-ID;
//   docs/API.md allows `?after=` on a first connect for exactly this).
// - It never applies a position at or below the last one applied, and never
//   applies N+1 before N: the unfiltered log has no gaps, so a jump means an
//   event the EventSource did not surface (a type it has no listener for) and
//   the missing range is read from `GET /api/events` first.
// - When SSE cannot get through (it never opens, or opens but a check of
//   `GET /api/events` finds events it did not deliver, as behind a buffering
//   proxy) it polls `GET /api/events?after=P` instead, tries SSE again now and
//   then, and says which mode it is in through `onStatus`.
//
// Browsers do not surface a message that has an `id:` and no `data:` (nor
// comments), so herald's first `id: <head>` message is invisible here: the
// connection learns the head from `GET /api/events` before its first connect
// and always connects with `?after=`.

import type { Envelope, EventsPage } from '../lib/types'

export type ConnectionStatus = 'connecting' | 'live' | 'reconnecting' | 'polling' | 'offline' | 'stopped'

export interface StatusInfo {
  status: ConnectionStatus
  /** The last position applied (0 before the first). */
  position: number
  /** Failed attempts in a row (for "retrying in …"). */
  attempt: number
  /** When the next attempt is due (ms since epoch), while waiting. */
  retryAt: number | null
  /** Why the console polls instead of streaming. */
  pollingReason: 'never-opened' | 'no-delivery' | null
}

/** The part of the EventSource interface used here. */
export interface EventSourceLike {
  readonly readyState: number
  addEventListener(type: string, listener: (ev: MessageEvent | Event) => void): void
  close(): void
}
export type EventSourceCtor = new (url: string) => EventSourceLike

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown
  clearTimeout(id: unknown): void
  now(): number
}

export interface LiveOptions {
  /** The SSE endpoint (default `/api/events/live`). */
  liveUrl?: string
  /** The catch-up / polling endpoint (default `/api/events`). */
  eventsUrl?: string
  EventSource: EventSourceCtor
  fetch: (input: string, init?: RequestInit) => Promise<Response>
  timers?: Timers
  /** In [0, 1), for the back-off's jitter. */
  random?: () => number
  /** Event types to listen for on the EventSource (herald names each SSE message after its event type). */
  eventTypes?: readonly string[]
  /** Receives events in position order, each exactly once. */
  onEvents: (events: Envelope[]) => void
  onStatus?: (info: StatusInfo) => void
  /** herald answered 401: the session ended. The connection stops. */
  onUnauthorized?: () => void
  /** The first cursor is known: data read before it may be older than the stream. */
  onReady?: (position: number) => void
  backoffBaseMs?: number
  backoffCapMs?: number
  /** SSE must open within this long, or the attempt counts as failed. */
  openTimeoutMs?: number
  /** After SSE opened, how soon `GET /api/events` is checked for events SSE did not deliver. */
  checkAfterOpenMs?: number
  /** Later checks while SSE is open (they also pick up events of unknown types at the tail). */
  checkIntervalMs?: number
  /** How long SSE may lag behind what a check read before it counts as held back. */
  deliveryGraceMs?: number
  /** SSE attempts that never open while herald itself answers, before polling. */
  failuresBeforePolling?: number
  /** Failed attempts in a row before the status says offline rather than reconnecting. */
  failuresBeforeOffline?: number
  pollIntervalMs?: number
  /** While polling, how often SSE is tried again. */
  sseRetryWhilePollingMs?: number
  pageLimit?: number
}

type Mode = 'idle' | 'init' | 'sse' | 'waiting' | 'polling' | 'stopped'

/** Exponential back-off with "equal jitter": half fixed, half random, capped. */
export function backoffDelay(attempt: number, baseMs: number, capMs: number, random: () => number): number {
  const exp = Math.min(capMs, baseMs * 2 ** Math.max(0, attempt - 1))
  return Math.round(exp / 2 + (random() * exp) / 2)
}

/** How long after a `reconnect()` the end of an open stream is taken as expected. */
const QUIET_RECONNECT_MS = 10_000

const realTimers: Timers = {
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (id) => globalThis.clearTimeout(id as ReturnType<typeof setTimeout>),
  now: () => Date.now(),
}

class HttpStatusError extends Error {
  constructor(readonly status: number) {
    super(`HTTP ${status}`)
  }
}

export class LiveConnection {
  private readonly o: Required<Omit<LiveOptions, 'onStatus' | 'onUnauthorized' | 'onReady'>> &
    Pick<LiveOptions, 'onStatus' | 'onUnauthorized' | 'onReady'>
  private mode: Mode = 'idle'
  private status: ConnectionStatus = 'connecting'
  private lastApplied = 0
  private pending = new Map<number, Envelope>()
  private es: EventSourceLike | null = null
  private esOpened = false
  private esDelivered = false
  /** The highest position the current EventSource delivered. */
  private esHighest = 0
  /** The EventSource is a trial made while polling. */
  private esTrial = false
  private failures = 0
  private blockedAttempts = 0
  private pollFailures = 0
  private pollingReason: StatusInfo['pollingReason'] = null
  private retryAt: number | null = null
  private timers = new Map<string, unknown>()
  /** Bumped on every (re)connect or stop, so late answers of an older attempt are ignored. */
  private generation = 0
  private filling = false
  /** Until then, an open stream that ends is resumed at once and without a word (see `reconnect`). */
  private quietUntil = 0

  constructor(options: LiveOptions) {
    this.o = {
      liveUrl: '/api/events/live',
      eventsUrl: '/api/events',
      timers: realTimers,
      random: Math.random,
      eventTypes: [],
      backoffBaseMs: 1000,
      backoffCapMs: 30_000,
      openTimeoutMs: 6_000,
      checkAfterOpenMs: 5_000,
      checkIntervalMs: 30_000,
      deliveryGraceMs: 3_000,
      failuresBeforePolling: 2,
      failuresBeforeOffline: 3,
      pollIntervalMs: 1_000,
      sseRetryWhilePollingMs: 30_000,
      pageLimit: 500,
      ...options,
    }
  }

  /** The last position handed to `onEvents`. */
  get position(): number {
    return this.lastApplied
  }

  get info(): StatusInfo {
    return {
      status: this.status,
      position: this.lastApplied,
      attempt: this.failures,
      retryAt: this.retryAt,
      pollingReason: this.status === 'polling' ? this.pollingReason : null,
    }
  }

  /**
   * Starts following the log. With `after`, from that position; without, from
   * the current head (read first from `GET /api/events`).
   */
  start(after?: number): void {
    if (this.mode !== 'idle' && this.mode !== 'stopped') return
    if (after !== undefined) {
      this.lastApplied = after
      this.o.onReady?.(after)
      this.connectSse()
    } else {
      void this.init()
    }
  }

  stop(): void {
    this.generation++
    this.closeEs()
    this.clearAllTimers()
    this.mode = 'stopped'
    this.retryAt = null
    this.setStatus('stopped')
  }

  /** The browser says it is online again: retry at once instead of waiting. */
  nudge(): void {
    if (this.mode === 'waiting') {
      this.clearTimer('retry')
      this.connectSse()
    } else if (this.mode === 'polling' && this.status === 'offline') {
      this.clearTimer('poll')
      void this.poll()
    } else if (this.mode === 'init' && this.timers.has('init')) {
      this.clearTimer('init')
      void this.init()
    }
  }

  /**
   * The session changed underneath (a passkey step-up issues a new session id,
   * and herald ends the old session's streams): resume on the new one at once,
   * from the last position applied, without showing a drop. A stream that ends
   * within the next few seconds (the old session's end arriving late) is
   * resumed the same way.
   */
  reconnect(): void {
    this.quietUntil = this.o.timers.now() + QUIET_RECONNECT_MS
    if (this.mode === 'sse' && !this.esTrial) {
      this.connectSse(false, true)
    } else if (this.mode === 'waiting') {
      this.clearTimer('retry')
      this.connectSse()
    }
  }

  // --- applying events -------------------------------------------------------

  /** Events from the EventSource: in order, but a type without listener leaves a gap. */
  private ingestLive(events: Envelope[]): void {
    const ready: Envelope[] = []
    for (const e of events) {
      if (e.position <= this.lastApplied || this.pending.has(e.position)) continue
      this.pending.set(e.position, e)
    }
    let next = this.pending.get(this.lastApplied + 1)
    while (next) {
      this.pending.delete(next.position)
      ready.push(next)
      this.lastApplied = next.position
      next = this.pending.get(this.lastApplied + 1)
    }
    this.emit(ready)
    if (this.pending.size > 0) void this.fillGap()
  }

  /**
   * Events read from the store (`GET /api/events?after=lastApplied`): complete
   * up to `examined` (the page's `next_after`), so they apply in order even
   * where positions jump.
   */
  private ingestRead(events: Envelope[], examined: number): void {
    const ready: Envelope[] = []
    for (const e of [...events].sort((a, b) => a.position - b.position)) {
      if (e.position <= this.lastApplied) continue
      ready.push(e)
      this.lastApplied = e.position
    }
    this.lastApplied = Math.max(this.lastApplied, examined)
    for (const p of [...this.pending.keys()]) if (p <= this.lastApplied) this.pending.delete(p)
    this.emit(ready)
    // What is left pending may follow on now.
    if (this.pending.size > 0) this.ingestLive([])
  }

  /**
   * The log ends before what was applied: the store was replaced (a dev reset,
   * a restore). Start over from its head; the views read everything again.
   */
  private restartIfLogShrank(page: EventsPage): boolean {
    if (page.head >= this.lastApplied) return false
    this.lastApplied = page.head
    this.pending.clear()
    this.blockedAttempts = 0
    this.o.onReady?.(page.head)
    return true
  }

  private emit(events: Envelope[]): void {
    if (events.length === 0) return
    try {
      this.o.onEvents(events)
    } catch (e) {
      console.error('herald live: an event handler threw', e)
    }
  }

  /** Reads the positions the EventSource skipped. */
  private async fillGap(): Promise<void> {
    if (this.filling) return
    this.filling = true
    const gen = this.generation
    try {
      for (let rounds = 0; this.pending.size > 0 && rounds < 20; rounds++) {
        const before = this.lastApplied
        const page = await this.read(this.lastApplied)
        if (gen !== this.generation) return
        this.ingestRead(page.events, page.next_after)
        if (this.lastApplied === before && this.pending.size > 0) {
          // The store has nothing between: apply what SSE gave, in order.
          this.flushPending()
        }
      }
    } catch {
      // The reconnect / poll path catches up instead.
    } finally {
      this.filling = false
    }
  }

  private flushPending(): void {
    const ready = [...this.pending.values()].sort((a, b) => a.position - b.position)
    this.pending.clear()
    const fresh = ready.filter((e) => e.position > this.lastApplied)
    if (fresh.length) this.lastApplied = fresh[fresh.length - 1].position
    this.emit(fresh)
  }

  // --- HTTP reads ------------------------------------------------------------

  private async read(after: number): Promise<EventsPage> {
    const res = await this.o.fetch(`${this.o.eventsUrl}?after=${after}&limit=${this.o.pageLimit}`, {
      credentials: 'same-origin',
      headers: { accept: 'application/json' },
    })
    if (!res.ok) throw new HttpStatusError(res.status)
    return (await res.json()) as EventsPage
  }

  private unauthorized(): void {
    this.stop()
    this.o.onUnauthorized?.()
  }

  /** Reads the head, then connects from it. */
  private async init(): Promise<void> {
    this.mode = 'init'
    const gen = ++this.generation
    try {
      const res = await this.o.fetch(`${this.o.eventsUrl}?limit=1`, {
        credentials: 'same-origin',
        headers: { accept: 'application/json' },
      })
      if (gen !== this.generation) return
      if (res.status === 401) return this.unauthorized()
      if (!res.ok) throw new HttpStatusError(res.status)
      const page = (await res.json()) as EventsPage
      if (gen !== this.generation) return
      this.lastApplied = page.head
      this.failures = 0
      this.o.onReady?.(page.head)
      this.connectSse()
    } catch {
      if (gen !== this.generation) return
      this.failures++
      this.setStatus(this.failures >= this.o.failuresBeforeOffline ? 'offline' : 'reconnecting')
      this.schedule('init', this.backoff(), () => void this.init())
    }
  }

  // --- SSE -------------------------------------------------------------------

  private connectSse(trial = false, quiet = false): void {
    const gen = ++this.generation
    this.closeEs()
    this.retryAt = null
    if (!trial) {
      this.mode = 'sse'
      if (!quiet && this.status !== 'offline' && this.status !== 'reconnecting') this.setStatus('connecting')
    }
    const es = new this.o.EventSource(`${this.o.liveUrl}?after=${this.lastApplied}`)
    this.es = es
    this.esOpened = false
    this.esDelivered = false
    this.esHighest = 0
    this.esTrial = trial
    const onMessage = (ev: MessageEvent | Event) => {
      if (gen !== this.generation || this.es !== es) return
      const data = (ev as MessageEvent).data
      if (typeof data !== 'string' || data === '') return
      let env: Envelope
      try {
        env = JSON.parse(data) as Envelope
      } catch {
        return
      }
      if (typeof env.position !== 'number') {
        const id = Number((ev as MessageEvent).lastEventId)
        if (!Number.isSafeInteger(id)) return
        env.position = id
      }
      this.esDelivered = true
      this.esHighest = Math.max(this.esHighest, env.position)
      if (this.esTrial) this.promoteTrial()
      this.ingestLive([env])
    }
    es.addEventListener('message', onMessage)
    for (const t of this.o.eventTypes) es.addEventListener(t, onMessage)
    es.addEventListener('open', () => {
      if (gen !== this.generation || this.es !== es) return
      this.clearTimer('open')
      this.esOpened = true
      this.blockedAttempts = 0
      if (this.esTrial) {
        // It never opened before: opening is the news. Otherwise a message must prove it.
        if (this.pollingReason === 'never-opened') this.promoteTrial()
        else this.schedule('trial-end', this.o.sseRetryWhilePollingMs, () => this.sseFailed())
        return
      }
      this.failures = 0
      this.setStatus('live')
      this.schedule('check', this.o.checkAfterOpenMs, () => void this.check())
    })
    es.addEventListener('error', () => {
      if (gen !== this.generation || this.es !== es) return
      this.sseFailed()
    })
    this.schedule('open', this.o.openTimeoutMs, () => {
      if (gen !== this.generation || this.es !== es || this.esOpened) return
      this.sseFailed()
    })
  }

  private closeEs(): void {
    if (this.es) {
      this.es.close()
      this.es = null
    }
    this.clearTimer('open')
    this.clearTimer('check')
    this.clearTimer('trial-end')
  }

  /** An attempt failed (error, or no open in time). */
  private sseFailed(): void {
    const opened = this.esOpened
    const trial = this.esTrial
    this.generation++
    this.closeEs()
    if (trial) {
      // Polling goes on; try SSE again later.
      this.schedule('trial', this.o.sseRetryWhilePollingMs, () => this.startTrial())
      return
    }
    if (opened && this.status === 'live' && this.o.timers.now() < this.quietUntil) {
      // The old session's stream ended as expected: resume on the new one now.
      this.quietUntil = 0
      this.connectSse(false, true)
      return
    }
    this.failures = opened ? 1 : this.failures + 1
    if (this.status !== 'offline') this.setStatus('reconnecting')
    void this.afterFailure(opened)
  }

  /** Finds out whether herald answers at all, catches up, then waits or polls. */
  private async afterFailure(opened: boolean): Promise<void> {
    this.mode = 'waiting'
    const gen = this.generation
    let reachable = false
    try {
      const page = await this.read(this.lastApplied)
      if (gen !== this.generation) return
      reachable = true
      if (this.restartIfLogShrank(page)) return this.connectSse()
      this.ingestRead(page.events, page.next_after)
    } catch (e) {
      if (gen !== this.generation) return
      if (e instanceof HttpStatusError && e.status === 401) return this.unauthorized()
    }
    if (reachable && !opened) this.blockedAttempts++
    if (reachable && this.blockedAttempts >= this.o.failuresBeforePolling) {
      this.startPolling('never-opened')
      return
    }
    this.setStatus(!reachable && this.failures >= this.o.failuresBeforeOffline ? 'offline' : 'reconnecting')
    const delay = this.backoff()
    this.retryAt = this.o.timers.now() + delay
    this.emitStatus()
    this.schedule('retry', delay, () => this.connectSse())
  }

  /**
   * Checks that SSE delivers: events in the store that it has not sent within
   * `deliveryGraceMs` mean it is held back (a buffering proxy) or stuck.
   */
  private async check(): Promise<void> {
    const gen = this.generation
    let page: EventsPage
    try {
      page = await this.read(this.lastApplied)
    } catch (e) {
      if (gen !== this.generation) return
      if (e instanceof HttpStatusError && e.status === 401) return this.unauthorized()
      this.schedule('check', this.o.checkIntervalMs, () => void this.check())
      return
    }
    if (gen !== this.generation) return
    if (this.restartIfLogShrank(page)) return this.connectSse()
    const known = new Set(this.o.eventTypes)
    let missed = 0
    for (const e of page.events) {
      if (e.position > this.lastApplied && e.position > this.esHighest && (known.size === 0 || known.has(e.type)))
        missed = Math.max(missed, e.position)
    }
    this.ingestRead(page.events, page.next_after)
    if (missed === 0) {
      this.schedule('check', this.o.checkIntervalMs, () => void this.check())
      return
    }
    this.schedule('check', this.o.deliveryGraceMs, () => {
      if (gen !== this.generation) return
      if (this.esHighest >= missed) {
        this.schedule('check', this.o.checkIntervalMs, () => void this.check())
      } else if (!this.esDelivered) {
        // Open, yet nothing comes through: poll instead.
        this.generation++
        this.closeEs()
        this.startPolling('no-delivery')
      } else {
        // It delivered before but is stuck now: reconnect.
        this.sseFailed()
      }
    })
  }

  // --- polling ---------------------------------------------------------------

  private startPolling(reason: 'never-opened' | 'no-delivery'): void {
    this.mode = 'polling'
    this.pollingReason = reason
    this.pollFailures = 0
    this.failures = 0
    this.retryAt = null
    this.setStatus('polling')
    this.schedule('trial', this.o.sseRetryWhilePollingMs, () => this.startTrial())
    void this.poll()
  }

  private async poll(): Promise<void> {
    if (this.mode !== 'polling') return
    let again = this.o.pollIntervalMs
    try {
      const page = await this.read(this.lastApplied)
      if (this.mode !== 'polling') return
      this.restartIfLogShrank(page)
      this.ingestRead(page.events, page.next_after)
      this.pollFailures = 0
      if (this.status !== 'polling') this.setStatus('polling')
      // A full page: there is more right now.
      if (page.events.length >= this.o.pageLimit && page.next_after < page.head) again = 0
    } catch (e) {
      if (this.mode !== 'polling') return
      if (e instanceof HttpStatusError && e.status === 401) return this.unauthorized()
      this.pollFailures++
      if (this.pollFailures >= this.o.failuresBeforeOffline) this.setStatus('offline')
      again = Math.max(this.o.pollIntervalMs, backoffDelay(this.pollFailures, this.o.backoffBaseMs, this.o.backoffCapMs, this.o.random))
    }
    this.schedule('poll', again, () => void this.poll())
  }

  /** While polling, an EventSource on the side: its first message proves SSE gets through again. */
  private startTrial(): void {
    if (this.mode !== 'polling') return
    this.connectSse(true)
  }

  private promoteTrial(): void {
    this.esTrial = false
    this.mode = 'sse'
    this.pollingReason = null
    this.clearTimer('poll')
    this.clearTimer('trial')
    this.clearTimer('trial-end')
    this.failures = 0
    this.setStatus('live')
    this.schedule('check', this.o.checkAfterOpenMs, () => void this.check())
  }

  // --- helpers ---------------------------------------------------------------

  private backoff(): number {
    return backoffDelay(this.failures, this.o.backoffBaseMs, this.o.backoffCapMs, this.o.random)
  }

  private schedule(name: string, ms: number, fn: () => void): void {
    this.clearTimer(name)
    const id = this.o.timers.setTimeout(() => {
      if (this.timers.get(name) === id) this.timers.delete(name)
      fn()
    }, ms)
    this.timers.set(name, id)
  }

  private clearTimer(name: string): void {
    if (this.timers.has(name)) {
      this.o.timers.clearTimeout(this.timers.get(name))
      this.timers.delete(name)
    }
  }

  private clearAllTimers(): void {
    for (const name of [...this.timers.keys()]) this.clearTimer(name)
  }

  private setStatus(s: ConnectionStatus): void {
    if (s !== 'reconnecting' && s !== 'offline') this.retryAt = null
    if (s === this.status && s !== 'reconnecting' && s !== 'offline') return
    this.status = s
    this.emitStatus()
  }

  private emitStatus(): void {
    this.o.onStatus?.(this.info)
  }
}
