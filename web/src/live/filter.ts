import type { Envelope } from '../lib/types'

/** Which events a view wants (as the API's filters: stream, category, type; plus actor name). */
export interface EventFilter {
  stream?: string
  category?: string
  type?: string
  actor?: string
}

export function categoryOf(stream: string): string {
  const i = stream.indexOf('-')
  return i < 0 ? stream : stream.slice(0, i)
}

export function matches(f: EventFilter, e: Envelope): boolean {
  if (f.stream && e.stream !== f.stream) return false
  if (f.category && categoryOf(e.stream) !== f.category) return false
  if (f.type && e.type !== f.type) return false
  if (f.actor && !e.actor.name.toLowerCase().includes(f.actor.toLowerCase())) return false
  return true
}
