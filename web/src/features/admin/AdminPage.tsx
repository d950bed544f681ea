import {
  Alert,
  Badge,
  Box,
  Button,
  Card,
  Checkbox,
  Clipboard,
  Field,
  HStack,
  Heading,
  IconButton,
  Input,
  InputGroup,
  NativeSelect,
  SimpleGrid,
  Skeleton,
  Stack,
  Table,
  Tabs,
  Text,
} from '@chakra-ui/react'
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query'
import { useState, type FormEvent } from 'react'
import { ErrorAlert } from '../../components/ErrorAlert'
import { Time } from '../../components/Time'
import { toaster } from '../../components/ui/toaster'
import { ROLES, type Role } from '../../lib/types'
import { useAuth } from '../auth/AuthContext'
import { ConfirmDialog } from '../../components/ConfirmDialog'
import { RolesChangedError, editedRoles, rebaseEdit, sameRoles, saveRoleEdit, toggleRole, type RoleEdit } from './roles'
import {
  adminKeys,
  disableUser,
  enableUser,
  removePasskey,
  type Passkey,
  createInvite,
  createToken,
  fetchInvites,
  fetchSessions,
  fetchTokens,
  fetchUsers,
  inviteLink,
  revokeSession,
  revokeToken,
  setRoles,
  type AdminUser,
  type Invite,
  type NewToken,
  type Session,
} from './api'
import { errorMessage } from '../../lib/api'

export function AdminPage() {
  return (
    <Stack gap="6">
      <Heading as="h1" size="2xl">
        Admin
      </Heading>
      <Tabs.Root defaultValue="users" variant="enclosed" lazyMount>
        <Tabs.List flexWrap="wrap">
          <Tabs.Trigger value="users">Users and roles</Tabs.Trigger>
          <Tabs.Trigger value="invites">Invites</Tabs.Trigger>
          <Tabs.Trigger value="tokens">API tokens</Tabs.Trigger>
          <Tabs.Trigger value="sessions">Sessions</Tabs.Trigger>
        </Tabs.List>
        <Tabs.Content value="users">
          <Users />
        </Tabs.Content>
        <Tabs.Content value="invites">
          <Invites />
        </Tabs.Content>
        <Tabs.Content value="tokens">
          <Tokens />
        </Tabs.Content>
        <Tabs.Content value="sessions">
          <Sessions />
        </Tabs.Content>
      </Tabs.Root>
    </Stack>
  )
}

function CopyField({ label, value }: { label: string; value: string }) {
  return (
    <Clipboard.Root value={value}>
      <Clipboard.Label>{label}</Clipboard.Label>
      <InputGroup
        endElement={
          <Clipboard.Trigger asChild>
            <IconButton variant="surface" size="xs" me="-2" aria-label={`Copy ${label.toLowerCase()}`}>
              <Clipboard.Indicator />
            </IconButton>
          </Clipboard.Trigger>
        }
      >
        <Clipboard.Input asChild>
          <Input readOnly fontFamily="mono" fontSize="sm" lineHeight="1.6" h="auto" py="2" />
        </Clipboard.Input>
      </InputGroup>
    </Clipboard.Root>
  )
}

function RoleSelect({ value, onChange, label }: { value: Role; onChange: (r: Role) => void; label: string }) {
  return (
    <Field.Root>
      <Field.Label>{label}</Field.Label>
      <NativeSelect.Root>
        <NativeSelect.Field value={value} onChange={(e) => onChange(e.target.value as Role)}>
          {ROLES.map((r) => (
            <option key={r} value={r}>
              {r}
            </option>
          ))}
        </NativeSelect.Field>
        <NativeSelect.Indicator />
      </NativeSelect.Root>
    </Field.Root>
  )
}

// --- users -------------------------------------------------------------------

