// Live events → the TanStack Query cache. A stream's cached timeline gets the
// event appended (any stream: every feature's timelines are read the same way),
// then each feature's live handler gets the events of its types.

import type { QueryClient } from '@tanstack/react-query'
import type { LiveHandler } from '../lib/feature'
import type { Envelope, StreamSlice } from '../lib/types'
import { ALL_STREAMS, streamKey } from './streams'

let appliedPosition = 0
/** The last position the live connection applied (0 before any). */
export const livePosition = (): number => appliedPosition

/**
 * Patches a cached query, unless it is being fetched right now: that answer
 * may predate the event, so the query is read again instead.
 */
export function patch<T>(qc: QueryClient, key: readonly unknown[], update: (old: T) => T): void {
  const state = qc.getQueryState(key)
  if (!state) return
  if (state.fetchStatus === 'fetching' || state.data === undefined) {
    void qc.invalidateQueries({ queryKey: key, exact: true })
    return
  }
  qc.setQueryData<T>(key, (old) => (old === undefined ? old : update(old)))
}

/** Hands a batch of live events to the cached timelines and to every handler of their types. */
export function applyEvents(qc: QueryClient, events: Envelope[], handlers: readonly LiveHandler[]): void {
  if (events.length === 0) return
  appliedPosition = Math.max(appliedPosition, events[events.length - 1].position)
  for (const e of events) appendToStream(qc, e)
  for (const h of handlers) {
    if (!h.apply) continue
    const types = h.types
    const mine = types === '*' ? events : events.filter((e) => types.includes(e.type))
    if (mine.length === 0) continue
    try {
      h.apply(qc, mine)
    } catch (e) {
      // One feature's bug must not stop the others (nor the connection).
      console.error('herald live: a feature handler threw', e)
    }
  }
}

/**
 * Reads these queries again now, and again after a moment: herald records who
 * may act in the log *before* it stores the row (a user, an invite, a token, a
 * session, roles), so a list read at once may miss it.
 */
export function refetchSettled(qc: QueryClient, keys: readonly (readonly unknown[])[], settleMs: readonly number[] = [500, 2_000]): void {
  if (keys.length === 0) return
  const refetch = () => {
    for (const key of keys) void qc.invalidateQueries({ queryKey: key })
  }
  refetch()
  for (const ms of settleMs) setTimeout(refetch, ms)
}

function appendToStream(qc: QueryClient, e: Envelope): void {
  const key = streamKey(e.stream)
  const slice = qc.getQueryData<StreamSlice>(key)
  if (slice && e.version > slice.version + 1) {
    // Something in between is missing here: read the stream again.
    void qc.invalidateQueries({ queryKey: key, exact: true })
    return
  }
  patch<StreamSlice>(qc, key, (s) =>
    e.version === s.version + 1 ? { ...s, version: e.version, events: [...s.events, e] } : s,
  )
}

/** After the live cursor is first known: anything read before it may be older. */
export function resyncLiveQueries(qc: QueryClient, keys: readonly (readonly unknown[])[]): void {
  for (const key of [ALL_STREAMS, ...keys]) void qc.invalidateQueries({ queryKey: key })
}
