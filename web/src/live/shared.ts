// One live connection per browser, shared by every tab of the console.
//
// Browsers allow 6 HTTP/1.1 connections per origin; with an EventSource per
// tab, a sixth herald tab leaves nothing for page loads. So the tabs elect a
// leader with Web Locks (`navigator.locks.request('herald-live', …)`): only the
// leader runs a `LiveConnection` (connection.ts: reconnect, back-off, resume,
// polling) and it passes every event and every status change to the other tabs
// over a BroadcastChannel. When the leader goes away (tab closed, signed out)
// its lock is released and the next tab in the lock's queue takes over: it
// resumes from the last position it applied — the last one the old leader
// passed on — so nothing is missed, and every tab drops what it already has
// by position, so nothing is applied twice.
//
// Where Web Locks or BroadcastChannel are missing, every tab runs its own
// connection, as before.
//
// Framework-free: locks, channels and the connection are injected, so the
// hand-over can be tested with fakes.

import type { Envelope } from '../lib/types'
import type { StatusInfo } from './connection'

/** The part of `navigator.locks` used here. */
export interface LockManagerLike {
  request(name: string, options: { signal?: AbortSignal }, callback: (lock: unknown) => Promise<unknown>): Promise<unknown>
}

/** The part of BroadcastChannel used here. */
export interface BroadcastChannelLike {
  postMessage(message: unknown): void
  addEventListener(type: 'message', listener: (ev: MessageEvent) => void): void
  close(): void
}
export type BroadcastChannelCtor = new (name: string) => BroadcastChannelLike

/** What the leader runs: a `LiveConnection`, or anything shaped like it. */
export interface ConnectionLike {
  start(after?: number): void
  stop(): void
  nudge(): void
  /** The session changed (a step-up): end the stream and resume at once, quietly. */
  reconnect(): void
  readonly info: StatusInfo
}

export interface ConnectionCallbacks {
  onEvents: (events: Envelope[]) => void
  onStatus: (info: StatusInfo) => void
  onReady: (position: number) => void
  onUnauthorized: () => void
}

export interface SharedLiveOptions extends Partial<ConnectionCallbacks> {
  createConnection: (callbacks: ConnectionCallbacks) => ConnectionLike
  /** `navigator.locks`; null or undefined: no sharing. */
  locks?: LockManagerLike | null
  /** `BroadcastChannel`; null or undefined: no sharing. */
  BroadcastChannel?: BroadcastChannelCtor | null
  /** The lock's name (default `herald-live`). */
  lockName?: string
  /** The channel's name (default `herald-live`). */
  channelName?: string
}

export type Role = 'solo' | 'leader' | 'follower' | 'stopped'

type Message =
  | { kind: 'hello' }
  | { kind: 'state'; ready: boolean; position: number; info: StatusInfo }
  | { kind: 'events'; events: Envelope[]; info: StatusInfo }
  | { kind: 'status'; info: StatusInfo }
  | { kind: 'ready'; position: number; info: StatusInfo }
  | { kind: 'unauthorized' }
  | { kind: 'nudge' }
  | { kind: 'reconnect' }

const INITIAL: StatusInfo = { status: 'connecting', position: 0, attempt: 0, retryAt: null, pollingReason: null }

export class SharedLive {
  private readonly o: SharedLiveOptions
  private role: Role = 'stopped'
  private conn: ConnectionLike | null = null
  private channel: BroadcastChannelLike | null = null
  private abort: AbortController | null = null
  private releaseLock: (() => void) | null = null
  /** The last position this tab applied, and whether it is known yet. */
  private lastApplied = 0
  private ready = false
  private status: StatusInfo = INITIAL
  private started = false

  constructor(options: SharedLiveOptions) {
    this.o = options
  }

  /** Whether this tab shares a connection (leader or follower) or runs its own. */
  get mode(): Role {
    return this.role
  }

  /** The last position applied in this tab. */
  get position(): number {
    return this.lastApplied
  }

  get info(): StatusInfo {
    return { ...this.status, position: this.lastApplied }
  }