function Users() {
  const users = useQuery({ queryKey: adminKeys.users, queryFn: ({ signal }) => fetchUsers(signal) })
  return (
    <Stack gap="4" pt="4">
      <Text color="fg.muted">
        viewer: reads and follows; operator: also runs deployments; admin: also manages users, invites, tokens and sessions.
      </Text>
      <ErrorAlert error={users.error} title="Users could not be loaded" />
      {users.isPending && <Skeleton height="24" />}
      {users.data && (
        <Box bg="bg" borderWidth="1px" borderRadius="md">
          <Table.ScrollArea>
            <Table.Root size="sm" aria-label="Users">
              <Table.Header>
                <Table.Row>
                  <Table.ColumnHeader>User</Table.ColumnHeader>
                  <Table.ColumnHeader>Roles</Table.ColumnHeader>
                  <Table.ColumnHeader />
                </Table.Row>
              </Table.Header>
              <Table.Body>
                {users.data.map((u) => (
                  <UserRow key={u.id} user={u} />
                ))}
              </Table.Body>
            </Table.Root>
          </Table.ScrollArea>
        </Box>
      )}
    </Stack>
  )
}

/** A risky change to an account, asked about first. */
interface AccountAction {
  title: string
  confirmLabel: string
  danger: boolean
  text: string
  run: () => Promise<unknown>
  /** The toast once it is done. */
  done: string
}

const nameOf = (user: AdminUser) => user.display_name || user.username

const disableAction = (user: AdminUser): AccountAction => ({
  title: `Disable ${nameOf(user)}?`,
  confirmLabel: 'Disable',
  danger: true,
  text: `${user.username} is signed out everywhere and cannot sign in or act until an admin enables the account again. Their API tokens are not affected.`,
  run: () => disableUser(user.id),
  done: `${user.username} disabled`,
})

const enableAction = (user: AdminUser): AccountAction => ({
  title: `Enable ${nameOf(user)}?`,
  confirmLabel: 'Enable',
  danger: false,
  text: `${user.username} can sign in again with their passkeys, with the roles shown here.`,
  run: () => enableUser(user.id),
  done: `${user.username} enabled`,
})

const removePasskeyAction = (user: AdminUser, key: Passkey): AccountAction => ({
  title: `Remove a passkey of ${nameOf(user)}?`,
  confirmLabel: 'Remove passkey',
  danger: true,
  text: `That passkey can no longer sign in as ${user.username} (passkey ${key.credential_id.slice(0, 10)}…). Their other passkeys keep working.`,
  run: () => removePasskey(user.id, key.credential_id),
  done: `Passkey of ${user.username} removed`,
})

