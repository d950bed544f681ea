import { describe, expect, it, vi } from 'vitest'
import type { Role } from '../../lib/types'
import { RolesChangedError, editedRoles, saveRoleEdit, toggleRole } from './roles'

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
