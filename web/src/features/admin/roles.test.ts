import { describe, expect, it, vi } from 'vitest'
import type { Role } from '../../lib/types'
import { RolesChangedError, editedRoles, rebaseEdit, saveRoleEdit, toggleRole } from './roles'

describe('role edits', () => {
  it('without an edit the row shows the live roles, whatever they become', () => {
    expect(editedRoles(['viewer'], null)).toEqual(['viewer'])
    expect(editedRoles(['viewer', 'admin'], null)).toEqual(['viewer', 'admin'])
  })

  it('an edit is kept relative to the live value: a change made elsewhere is not reverted', () => {
    const edit = toggleRole(['viewer'], null, 'operator', true)
    expect(edit).toEqual({ base: ['viewer'], roles: ['viewer', 'operator'] })
    // Another admin makes bob an admin meanwhile.
    expect(editedRoles(['viewer', 'admin'], edit)).toEqual(['viewer', 'operator', 'admin'])
    // Toggling back to the live value is no edit at all.
    expect(toggleRole(['viewer'], edit, 'operator', false)).toBeNull()
  })

  it('an edit rebased on roles changed elsewhere saves the change shown, not a revert', async () => {
    const edit = toggleRole(['viewer'], null, 'admin', true)!
    const rebased = rebaseEdit(edit, ['viewer', 'operator'])!
    expect(rebased).toEqual({ base: ['viewer', 'operator'], roles: ['viewer', 'operator', 'admin'] })
    const setRoles = vi.fn(async (_id: string, roles: Role[]) => roles)
    await saveRoleEdit({ id: 'u2', username: 'bob' }, rebased, { currentRoles: async () => ['viewer', 'operator'], setRoles })
    expect(setRoles).toHaveBeenCalledWith('u2', ['viewer', 'operator', 'admin'])
    // Nothing left once the live value already has it.
    expect(rebaseEdit(edit, ['viewer', 'admin'])).toBeNull()
  })

  it('a save checks the roles are still what the edit was based on, and says so when they changed', async () => {
    const setRoles = vi.fn(async (_id: string, roles: Role[]) => roles)
    const edit = toggleRole(['viewer'], null, 'operator', true)!
    await expect(
      saveRoleEdit({ id: 'u2', username: 'bob' }, edit, { currentRoles: async () => ['viewer', 'admin'], setRoles }),
    ).rejects.toBeInstanceOf(RolesChangedError)
    expect(setRoles).not.toHaveBeenCalled()
    await saveRoleEdit({ id: 'u2', username: 'bob' }, edit, { currentRoles: async () => ['viewer'], setRoles })
    expect(setRoles).toHaveBeenCalledWith('u2', ['viewer', 'operator'])
  })
})
