// The seam between the console's shell and its features.
//
// Each feature (src/features/<name>/index.ts) exports one `Feature`: its pages,
// its entry in the main navigation, what it does with live events, and how it
// puts its events into words. `src/features/index.ts` lists them; the shell
// (App, Layout, live/, lib/) knows only this shape, never a feature.

import type { QueryClient } from '@tanstack/react-query'
import { createContext, useContext, type ReactNode } from 'react'
import { humanType } from './describe'
import type { Envelope } from './types'

export interface FeatureRoute {
  path: string
  element: ReactNode
}

export interface NavEntry {
  to: string
  label: string
  /** Shown only to operators (and admins) or only to admins. */
  role?: 'operator' | 'admin'
}

/**
 * What a feature does when events of its types arrive on the browser's one
 * live connection (`/api/events/live`).
 */
export interface LiveHandler {
  /** The event types it handles; `'*'`: every event. The live connection listens for every named type. */
  types: readonly string[] | '*'
  /** Updates the query cache with a batch of its events (in position order, each once). */
  apply?: (qc: QueryClient, events: Envelope[]) => void
}

export interface Feature {
  name: string
  routes?: readonly FeatureRoute[]
  nav?: NavEntry
  live?: LiveHandler
  /** One event in words, by type ("started user-service 1.4.2 in prod"), after the actor's name. */
  describe?: Readonly<Record<string, (e: Envelope) => string>>
  /** The console page of one of its streams (a link from the audit log), or null. */
  streamPage?: (stream: string) => string | null
  /** Queries read before the live connection knew its position: they are read again once it does. */
  resync?: readonly (readonly unknown[])[]
}

/** The features, put together for the shell. */
export class Features {
  readonly list: readonly Feature[]
  /** Every event type a feature names: the live connection listens for these. */
  readonly eventTypes: readonly string[]
  readonly handlers: readonly LiveHandler[]
  readonly routes: readonly FeatureRoute[]
  readonly nav: readonly NavEntry[]
  readonly resyncKeys: readonly (readonly unknown[])[]
  private readonly describers = new Map<string, (e: Envelope) => string>()

  constructor(list: readonly Feature[]) {
    this.list = list
    const types = new Set<string>()
    const paths = new Set<string>()
    for (const f of list) {
      if (f.live && f.live.types !== '*') for (const t of f.live.types) types.add(t)
      for (const [type, fn] of Object.entries(f.describe ?? {})) {
        if (this.describers.has(type)) throw new Error(`two features describe ${type}`)
        this.describers.set(type, fn)
        types.add(type)
      }
      for (const r of f.routes ?? []) {
        if (paths.has(r.path)) throw new Error(`two features route ${r.path}`)
        paths.add(r.path)
      }
    }
    this.eventTypes = [...types]
    this.handlers = list.flatMap((f) => (f.live ? [f.live] : []))
    this.routes = list.flatMap((f) => f.routes ?? [])
    this.nav = list.flatMap((f) => (f.nav ? [f.nav] : []))
    this.resyncKeys = list.flatMap((f) => f.resync ?? [])
  }

  /** One event in words (after the actor's name): its feature's words, or its type. */
  describe = (e: Envelope): string => {
    const fn = this.describers.get(e.type)
    if (fn) {
      try {
        return fn(e)
      } catch {
        // An event whose data is not what its feature expects: its type still says something.
      }
    }
    return humanType(e.type)
  }

  /** The page showing a stream, if a feature has one. */
  streamPage = (stream: string): string | null => {
    for (const f of this.list) {
      const page = f.streamPage?.(stream)
      if (page) return page
    }
    return null
  }
}

const FeaturesContext = createContext<Features | null>(null)
export const FeaturesProvider = FeaturesContext.Provider

/** The features of this console (inside `<FeaturesProvider>`). */
export function useFeatures(): Features {
  const f = useContext(FeaturesContext)
  if (!f) throw new Error('useFeatures must be used inside <FeaturesProvider>')
  return f
}
