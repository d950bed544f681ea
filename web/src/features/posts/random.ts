// A post written by the "Random post" button: a title and 2–5 sentences about
// running software, and 1–4 tags from a small vocabulary. Deterministic for a
// seeded random source, so tests can pin one.

import type { PostDraft } from './types'

/** In [0, 1). */
export type Random = () => number

/** A small seeded generator (mulberry32). */
export function seededRandom(seed: number): Random {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export const TAG_VOCABULARY = ['rust', 'ops', 'release', 'incident', 'database', 'frontend', 'security', 'infra'] as const

const WORDS = {
  service: ['the billing service', 'the user service', 'the search API', 'the checkout flow', 'the ingest pipeline', 'the auth gateway', 'the notification worker'],
  Service: ['Billing', 'Search', 'Checkout', 'Ingest', 'Auth', 'Notifications', 'Payments'],
  env: ['production', 'staging', 'the canary fleet', 'the EU region', 'the US region'],
  metric: ['p99 latency', 'the error rate', 'memory use', 'CPU load', 'queue depth', 'cold start time'],
  change: ['dropped by a third', 'doubled for an hour', 'stayed flat', 'crept up slowly', 'fell back to normal'],
  team: ['the on-call engineer', 'the platform team', 'the database team', 'the release captain', 'two reviewers'],
  thing: ['a connection pool limit', 'a missing index', 'a stale cache entry', 'an expired certificate', 'a retry storm', 'a slow DNS lookup'],
  action: ['rolled back the deploy', 'raised the pool size', 'added an index', 'renewed the certificate', 'added jitter to the retries', 'pinned the dependency'],
  tool: ['the flame graph', 'the audit log', 'the dashboards', 'the trace view', 'the slow query log'],
  number: ['2', '3', '5', '12', '40'],
}
type Slot = keyof typeof WORDS

const TITLES = [
  '{Service} is faster in {env}',
  'What we learnt from {thing}',
  'Notes from a quiet release',
  '{Service}: a small incident review',
  'How {team} tamed {metric}',
  'Shipping {Service} without downtime',
]

const SENTENCES = [
  'After the last release, {metric} of {service} {change}.',
  '{team} traced the problem to {thing}.',
  'We {action} and watched {tool} for a while.',
  'The fix went out to {env} in {number} steps.',
  'Nobody was paged, which is how it should be.',
  'The root cause was {thing} that had been there for months.',
  'Next time we will check {tool} before anything else.',
  'Rolling out to {env} took {number} minutes from merge to traffic.',
  '{team} wrote a runbook so that the next person can do it alone.',
  'It turned out that {metric} was the better signal to alert on.',
  'We kept the old path behind a flag for {number} days, just in case.',
]

const pick = <T>(rng: Random, list: readonly T[]): T => list[Math.min(list.length - 1, Math.floor(rng() * list.length))]

function fill(rng: Random, template: string): string {
  const s = template.replace(/\{(\w+)\}/g, (_, slot: Slot) => pick(rng, WORDS[slot]))
  return s[0].toUpperCase() + s.slice(1)
}

/** `count` different items of `list`, in the list's order. */
function some<T>(rng: Random, list: readonly T[], count: number): T[] {
  const left = [...list]
  const chosen = new Set<T>()
  while (chosen.size < count && left.length) chosen.add(left.splice(Math.floor(rng() * left.length), 1)[0])
  return list.filter((x) => chosen.has(x))
}

export function randomPost(rng: Random = Math.random): PostDraft {
  const title = fill(rng, pick(rng, TITLES))
  const count = 2 + Math.floor(rng() * 4)
  const content = some(rng, SENTENCES, count)
    .map((t) => fill(rng, t))
    .join(' ')
  const tags = some(rng, TAG_VOCABULARY, 1 + Math.floor(rng() * 4))
  return { title, content, tags }
}
