import type { InfiniteData, QueryClient } from '@tanstack/react-query'
import { get } from '../../lib/api'
import type { Envelope, EventsPage } from '../../lib/types'
import { livePosition } from '../../live/cache'
import { matches, type EventFilter } from '../../live/filter'

/** One window of the audit log, newest first. */
export interface AuditWindow {
  events: Envelope[]
  /** The window holds the matching events with positions in (after, through]. */
  after: number
  through: number
}

export const auditKey = (filter: EventFilter) => ['audit', 'events', filter] as const
export const AUDIT_EVENTS = ['audit', 'events'] as const

export interface ChainStatus {
  ok: boolean
  checked: number
  head_position: number
  head_hash: string | null
  first_bad_position: number | null
}

export const verifyKey = ['audit', 'verify'] as const
export const fetchVerify = (signal?: AbortSignal) => get<ChainStatus>('/api/audit/verify', signal)

function query(after: number, limit: number, f: EventFilter): string {
  const q = new URLSearchParams({ after: String(after), limit: String(limit) })
  if (f.stream) q.append('stream', f.stream)
  if (f.category) q.append('category', f.category)
  if (f.type) q.append('type', f.type)
  return `/api/events?${q}`
}

/** The newest position, or `null` to start from it. */
export type AuditCursor = number | null

/**
 * One page of the audit log, newest first: the matching events with positions
 * in (after, through], read as windows of positions going back until there are
 * enough of them. `GET /api/events` pages forward only, so each window is read
 * whole (a window is never wider than the page limit, so nothing is cut).
 */
export async function fetchAuditPage(filter: EventFilter, through: AuditCursor, signal?: AbortSignal): Promise<AuditWindow> {
  const serverFiltered = Boolean(filter.stream || filter.category || filter.type)
  const width = serverFiltered || filter.actor ? 1000 : 100
  let top = through
  if (top === null) top = (await get<EventsPage>('/api/events?limit=1', signal)).head
  const events: Envelope[] = []
  let after = top
  for (let i = 0; i < 10 && after > 0 && events.length < 50; i++) {
    const from = Math.max(0, after - width)
    const page = await get<EventsPage>(query(from, width, filter), signal)
    const inWindow = page.events.filter((e) => e.position > from && e.position <= after && matches(filter, e))
    events.push(...inWindow.reverse())
    after = from
  }
  // Live events that came while reading (the cache could not take them yet).
  const newer: Envelope[] = []
  while (through === null && livePosition() > top) {
    const to = livePosition()
    for (let from = top; from < to; ) {
      const page = await get<EventsPage>(query(from, 1000, filter), signal)
      const lo = from
      newer.unshift(...page.events.filter((e) => e.position > lo && e.position <= to && matches(filter, e)).reverse())
      if (page.events.length === 0 || page.next_after <= from) break
      from = page.next_after
    }
    top = to
  }
  return { events: [...newer, ...events], after, through: top }
}

/** Live events go at the top of each cached view of the log that they match, once. */
export function appendToAudit(qc: QueryClient, events: Envelope[]): void {
  const cached = qc.getQueriesData<InfiniteData<AuditWindow, number>>({ queryKey: AUDIT_EVENTS })
  for (const [key, data] of cached) {
    if (qc.getQueryState(key)?.fetchStatus === 'fetching') {
      // The first page's reader catches up to livePosition() before it answers.
      continue
    }
    if (!data || data.pages.length === 0) continue
    const filter = (key[2] ?? {}) as EventFilter
    const first = data.pages[0]
    const fresh = events.filter((e) => e.position > first.through && matches(filter, e))
    if (fresh.length === 0) continue
    const through = Math.max(first.through, ...events.map((e) => e.position))
    const page: AuditWindow = { ...first, through, events: [...fresh.reverse(), ...first.events] }
    qc.setQueryData<InfiniteData<AuditWindow, number>>(key, { ...data, pages: [page, ...data.pages.slice(1)] })
  }
}
