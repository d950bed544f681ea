import { DEPLOYMENT_EVENT_TYPES } from '../features/deployments/types'

/**
 * herald names each SSE message after its event type, and an EventSource only
 * surfaces the names it listens for. These are the types the console knows;
 * an event of any other type still arrives — the connection sees the gap in
 * positions and reads it from `GET /api/events`.
 */
export const KNOWN_EVENT_TYPES: readonly string[] = [
  ...DEPLOYMENT_EVENT_TYPES,
  'PostCreated',
  'PostUpdated',
  'TokenCreated',
  'TokenRevoked',
  'UserRegistered',
  'LoginSucceeded',
  'LoginFailed',
  'LoggedOut',
  'SessionRevoked',
  'RolesChanged',
  'InviteCreated',
  'UserDisabled',
  'UserEnabled',
  'PasskeyRemoved',
]