function UserRow({ user }: { user: AdminUser }) {
  const qc = useQueryClient()
  const me = useAuth().user
  const live = user.roles ?? []
  // What the person toggled, on top of the live roles: a change made elsewhere
  // shows at once and is never reverted by a Save of an older copy.
  const [edit, setEdit] = useState<RoleEdit | null>(null)
  const [confirm, setConfirm] = useState<AccountAction | null>(null)
  const roles = editedRoles(live, edit)
  // The edit as it applies to the live roles now (null: nothing left to change);
  // that is what a Save sends.
  const pending = edit && rebaseEdit(edit, live)
  const changed = pending !== null
  // The live roles changed while this row was being edited: the row shows them
  // with the edit on top.
  const changedElsewhere = pending !== null && edit !== null && !sameRoles(edit.base, live)
  const refresh = () => qc.invalidateQueries({ queryKey: adminKeys.users })
  const save = useMutation({
    mutationFn: (e: RoleEdit) =>
      saveRoleEdit(user, e, {
        currentRoles: async (id) => (await fetchUsers()).find((u) => u.id === id)?.roles,
        setRoles,
      }),
    onSuccess: () => {
      toaster.create({ type: 'success', title: `Roles of ${user.username} saved` })
      setEdit(null)
      void refresh()
    },
    onError: (e) => {
      if (e instanceof RolesChangedError) {
        // Keep the person's change, now based on the roles as they are.
        setEdit((cur) => (cur ? rebaseEdit(cur, e.now) : cur))
        void refresh()
      }
    },
  })
  const disabled = Boolean(user.disabled_at)
  const name = nameOf(user)
  const passkeys = user.passkeys
  return (
    <Table.Row data-testid={`user-${user.username}`} opacity={disabled ? 0.75 : undefined}>
      <Table.Cell>
        <Text fontWeight="medium">{name}</Text>
        <Text fontSize="sm" color="fg.muted">
          {user.username}
          {user.id === me.id && ' (you)'}
        </Text>
        {disabled && (
          <Badge colorPalette="red" mt="1">
            Disabled {user.disabled_at && <Time iso={user.disabled_at} />}
          </Badge>
        )}
        {passkeys && (
          <Stack as="ul" listStyleType="none" gap="1" mt="2" aria-label={`Passkeys of ${user.username}`}>
            {passkeys.length === 0 && (
              <Text as="li" fontSize="xs" color="fg.muted">
                No passkeys
              </Text>
            )}
            {passkeys.map((k) => (
              <HStack as="li" key={k.credential_id} gap="2" fontSize="xs" color="fg.muted" wrap="wrap">
                <Text as="span" fontFamily="mono" title={k.credential_id}>
                  Passkey {k.credential_id.slice(0, 10)}…
                </Text>
                {k.created_at && (
                  <Text as="span">
                    added <Time iso={k.created_at} />
                  </Text>
                )}
                <Text as="span">{k.last_used_at ? <>used <Time iso={k.last_used_at} /></> : 'never used'}</Text>
                <Button
                  size="2xs"
                  variant="ghost"
                  colorPalette="red"
                  onClick={() => setConfirm(removePasskeyAction(user, k))}
                  aria-label={`Remove passkey ${k.credential_id.slice(0, 10)} of ${user.username}`}
                >
                  Remove
                </Button>
              </HStack>
            ))}
          </Stack>
        )}
      </Table.Cell>
      <Table.Cell>
        <HStack as="fieldset" gap="4" wrap="wrap" aria-label={`Roles of ${user.username}`}>
          {ROLES.map((r) => (
            <Checkbox.Root key={r} checked={roles.includes(r)} onCheckedChange={(d) => setEdit((cur) => toggleRole(live, cur, r, d.checked === true))}>
              <Checkbox.HiddenInput />
              <Checkbox.Control />
              <Checkbox.Label>{r}</Checkbox.Label>
            </Checkbox.Root>
          ))}
        </HStack>
        {changedElsewhere && !save.error && (
          <Text color="fg.warning" fontSize="sm" role="status">
            Someone else changed these roles while you were editing: the boxes show their change with yours on top.
          </Text>
        )}
        {save.error != null && (
          <Text color="fg.error" fontSize="sm" role="alert">
            {errorMessage(save.error)}
          </Text>
        )}
      </Table.Cell>
      <Table.Cell>
        <HStack gap="2" wrap="wrap">
          <Button
            size="xs"
            onClick={() => pending && save.mutate(pending)}
            disabled={!changed || save.isPending}
            loading={save.isPending}
            aria-label={`Save roles of ${user.username}`}
          >
            Save
          </Button>
          {'disabled_at' in user && (
            <Button
              size="xs"
              variant="outline"
              colorPalette={disabled ? undefined : 'red'}
              onClick={() => setConfirm(disabled ? enableAction(user) : disableAction(user))}
              aria-label={`${disabled ? 'Enable' : 'Disable'} ${user.username}`}
            >
              {disabled ? 'Enable' : 'Disable'}
            </Button>
          )}
        </HStack>
        {confirm && (
          <ConfirmDialog
            open
            title={confirm.title}
            confirmLabel={confirm.confirmLabel}
            danger={confirm.danger}
            onConfirm={async () => {
              await confirm.run()
              toaster.create({ type: 'success', title: confirm.done })
              await refresh()
            }}
            onClose={() => setConfirm(null)}
          >
            {confirm.text}
          </ConfirmDialog>
        )}
      </Table.Cell>
    </Table.Row>
  )
}

