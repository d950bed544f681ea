import { text } from '../../lib/describe'
import type { Feature } from '../../lib/feature'
import { refetchSettled } from '../../live/cache'
import { meKey } from './api'

/**
 * Signing in is the shell's (App, LoginPage); as a feature, auth puts its
 * events into words and reads the signed-in user again when their account changes.
 */
export const auth: Feature = {
  name: 'auth',
  live: {
    types: ['UserRegistered', 'RolesChanged', 'UserDisabled', 'UserEnabled', 'PasskeyRemoved'],
    apply: (qc) => refetchSettled(qc, [meKey]),
  },
  describe: {
    UserRegistered: ({ data: d }) =>
      `registered${text(d.username) ? ` as ${d.username}` : ''}${Array.isArray(d.roles) ? ` (${d.roles.join(', ')})` : ''}`,
    LoginSucceeded: ({ data: d }) => (d.step_up ? 'confirmed with a passkey' : 'signed in with a passkey'),
    LoginFailed: ({ data: d }) => `failed to sign in${text(d.username) ? ` as ${d.username}` : ''}${text(d.reason) ? `: ${d.reason}` : ''}`,
    LoggedOut: () => 'signed out',
    // A registration that lost a race after it was recorded: that user was never stored.
    RegistrationRefused: ({ data: d }) =>
      `could not register${text(d.username) ? ` as ${d.username}` : ''}${text(d.reason) ? `: ${d.reason}` : ''}`,
  },
}
