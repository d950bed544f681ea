import { createContext, useContext } from 'react'
import type { Role, User } from '../../lib/types'

export interface Auth {
  user: User
  via?: string
  canOperate: boolean
  isAdmin: boolean
}

export const AuthContext = createContext<Auth | null>(null)

export function authOf(user: User, via?: string): Auth {
  const roles = new Set<Role>(user.roles ?? [])
  const isAdmin = roles.has('admin')
  return { user, via, isAdmin, canOperate: isAdmin || roles.has('operator') }
}

/** The signed-in user and what they may do (only inside the signed-in app). */
export function useAuth(): Auth {
  const auth = useContext(AuthContext)
  if (!auth) throw new Error('useAuth must be used while signed in')
  return auth
}