// --- invites -----------------------------------------------------------------

function Invites() {
  const qc = useQueryClient()
  const [role, setRole] = useState<Role>('operator')
  const [made, setMade] = useState<Invite[]>([])
  // Refreshed by the live UserRegistered (an invite used) and whenever the tab comes back into view.
  const invites = useQuery({
    queryKey: adminKeys.invites,
    queryFn: ({ signal }) => fetchInvites(signal),
    refetchOnWindowFocus: 'always',
  })
  const create = useMutation({
    mutationFn: () => createInvite(role),
    onSuccess: (inv) => {
      setMade((m) => [inv, ...m])
      void qc.invalidateQueries({ queryKey: adminKeys.invites })
    },
  })
  const submit = (ev: FormEvent) => {
    ev.preventDefault()
    create.mutate()
  }
  return (
    <Stack gap="4" pt="4">
      <form onSubmit={submit} aria-label="Create an invite">
        <HStack align="end" gap="3" wrap="wrap">
          <Box minW="40">
            <RoleSelect label="Role of the new account" value={role} onChange={setRole} />
          </Box>
          <Button type="submit" loading={create.isPending}>
            Create invite
          </Button>
        </HStack>
      </form>
      <ErrorAlert error={create.error} />
      {made.map((inv) => (
        <Card.Root key={inv.code} size="sm">
          <Card.Body>
            <Stack gap="2">
              <Text>
                Invite for a new <Badge>{inv.role}</Badge>, valid until <Time iso={inv.expires_at} absolute />. Send this link to the
                person; it can be used once.
              </Text>
              <CopyField label="Invite link" value={inviteLink(inv)} />
              <Text fontSize="sm" color="fg.muted">
                Code: <code>{inv.code}</code>
              </Text>
            </Stack>
          </Card.Body>
        </Card.Root>
      ))}
      <ErrorAlert error={invites.error} title="Invites could not be loaded" />
      {invites.data && invites.data.length > 0 && (
        <Box bg="bg" borderWidth="1px" borderRadius="md">
          <Table.ScrollArea>
            <Table.Root size="sm" aria-label="Invites">
              <Table.Header>
                <Table.Row>
                  <Table.ColumnHeader>Role</Table.ColumnHeader>
                  <Table.ColumnHeader hideBelow="md">Created</Table.ColumnHeader>
                  <Table.ColumnHeader>Expires</Table.ColumnHeader>
                  <Table.ColumnHeader>State</Table.ColumnHeader>
                </Table.Row>
              </Table.Header>
              <Table.Body>
                {invites.data.map((i) => {
                  const expired = Date.parse(i.expires_at) < Date.now()
                  return (
                    <Table.Row key={i.id}>
                      <Table.Cell>{i.role}</Table.Cell>
                      <Table.Cell hideBelow="md">
                        <Time iso={i.created_at} />
                        {i.created_by && ` by ${i.created_by.name}`}
                      </Table.Cell>
                      <Table.Cell>
                        <Time iso={i.expires_at} />
                      </Table.Cell>
                      <Table.Cell>
                        {i.used_by ? (
                          <Badge colorPalette="green">Used</Badge>
                        ) : expired ? (
                          <Badge colorPalette="gray">Expired</Badge>
                        ) : (
                          <Badge colorPalette="blue">Open</Badge>
                        )}
                      </Table.Cell>
                    </Table.Row>
                  )
                })}
              </Table.Body>
            </Table.Root>
          </Table.ScrollArea>
        </Box>
      )}
    </Stack>
  )
}

// --- tokens ------------------------------------------------------------------