  start(): void {
    if (this.started) return
    this.started = true
    const { locks, BroadcastChannel: BC } = this.o
    if (!locks || !BC) {
      this.role = 'solo'
      this.runConnection()
      return
    }
    let channel: BroadcastChannelLike
    try {
      channel = new BC(this.o.channelName ?? 'herald-live')
    } catch {
      this.role = 'solo'
      this.runConnection()
      return
    }
    this.channel = channel
    this.role = 'follower'
    channel.addEventListener('message', (ev) => this.onMessage(ev.data as Message))
    // Whoever leads tells us where it is.
    this.post({ kind: 'hello' })
    const abort = new AbortController()
    this.abort = abort
    locks
      .request(this.o.lockName ?? 'herald-live', { signal: abort.signal }, () => {
        if (this.role === 'stopped') return Promise.resolve()
        return new Promise<void>((resolve) => {
          this.releaseLock = resolve
          this.becomeLeader()
        })
      })
      .catch(() => {
        // Aborted on stop(), or the lock manager refused: the latter leaves this tab on its own.
        if (this.role === 'follower') {
          this.role = 'solo'
          this.runConnection()
        }
      })
  }

  stop(): void {
    if (this.role === 'stopped') return
    this.role = 'stopped'
    // Unhooked first: its last "stopped" is this tab's alone, not the others'.
    const conn = this.conn
    this.conn = null
    conn?.stop()
    this.abort?.abort()
    this.abort = null
    this.releaseLock?.()
    this.releaseLock = null
    this.channel?.close()
    this.channel = null
    this.status = { ...this.status, status: 'stopped', retryAt: null }
    this.o.onStatus?.(this.info)
  }

  /** The browser is online again: the connection retries at once. */
  nudge(): void {
    if (this.conn) this.conn.nudge()
    else if (this.role === 'follower') this.post({ kind: 'nudge' })
  }

  /** The session changed (a step-up issues a new one): the connection resumes on it at once. */
  reconnect(): void {
    if (this.conn) this.conn.reconnect()
    else if (this.role === 'follower') this.post({ kind: 'reconnect' })
  }

  // --- leading ---------------------------------------------------------------

  private becomeLeader(): void {
    this.role = 'leader'
    this.runConnection()
  }

  /** Runs the connection in this tab: from where this tab is, or from the head. */
  private runConnection(): void {
    const conn = this.o.createConnection({
      onEvents: (events) => {
        if (this.conn !== conn) return
        const fresh = this.take(events)
        if (fresh.length === 0) return
        this.status = { ...conn.info, position: this.lastApplied }
        this.o.onEvents?.(fresh)
        this.post({ kind: 'events', events: fresh, info: this.info })
      },
      onStatus: (info) => {
        if (this.conn !== conn) return
        this.status = info
        this.o.onStatus?.(this.info)
        this.post({ kind: 'status', info: this.info })
      },
      onReady: (position) => {
        if (this.conn !== conn) return
        this.setReady(position)
        this.post({ kind: 'ready', position, info: this.info })
      },
      onUnauthorized: () => {
        if (this.conn !== conn) return
        this.post({ kind: 'unauthorized' })
        this.o.onUnauthorized?.()
      },
    })
    this.conn = conn
    if (this.ready) conn.start(this.lastApplied)
    else conn.start()
  }

  // --- following -------------------------------------------------------------

  private onMessage(m: Message): void {
    if (this.role === 'stopped' || !m || typeof m !== 'object') return
    if (this.role === 'leader') {
      switch (m.kind) {
        case 'hello':
          this.post({ kind: 'state', ready: this.ready, position: this.lastApplied, info: this.info })
          break
        case 'nudge':
          this.conn?.nudge()
          break
        case 'reconnect':
          this.conn?.reconnect()
          break
      }
      return
    }
    if (this.role !== 'follower') return
    switch (m.kind) {
      case 'state':
        if (m.ready && !this.ready) this.setReady(m.position)
        this.followStatus(m.info)
        break
      case 'ready':
        this.setReady(m.position)
        this.followStatus(m.info)
        break
      case 'events': {
        if (m.events.length === 0) break
        // Joined while events flow: this batch is where this tab starts.
        if (!this.ready) this.setReady(m.events[0].position - 1)
        const fresh = this.take(m.events)
        this.status = m.info
        if (fresh.length) this.o.onEvents?.(fresh)
        break
      }
      case 'status':
        this.followStatus(m.info)
        break
      case 'unauthorized':
        this.o.onUnauthorized?.()
        break
    }
  }

  private followStatus(info: StatusInfo): void {
    this.status = info
    this.o.onStatus?.(this.info)
  }

  private setReady(position: number): void {
    this.ready = true
    this.lastApplied = position
    this.o.onReady?.(position)
  }

  /** The events after the last one applied here, in order, each once. */
  private take(events: Envelope[]): Envelope[] {
    const fresh: Envelope[] = []
    for (const e of events) {
      if (e.position <= this.lastApplied) continue
      fresh.push(e)
      this.lastApplied = e.position
    }
    return fresh
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
