import { useCallback, useEffect, useMemo, useState } from 'react'
import { ApiError } from '../lib/api'
import { useResourceHub } from './LiveProvider'
import type { ResourceStatus, ResourceType, ResourceView } from './resource'

export interface Resource<S> {
  /** The state (undefined before the first). */
  state: S | undefined
  status: ResourceStatus
  /** The read-model position the state reflects. */
  position: number
  /** herald's refusal (a 404: there is no such resource), until `retry`. */
  error: ApiError | null
  /** `state` is the previous address's (`keepPrevious`) until this one's arrives. */
  isPlaceholder: boolean
  /** Connects afresh; with `minPosition`, herald waits until its read model has caught up to it. */
  retry: (minPosition?: number) => void
}

/**
 * Follows a resource stream (`/api/…/live`, live/resource.ts): the state, its
 * position and the connection's status. One stream per address for the whole
 * browser, shared between tabs; closed when no page follows it any more.
 * `minPosition` (after a command): a stream this opens first waits for the read model to reflect it.
 * `url` null: nothing is followed.
 */
export function useResource<S>(
  type: ResourceType<S>,
  url: string | null,
  options: { keepPrevious?: boolean; minPosition?: number | null } = {},
): Resource<S> {
  const hub = useResourceHub()
  const [current, setCurrent] = useState<{ url: string; view: ResourceView<unknown> } | null>(null)
  const minPosition = options.minPosition ?? undefined
  useEffect(() => {
    if (!url) return
    return hub.subscribe(type as unknown as ResourceType<unknown>, url, (view) => setCurrent({ url, view }), minPosition)
  }, [hub, type, url, minPosition])
  const mine = current && current.url === url ? current.view : null
  const shown = mine ?? (options.keepPrevious ? current?.view ?? null : null)
  const refusal = mine?.error ?? null
  const error = useMemo(() => (refusal ? new ApiError(refusal.status, refusal.problem) : null), [refusal])
  const retry = useCallback(
    (minPosition?: number) => {
      if (url) hub.retry(url, minPosition)
    },
    [hub, url],
  )
  return {
    state: shown?.state as S | undefined,
    status: mine?.status ?? 'connecting',
    position: mine?.position ?? 0,
    error,
    isPlaceholder: mine === null && shown !== null,
    retry,
  }
}