function Tokens() {
  const qc = useQueryClient()
  const tokens = useQuery({ queryKey: adminKeys.tokens, queryFn: ({ signal }) => fetchTokens(signal) })
  const [name, setName] = useState('')
  const [role, setRole] = useState<Role>('operator')
  const [fresh, setFresh] = useState<NewToken | null>(null)
  const create = useMutation({
    mutationFn: () => createToken(name.trim(), role),
    onSuccess: (t) => {
      setFresh(t)
      setName('')
      void qc.invalidateQueries({ queryKey: adminKeys.tokens })
    },
  })
  const revoke = useMutation({
    mutationFn: (id: string) => revokeToken(id),
    onSuccess: () => {
      toaster.create({ type: 'success', title: 'Token revoked' })
      void qc.invalidateQueries({ queryKey: adminKeys.tokens })
    },
    onError: (e) => toaster.create({ type: 'error', title: 'Could not revoke the token', description: errorMessage(e) }),
  })
  const submit = (ev: FormEvent) => {
    ev.preventDefault()
    if (name.trim()) create.mutate()
  }
  return (
    <Stack gap="4" pt="4">
      <form onSubmit={submit} aria-label="Create an API token">
        <SimpleGrid columns={{ base: 1, sm: 3 }} gap="3" alignItems="end">
          <Field.Root required>
            <Field.Label>
              Name <Field.RequiredIndicator />
            </Field.Label>
            <Input value={name} onChange={(e) => setName(e.target.value)} placeholder="ci-deployer" maxLength={100} />
          </Field.Root>
          <RoleSelect label="Role" value={role} onChange={setRole} />
          <Button type="submit" loading={create.isPending} disabled={!name.trim()}>
            Create token
          </Button>
        </SimpleGrid>
      </form>
      <ErrorAlert error={create.error} />
      {fresh && (
        <Alert.Root status="warning" role="status">
          <Alert.Indicator />
          <Alert.Content gap="2">
            <Alert.Title>Copy the token now: it is shown only this once</Alert.Title>
            <Alert.Description>
              <Stack gap="2">
                <CopyField label="New token" value={fresh.token} />
                <Text fontSize="sm">Use it as <code>Authorization: Bearer …</code>. herald keeps only its hash.</Text>
                <Button size="xs" variant="outline" alignSelf="start" onClick={() => setFresh(null)}>
                  I have copied it
                </Button>
              </Stack>
            </Alert.Description>
          </Alert.Content>
        </Alert.Root>
      )}
      <ErrorAlert error={tokens.error} title="Tokens could not be loaded" />
      {tokens.isPending && <Skeleton height="24" />}
      {tokens.data && (
        <Box bg="bg" borderWidth="1px" borderRadius="md">
          <Table.ScrollArea>
            <Table.Root size="sm" aria-label="API tokens">
              <Table.Header>
                <Table.Row>
                  <Table.ColumnHeader>Name</Table.ColumnHeader>
                  <Table.ColumnHeader>Role</Table.ColumnHeader>
                  <Table.ColumnHeader hideBelow="md">Created</Table.ColumnHeader>
                  <Table.ColumnHeader>State</Table.ColumnHeader>
                  <Table.ColumnHeader />
                </Table.Row>
              </Table.Header>
              <Table.Body>
                {tokens.data.map((t) => (
                  <Table.Row key={t.id}>
                    <Table.Cell fontWeight="medium">{t.name}</Table.Cell>
                    <Table.Cell>{t.role}</Table.Cell>
                    <Table.Cell hideBelow="md">
                      <Time iso={t.created_at} />
                      {t.created_by && ` by ${t.created_by.name}`}
                    </Table.Cell>
                    <Table.Cell>{t.revoked_at ? <Badge colorPalette="gray">Revoked</Badge> : <Badge colorPalette="green">Active</Badge>}</Table.Cell>
                    <Table.Cell>
                      {!t.revoked_at && (
                        <Button
                          size="xs"
                          variant="outline"
                          colorPalette="red"
                          loading={revoke.isPending && revoke.variables === t.id}
                          onClick={() => {
                            if (window.confirm(`Revoke the token “${t.name}”? Anything using it stops working at once.`)) revoke.mutate(t.id)
                          }}
                          aria-label={`Revoke token ${t.name}`}
                        >
                          Revoke
                        </Button>
                      )}
                    </Table.Cell>
                  </Table.Row>
                ))}
              </Table.Body>
            </Table.Root>
          </Table.ScrollArea>
          {tokens.data.length === 0 && (
            <Text p="4" color="fg.muted">
              No API tokens yet.
            </Text>
          )}
        </Box>
      )}
    </Stack>
  )
}

