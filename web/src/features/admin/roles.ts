// Editing a user's roles against a value that may change underneath (another
// admin, another tab): the edit is kept as what the person toggled, applied
// to the live roles, and a save first checks that the roles are still the
// ones the edit was based on.

import { ROLES, type Role } from '../../lib/types'

export interface RoleEdit {
  /** The live roles when the edit was last made. */
  base: Role[]
  /** What the person wants, based on `base`. */
  roles: Role[]
}

const norm = (roles: readonly Role[]): Role[] => ROLES.filter((r) => roles.includes(r))

export const sameRoles = (a: readonly Role[] | undefined, b: readonly Role[] | undefined): boolean =>
  norm(a ?? []).join() === norm(b ?? []).join()

/** The roles to show: the live ones, with the person's additions and removals on top. */
export function editedRoles(live: readonly Role[], edit: RoleEdit | null): Role[] {
  if (!edit) return norm(live)
  const added = edit.roles.filter((r) => !edit.base.includes(r))
  const removed = edit.base.filter((r) => !edit.roles.includes(r))
  return ROLES.filter((r) => (live.includes(r) || added.includes(r)) && !removed.includes(r))
}

/** One checkbox clicked: the edit is now based on the live roles. */
export function toggleRole(live: readonly Role[], edit: RoleEdit | null, role: Role, on: boolean): RoleEdit | null {
  const shown = editedRoles(live, edit)
  const roles = on ? norm([...shown, role]) : shown.filter((r) => r !== role)
  return sameRoles(roles, live) ? null : { base: norm(live), roles }
}

/**
 * The live roles changed while an edit was open (and the row shows them): the
 * same wanted change, now based on them. Null when nothing is left to change.
 */
export function rebaseEdit(edit: RoleEdit, live: readonly Role[]): RoleEdit | null {
  const wanted = editedRoles(live, edit)
  return sameRoles(wanted, live) ? null : { base: norm(live), roles: wanted }
}

export class RolesChangedError extends Error {
  constructor(
    readonly username: string,
    readonly now: Role[],
  ) {
    super(
      `The roles of ${username} changed meanwhile (they are now: ${now.join(', ') || 'none'}), so nothing was saved. Your change is shown on top of the new roles: check it and save again.`,
    )
    this.name = 'RolesChangedError'
  }
}

/**
 * Saves an edit: reads the user's roles as herald has them now, refuses with
 * `RolesChangedError` if they are not what the edit was based on, else sends
 * the edited roles.
 */
export async function saveRoleEdit<T>(
  user: { id: string; username: string },
  edit: RoleEdit,
  deps: { currentRoles: (id: string) => Promise<Role[] | undefined>; setRoles: (id: string, roles: Role[]) => Promise<T> },
): Promise<T> {
  const now = (await deps.currentRoles(user.id)) ?? []
  if (!sameRoles(now, edit.base)) throw new RolesChangedError(user.username, norm(now))
  return deps.setRoles(user.id, editedRoles(now, edit))
}
