import type { Feature } from '../../lib/feature'
import { AUDIT_EVENTS, appendToAudit } from './api'
import { AuditPage } from './AuditPage'

/** The log, newest first, with its hash-chain check. */
export const audit: Feature = {
  name: 'audit',
  routes: [{ path: '/audit', element: <AuditPage /> }],
  nav: { to: '/audit', label: 'Audit log' },
  live: { types: '*', apply: appendToAudit },
  resync: [AUDIT_EVENTS],
}