// --- sessions ----------------------------------------------------------------

function sessionUser(s: Session): string {
  return s.user?.display_name || s.user?.username || s.username || s.user_id || '—'
}

function Sessions() {
  const qc = useQueryClient()
  const sessions = useQuery({ queryKey: adminKeys.sessions, queryFn: ({ signal }) => fetchSessions(signal) })
  const revoke = useMutation({
    mutationFn: (id: string) => revokeSession(id),
    onSuccess: () => {
      toaster.create({ type: 'success', title: 'Session ended' })
      void qc.invalidateQueries({ queryKey: adminKeys.sessions })
    },
    onError: (e) => toaster.create({ type: 'error', title: 'Could not end the session', description: errorMessage(e) }),
  })
  return (
    <Stack gap="4" pt="4">
      <ErrorAlert error={sessions.error} title="Sessions could not be loaded" />
      {sessions.isPending && <Skeleton height="24" />}
      {sessions.data && (
        <Box bg="bg" borderWidth="1px" borderRadius="md">
          <Table.ScrollArea>
            <Table.Root size="sm" aria-label="Sessions">
              <Table.Header>
                <Table.Row>
                  <Table.ColumnHeader>User</Table.ColumnHeader>
                  <Table.ColumnHeader hideBelow="md">Signed in</Table.ColumnHeader>
                  <Table.ColumnHeader hideBelow="md">Last seen</Table.ColumnHeader>
                  <Table.ColumnHeader hideBelow="lg">Expires</Table.ColumnHeader>
                  <Table.ColumnHeader />
                </Table.Row>
              </Table.Header>
              <Table.Body>
                {sessions.data.map((s) => (
                  <Table.Row key={s.id}>
                    <Table.Cell>
                      {sessionUser(s)}
                      {s.current && (
                        <Badge ms="2" colorPalette="blue">
                          this session
                        </Badge>
                      )}
                      {s.user_agent && (
                        <Text fontSize="xs" color="fg.muted" lineClamp={1}>
                          {s.user_agent}
                        </Text>
                      )}
                    </Table.Cell>
                    <Table.Cell hideBelow="md">{s.created_at ? <Time iso={s.created_at} /> : '—'}</Table.Cell>
                    <Table.Cell hideBelow="md">{s.last_seen_at ? <Time iso={s.last_seen_at} /> : '—'}</Table.Cell>
                    <Table.Cell hideBelow="lg">{s.expires_at ? <Time iso={s.expires_at} absolute /> : '—'}</Table.Cell>
                    <Table.Cell>
                      <Button
                        size="xs"
                        variant="outline"
                        colorPalette="red"
                        loading={revoke.isPending && revoke.variables === s.id}
                        onClick={() => {
                          if (window.confirm(`End this session of ${sessionUser(s)}? They will have to sign in again.`)) revoke.mutate(s.id)
                        }}
                        aria-label={`End the session of ${sessionUser(s)}`}
                      >
                        End session
                      </Button>
                    </Table.Cell>
                  </Table.Row>
                ))}
              </Table.Body>
            </Table.Root>
          </Table.ScrollArea>
          {sessions.data.length === 0 && (
            <Text p="4" color="fg.muted">
              No open sessions.
            </Text>
          )}
        </Box>
      )}
    </Stack>
  )
}
