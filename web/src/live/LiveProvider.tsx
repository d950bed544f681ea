import { useQueryClient } from '@tanstack/react-query'
import { createContext, useContext, useEffect, useRef, useState, useSyncExternalStore, type ReactNode } from 'react'
import { useFeatures } from '../lib/feature'
import type { Envelope } from '../lib/types'
import { applyEvents, resyncLiveQueries } from './cache'
import { LiveConnection, type StatusInfo } from './connection'
import { ResourceHub, ResourceStream } from './resource'
import { SharedLive, type BroadcastChannelCtor, type LockManagerLike } from './shared'
import { matches, type EventFilter } from './filter'

type Listener = (events: Envelope[]) => void

/** What every view of the tab shares: the browser's one connection, its status, and the events it delivers. */
class LiveHub {
  /** Resumes the live stream at once on the current session (after a step-up). */
  reconnect: () => void = () => {}
  private status: StatusInfo = { status: 'connecting', position: 0, attempt: 0, retryAt: null, pollingReason: null }
  private browserOnline = typeof navigator === 'undefined' ? true : navigator.onLine
  /** A resource stream of this tab is resuming after a drop. */
  private resourceTrouble = false
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
  setResourceTrouble(trouble: boolean): void {
    if (trouble === this.resourceTrouble) return
    this.resourceTrouble = trouble
    this.refresh()
  }
  private refresh(): void {
    const s = this.status
    // The browser knows first when the network is gone; a page's own stream may drop while the log's is fine.
    this.snapshot =
      !this.browserOnline && s.status !== 'stopped'
        ? { ...s, status: 'offline' }
        : this.resourceTrouble && s.status === 'live'
          ? { ...s, status: 'reconnecting' }
          : s
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
const ResourceContext = createContext<ResourceHub | null>(null)

const sharing = () => ({
  locks: (typeof navigator !== 'undefined' ? (navigator.locks as LockManagerLike | undefined) : undefined) ?? null,
  BroadcastChannel: (typeof BroadcastChannel !== 'undefined' ? (BroadcastChannel as BroadcastChannelCtor) : null) ?? null,
})

/**
 * Follows the browser's one live connection (`/api/events/live`) while `enabled`
 * (signed in), and puts every event into the query cache (each feature's live
 * handler gets the events of its types). Runs the resource streams the pages
 * follow (`useResource`), shared with the other tabs too.
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
  const features = useFeatures()
  const [hub] = useState(() => new LiveHub())
  const unauthorized = useRef(onUnauthorized)
  unauthorized.current = onUnauthorized
  // Stable for the pages' subscriptions; started and stopped with the session.
  const [resources] = useState(
    () =>
      new ResourceHub({
        ...sharing(),
        createStream: (url, type, callbacks, minPosition) =>
          new ResourceStream({
            url,
            type,
            EventSource: window.EventSource,
            fetch: window.fetch.bind(window),
            ...callbacks,
            minPosition,
          }),
        onUnauthorized: () => unauthorized.current?.(),
      }),
  )

  useEffect(() => {
    if (!enabled) return
    resources.start()
    const offStatus = resources.subscribeStatus(() => hub.setResourceTrouble(resources.statuses().includes('reconnecting')))
    // One connection per browser: the tab holding the Web Lock runs it and
    // passes events and status to the others (shared.ts); without Web Locks or
    // BroadcastChannel each tab runs its own.
    const live: SharedLive = new SharedLive({
      ...sharing(),
      createConnection: (callbacks) =>
        new LiveConnection({
          EventSource: window.EventSource,
          fetch: window.fetch.bind(window),
          eventTypes: features.eventTypes,
          ...callbacks,
        }),
      onEvents: (events) => {
        applyEvents(qc, events, features.handlers)
        hub.publish(events)
        // The status carries the position applied (the audit page compares it with
        // the last chain check); onStatus alone fires only when the status changes.
        hub.setStatus(live.info)
      },
      onStatus: (s) => hub.setStatus(s),
      onReady: () => resyncLiveQueries(qc, features.resyncKeys),
      onUnauthorized: () => unauthorized.current?.(),
    })
    hub.reconnect = () => live.reconnect()
    live.start()
    const online = () => {
      hub.setBrowserOnline(true)
      live.nudge()
      resources.nudge()
    }
    const offline = () => hub.setBrowserOnline(false)
    window.addEventListener('online', online)
    window.addEventListener('offline', offline)
    return () => {
      window.removeEventListener('online', online)
      window.removeEventListener('offline', offline)
      hub.reconnect = () => {}
      live.stop()
      offStatus()
      resources.stop()
    }
  }, [enabled, qc, hub, resources, features])

  return (
    <LiveContext.Provider value={hub}>
      <ResourceContext.Provider value={resources}>{children}</ResourceContext.Provider>
    </LiveContext.Provider>
  )
}

/** The resource streams of this browser (for `useResource`). */
export function useResourceHub(): ResourceHub {
  const r = useContext(ResourceContext)
  if (!r) throw new Error('useResource must be used inside <LiveProvider>')
  return r
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
