import type { Envelope } from './types'

const s = (v: unknown) => (typeof v === 'string' && v ? v : null)

/** One event in words: "started user-service 1.4.2 in prod", "reported 60%: canary ok". */
export function describeEvent(e: Envelope): string {
  const d = e.data ?? {}
  switch (e.type) {
    case 'DeploymentStarted':
      return `started ${[s(d.service), s(d.version)].filter(Boolean).join(' ')}${s(d.environment) ? ` in ${d.environment}` : ''}`
    case 'DeploymentProgressed':
      return `reported ${typeof d.percent === 'number' ? d.percent : '?'}%${s(d.message) ? `: ${d.message}` : ''}`
    case 'DeploymentSucceeded':
      return 'marked it succeeded'
    case 'DeploymentFailed':
      return `marked it failed${s(d.reason) ? `: ${d.reason}` : ''}`
    case 'DeploymentCancelled':
      return `cancelled it${s(d.reason) ? `: ${d.reason}` : ''}`
    case 'TokenCreated':
      return `created the API token ${s(d.name) ?? ''}${s(d.role) ? ` (${d.role})` : ''}`.trim()
    case 'TokenRevoked':
      return `revoked an API token${s(d.name) ? ` (${d.name})` : ''}`
    case 'UserRegistered':
      return `registered${s(d.username) ? ` as ${d.username}` : ''}${Array.isArray(d.roles) ? ` (${d.roles.join(', ')})` : ''}`
    case 'LoginSucceeded':
      return d.step_up ? 'confirmed with a passkey' : 'signed in with a passkey'
    case 'LoginFailed':
      return `failed to sign in${s(d.username) ? ` as ${d.username}` : ''}${s(d.reason) ? `: ${d.reason}` : ''}`
    case 'LoggedOut':
      return 'signed out'
    case 'SessionRevoked':
      return 'ended a session'
    case 'RolesChanged':
      return `set the roles of ${s(d.username) ?? 'a user'} to ${Array.isArray(d.roles) ? d.roles.join(', ') : '?'}`
    case 'UserDisabled':
      return `disabled the account ${s(d.username) ?? 'of a user'}${s(d.reason) ? `: ${d.reason}` : ''}`
    case 'UserEnabled':
      return `enabled the account ${s(d.username) ?? 'of a user'} again`
    case 'PasskeyRemoved':
      return `removed a passkey${s(d.username) ? ` of ${d.username}` : ''}${s(d.credential_id) ? ` (${String(d.credential_id).slice(0, 10)}…)` : ''}`
    case 'InviteCreated':
      return `created an invite${s(d.role) ? ` for a new ${d.role}` : ''}`
    case 'PostCreated':
      return `created the post ${s(d.title) ? `“${d.title}”` : ''}`.trim()
    case 'PostUpdated':
      return 'updated a post'
    default:
      return e.type.replace(/([a-z])([A-Z])/g, '$1 $2').toLowerCase()
  }
}

export function actorLabel(e: Envelope): string {
  const kind = e.actor.kind === 'user' ? '' : ` (${e.actor.kind})`
  return `${e.actor.name}${kind}`
}
