// For tests: Web Locks and BroadcastChannel as one browser's tabs see them.

import type { BroadcastChannelLike, LockManagerLike } from '../live/shared'

/** An exclusive lock per name, granted in request order; released when the callback's promise settles. */
export class FakeLocks implements LockManagerLike {
  private held = new Map<string, boolean>()
  private queue = new Map<string, { cb: () => Promise<unknown>; signal?: AbortSignal; done: (v: unknown) => void; fail: (e: unknown) => void }[]>()

  request(name: string, options: { signal?: AbortSignal }, cb: (lock: unknown) => Promise<unknown>): Promise<unknown> {
    return new Promise((done, fail) => {
      const q = this.queue.get(name) ?? []
      this.queue.set(name, q)
      const entry = { cb: () => cb({ name }), signal: options.signal, done, fail }
      q.push(entry)
      options.signal?.addEventListener('abort', () => {
        const i = q.indexOf(entry)
        if (i >= 0) {
          q.splice(i, 1)
          fail(new DOMException('aborted', 'AbortError'))
        }
      })
      this.grant(name)
    })
  }

  /** The same locks as seen from a tab whose requests take `ms` to reach the lock manager (another process). */
  withLag(ms: number): LockManagerLike {
    return {
      request: (name, options, cb) =>
        new Promise((resolve) => setTimeout(resolve, ms)).then(() => this.request(name, options, cb)),
    }
  }

  private grant(name: string): void {
    if (this.held.get(name)) return
    const next = this.queue.get(name)?.shift()
    if (!next) return
    this.held.set(name, true)
    void Promise.resolve()
      .then(next.cb)
      .then(next.done, next.fail)
      .finally(() => {
        this.held.set(name, false)
        this.grant(name)
      })
  }
}

/** Channels of one name see each other's messages (never their own), asynchronously, in order. */
export class FakeChannels {
  private members = new Map<string, Set<FakeChannel>>()
  readonly Ctor: new (name: string) => BroadcastChannelLike
  constructor() {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const hub = this
    this.Ctor = class extends FakeChannel {
      constructor(name: string) {
        super(name, hub)
      }
    }
  }
  join(c: FakeChannel): void {
    const set = this.members.get(c.name) ?? new Set()
    set.add(c)
    this.members.set(c.name, set)
  }
  leave(c: FakeChannel): void {
    this.members.get(c.name)?.delete(c)
  }
  send(from: FakeChannel, message: unknown): void {
    const data = structuredClone(message)
    for (const c of this.members.get(from.name) ?? []) {
      if (c !== from) setTimeout(() => c.deliver(data), 0)
    }
  }
}

export class FakeChannel implements BroadcastChannelLike {
  private listeners: ((ev: MessageEvent) => void)[] = []
  private closed = false
  constructor(
    readonly name: string,
    private readonly hub: FakeChannels,
  ) {
    hub.join(this)
  }
  postMessage(message: unknown): void {
    if (this.closed) throw new Error('closed')
    this.hub.send(this, message)
  }
  addEventListener(_type: 'message', l: (ev: MessageEvent) => void): void {
    this.listeners.push(l)
  }
  deliver(data: unknown): void {
    if (this.closed) return
    for (const l of this.listeners) l({ data } as MessageEvent)
  }
  close(): void {
    this.closed = true
    this.hub.leave(this)
  }
}

/** An EventSource that the test drives: it opens, delivers named messages, drops (the browser retries) or fails. */
export class FakeEventSource {
  static instances: FakeEventSource[] = []
  readyState = 0
  closed = false
  private listeners = new Map<string, Set<(ev: Event | MessageEvent) => void>>()

  constructor(
    readonly url: string,
    readonly init?: { withCredentials?: boolean },
  ) {
    ;(this.constructor as typeof FakeEventSource).instances.push(this)
  }
  addEventListener(type: string, fn: (ev: Event | MessageEvent) => void): void {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set())
    this.listeners.get(type)!.add(fn)
  }
  close(): void {
    this.closed = true
    this.readyState = 2
  }
  private dispatch(type: string, ev: object): void {
    if (this.closed) return
    for (const fn of this.listeners.get(type) ?? []) fn(ev as MessageEvent)
  }
  open(): void {
    this.readyState = 1
    this.dispatch('open', { type: 'open' })
  }
  /** A message as herald sends it: `event: <type>`, `id: <id>`, `data: <json>`. */
  message(type: string, id: number, data: unknown): void {
    this.dispatch(type, { type, data: JSON.stringify(data), lastEventId: String(id) })
  }
  /** The connection dropped; the browser reconnects on its own (with Last-Event-ID). */
  drop(): void {
    this.readyState = 0
    this.dispatch('error', { type: 'error' })
  }
  /** The browser gave up (herald answered with an HTTP error). */
  fail(): void {
    this.readyState = 2
    this.dispatch('error', { type: 'error' })
  }
}
