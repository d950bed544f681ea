import { text } from '../../lib/describe'
import type { Feature } from '../../lib/feature'
import { DeploymentDetailPage } from './DeploymentDetailPage'
import { DeploymentsPage } from './DeploymentsPage'
import { DEPLOYMENT_EVENT_TYPES } from './types'

const PREFIX = 'deployment-'

/** The deployments dashboard (the start page) and each deployment's page. */
export const deployments: Feature = {
  name: 'deployments',
  routes: [
    { path: '/', element: <DeploymentsPage /> },
    { path: '/deployments/:id', element: <DeploymentDetailPage /> },
  ],
  nav: { to: '/', label: 'Deployments' },
  // The pages follow herald's resource streams; the timeline gets the events appended (live/cache.ts).
  live: { types: DEPLOYMENT_EVENT_TYPES },
  describe: {
    DeploymentStarted: ({ data: d }) =>
      `started ${[text(d.service), text(d.version)].filter(Boolean).join(' ')}${text(d.environment) ? ` in ${d.environment}` : ''}`,
    DeploymentProgressed: ({ data: d }) =>
      `reported ${typeof d.percent === 'number' ? d.percent : '?'}%${text(d.message) ? `: ${d.message}` : ''}`,
    DeploymentSucceeded: () => 'marked it succeeded',
    DeploymentFailed: ({ data: d }) => `marked it failed${text(d.reason) ? `: ${d.reason}` : ''}`,
    DeploymentCancelled: ({ data: d }) => `cancelled it${text(d.reason) ? `: ${d.reason}` : ''}`,
  },
  streamPage: (stream) =>
    stream.startsWith(PREFIX) && stream.length > PREFIX.length
      ? `/deployments/${encodeURIComponent(stream.slice(PREFIX.length))}`
      : null,
}
