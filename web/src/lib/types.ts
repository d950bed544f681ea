// The shapes of docs/API.md, as the console uses them.

export type ActorKind = 'user' | 'token' | 'system'

export interface Actor {
  kind: ActorKind | string
  id: string
  name: string
}

/** One event as stored in the log (docs/API.md §3). */
export interface Envelope<D = Record<string, unknown>> {
  position: number
  id: string
  stream: string
  version: number
  type: string
  schema: number
  data: D
  actor: Actor
  command_id?: string | null
  correlation_id?: string | null
  recorded_at: string
  hash: string
}

export interface EventsPage {
  events: Envelope[]
  next_after: number
  head: number
}

export interface StreamSlice {
  stream: string
  version: number
  events: Envelope[]
}

export type Role = 'viewer' | 'operator' | 'admin'
export const ROLES: Role[] = ['viewer', 'operator', 'admin']

export interface User {
  id: string
  username: string
  display_name?: string | null
  roles: Role[]
}

export interface Me {
  user: User
  via?: string
}
