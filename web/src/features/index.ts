// The console's features, one line each, in the order of the main navigation.
// Nothing else lists them: the shell (App, Layout, live/) takes them from here.

import type { Feature } from '../lib/feature'
import { admin } from './admin'
import { audit } from './audit'
import { auth } from './auth'
import { deployments } from './deployments'
import { posts } from './posts'

export const features: readonly Feature[] = [
  deployments,
  posts,
  audit,
  admin,
  auth,
]
