import { useQueryClient } from '@tanstack/react-query'
import { createContext, useContext, useEffect, useRef, useState, useSyncExternalStore, type ReactNode } from 'react'
import type { Envelope } from '../lib/types'
import { applyEvents, resyncLiveQueries } from './cache'
import { LiveConnection, type StatusInfo } from './connection'
import { SharedLive, type BroadcastChannelCtor, type LockManagerLike } from './shared'
import { KNOWN_EVENT_TYPES } from './eventTypes'
import { matches, type EventFilter } from './filter'

type Listener = (events: Envelope[]) => void

/** What every view of the tab shares: the browser's one connection, its status, and the events it delivers. */
class LiveHub {
  /** Resumes the live stream at once on the current session (after a step-up). */
  reconnect: () => void = () => {}
  private status: StatusInfo = { status: 'connecting', position: 0, attempt: 0, retryAt: null, pollingReason: null }
  private browserOnline = typeof navigator === 'undefined' ? true : navigator.onLine
  private snapshot: StatusInfo = this.status
  private statusListeners = new Set<() => void>()
  private listeners = new Set<Listener>()

  setStatus(s: StatusInfo): void {
    this.status = s
    this.refresh()
  }
  setBrowserOnline(online: boolean): void {
    this.browserOnline = online
    this.refresh()
  }
  private refresh(): void {
    const s = this.status
    // The browser knows first when the network is gone.
    this.snapshot = !this.browserOnline && s.status !== 'stopped' ? { ...s, status: 'offline' } : s
    for (const l of this.statusListeners) l()
  }
  getStatus = (): StatusInfo => this.snapshot
  subscribeStatus = (l: () => void): (() => void) => {
    this.statusListeners.add(l)
    return () => this.statusListeners.delete(l)
  }
  subscribe(l: Listener): () => void {
    this.listeners.add(l)
    return () => this.listeners.delete(l)
  }
  publish(events: Envelope[]): void {
    for (const l of this.listeners) l(events)
  }
}

const LiveContext = createContext<LiveHub | null>(null)

/**
 * Follows the browser's one live connection (`/api/events/live`) while `enabled`
 * (signed in), and puts every event into the query cache.
 */
export function LiveProvider({
  enabled,
  onUnauthorized,
  children,
}: {
  enabled: boolean
  onUnauthorized?: () => void
  children: ReactNode
}) {
  const qc = useQueryClient()
  const [hub] = useState(() => new LiveHub())
  const unauthorized = useRef(onUnauthorized)
  unauthorized.current = onUnauthorized

  useEffect(() => {
    if (!enabled) return
    // One connection per browser: the tab holding the Web Lock runs it and
    // passes events and status to the others (shared.ts); without Web Locks or
    // BroadcastChannel each tab runs its own.
    const locks = (typeof navigator !== 'undefined' ? (navigator.locks as LockManagerLike | undefined) : undefined) ?? null
    const BC = (typeof BroadcastChannel !== 'undefined' ? (BroadcastChannel as BroadcastChannelCtor) : null) ?? null
    const live: SharedLive = new SharedLive({
      locks,
      BroadcastChannel: BC,
      createConnection: (callbacks) =>
        new LiveConnection({
          EventSource: window.EventSource,
          fetch: window.fetch.bind(window),
          eventTypes: KNOWN_EVENT_TYPES,
          ...callbacks,
        }),
      onEvents: (events) => {
        applyEvents(qc, events)
        hub.publish(events)
        // The status carries the position applied (the audit page compares it with
        // the last chain check); onStatus alone fires only when the status changes.
        hub.setStatus(live.info)
      },
      onStatus: (s) => hub.setStatus(s),
      onReady: () => resyncLiveQueries(qc),
      onUnauthorized: () => unauthorized.current?.(),
    })
    hub.reconnect = () => live.reconnect()
    live.start()
    const online = () => {
      hub.setBrowserOnline(true)
      live.nudge()
    }
    const offline = () => hub.setBrowserOnline(false)
    window.addEventListener('online', online)
    window.addEventListener('offline', offline)
    return () => {
      window.removeEventListener('online', online)
      window.removeEventListener('offline', offline)
      hub.reconnect = () => {}
      live.stop()
    }
  }, [enabled, qc, hub])

  return <LiveContext.Provider value={hub}>{children}</LiveContext.Provider>
}

function useHub(): LiveHub {
  const hub = useContext(LiveContext)
  if (!hub) throw new Error('useLive… must be used inside <LiveProvider>')
  return hub
}

/** Resumes the live stream on the current session at once (call after a step-up issued a new one). */
export function useLiveReconnect(): () => void {
  const hub = useHub()
  return () => hub.reconnect()
}

/** live / reconnecting / polling / offline (and connecting, at first). */
export function useConnectionStatus(): StatusInfo {
  const hub = useHub()
  return useSyncExternalStore(hub.subscribeStatus, hub.getStatus, hub.getStatus)
}

/**
 * Calls `onEvents` with each batch of live events that match `filter` (after
 * the query cache has them). The callback may change between renders.
 */
export function useLiveEvents(filter: EventFilter, onEvents: (events: Envelope[]) => void): void {
  const hub = useHub()
  const cb = useRef(onEvents)
  cb.current = onEvents
  const { stream, category, type, actor } = filter
  useEffect(
    () =>
      hub.subscribe((events) => {
        const mine = events.filter((e) => matches({ stream, category, type, actor }, e))
        if (mine.length) cb.current(mine)
      }),
    [hub, stream, category, type, actor],
  )
}
