// One stream's events (a timeline), as every feature reads it: `GET /api/streams/{stream}`,
// kept current by live/cache.ts, which appends each live event to its stream's cached slice.

import { useQuery } from '@tanstack/react-query'
import { get } from '../lib/api'
import type { StreamSlice } from '../lib/types'

/** Every cached timeline is under this prefix. */
export const ALL_STREAMS = ['stream'] as const
export const streamKey = (stream: string) => ['stream', stream] as const

/** Every event of `stream`, oldest first (read in pages of 1000). */
export async function fetchStream(stream: string, signal?: AbortSignal): Promise<StreamSlice> {
  const first = await get<StreamSlice>(`/api/streams/${encodeURIComponent(stream)}?limit=1000`, signal)
  const events = [...first.events]
  while (events.length > 0 && events[events.length - 1].version < first.version) {
    const from = events[events.length - 1].version + 1
    const next = await get<StreamSlice>(
      `/api/streams/${encodeURIComponent(stream)}?from_version=${from}&limit=1000`,
      signal,
    )
    if (next.events.length === 0) break
    events.push(...next.events)
  }
  return { ...first, events }
}

/** A stream's events, read once and then kept current by the live events (null: not yet). */
export const useTimeline = (stream: string | null) =>
  useQuery({
    queryKey: streamKey(stream ?? ''),
    queryFn: ({ signal }) => fetchStream(stream ?? '', signal),
    enabled: stream !== null,
  })
