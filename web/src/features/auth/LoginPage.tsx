import { Box, Button, Card, Center, Container, Field, Heading, Input, Spinner, Stack, Tabs, Text } from '@chakra-ui/react'
import { browserSupportsWebAuthn } from '@simplewebauthn/browser'
import { useQuery, useQueryClient } from '@tanstack/react-query'
import { useState, type FormEvent } from 'react'
import { LuFingerprint, LuKeyRound } from 'react-icons/lu'
import { useLocation, useNavigate, useSearchParams } from 'react-router'
import { ColorModeButton } from '../../components/ui/color-mode'
import { ErrorAlert } from '../../components/ErrorAlert'
import { ApiError } from '../../lib/api'
import { BadSetupCode, fetchSetup, loginWithPasskey, meKey, registerWithPasskey, setupKey } from './api'
import type { Me } from '../../lib/types'

/**
 * Sign in, or create an account (with an invite code from `?invite=`); on a
 * herald that has no admin yet, the first-run "Set up herald" screen instead.
 */
export function LoginPage() {
  const [params] = useSearchParams()
  const { pathname } = useLocation()
  const invite = params.get('invite') ?? ''
  const [tab, setTab] = useState(invite || pathname === '/register' ? 'register' : 'login')
  const supported = typeof window !== 'undefined' && browserSupportsWebAuthn()
  // null: an older herald without the endpoint; an error: show the normal screen too.
  const setup = useQuery({ queryKey: setupKey, queryFn: ({ signal }) => fetchSetup(signal), retry: 1, staleTime: 0 })
  const firstRun = setup.data?.setup_required === true

  return (
    <Container maxW="md" py={{ base: '6', md: '16' }} px="4">
      <Stack gap="6">
        <Stack direction="row" justify="space-between" align="center">
          <Heading as="h1" size="2xl">
            herald
          </Heading>
          <ColorModeButton />
        </Stack>
        <Text color="fg.muted">Deployments and risky changes, done together and on the record.</Text>
        {!supported && (
          <ErrorAlert
            title="Passkeys are not available"
            error={new Error('This browser cannot use passkeys here. Use a current browser, over https or on localhost.')}
          />
        )}
        {setup.isPending ? (
          <Center py="8">
            <Spinner aria-label="Loading" />
          </Center>
        ) : firstRun ? (
          <Card.Root>
            <Card.Body>
              <SetupForm code={invite} />
            </Card.Body>
          </Card.Root>
        ) : (
        <Card.Root>
          <Card.Body>
            <Tabs.Root value={tab} onValueChange={(d) => setTab(d.value)} variant="line" fitted lazyMount unmountOnExit>
              <Tabs.List>
                <Tabs.Trigger value="login">Sign in</Tabs.Trigger>
                <Tabs.Trigger value="register">Create account</Tabs.Trigger>
              </Tabs.List>
              <Tabs.Content value="login" pt="6">
                <LoginForm />
              </Tabs.Content>
              <Tabs.Content value="register" pt="6">
                <RegisterForm invite={invite} />
              </Tabs.Content>
            </Tabs.Root>
          </Card.Body>
        </Card.Root>
        )}
      </Stack>
    </Container>
  )
}

function useSignedIn() {
  const qc = useQueryClient()
  const navigate = useNavigate()
  const [params] = useSearchParams()
  return async () => {
    // The session cookie is set: read who we are, as every later page does.
    await qc.invalidateQueries({ queryKey: meKey })
    const me = qc.getQueryData<Me | null>(meKey)
    if (me) {
      const next = params.get('next')
      navigate(next && next.startsWith('/') && !next.startsWith('//') ? next : '/', { replace: true })
    }
  }
}

/**
 * A form that runs a passkey ceremony and then signs in: `submit(ceremony)`
 * handles the form event, the busy flag and the error (after `toError`).
 */
function useCeremony(toError: (e: unknown) => unknown = (e) => e) {
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<unknown>(null)
  const signedIn = useSignedIn()
  const submit = (ceremony: () => Promise<unknown>) => async (ev: FormEvent) => {
    ev.preventDefault()
    if (busy) return
    setBusy(true)
    setError(null)
    try {
      await ceremony()
      await signedIn()
    } catch (e) {
      setError(toError(e))
    } finally {
      setBusy(false)
    }
  }
  return { busy, error, submit }
}

function LoginForm() {
  const [username, setUsername] = useState('')
  const { busy, error, submit: run } = useCeremony()
  const submit = run(() => loginWithPasskey(username.trim() || undefined))

  return (
    <form onSubmit={submit} aria-label="Sign in">
      <Stack gap="4">
        <Field.Root>
          <Field.Label>Username</Field.Label>
          <Input
            name="username"
            autoComplete="username webauthn"
            value={username}
            onChange={(e) => setUsername(e.target.value)}
          />
          <Field.HelperText>Leave it empty to choose from the passkeys saved on this device.</Field.HelperText>
        </Field.Root>
        <ErrorAlert error={error} />
        <Button type="submit" loading={busy} loadingText="Waiting for passkey…">
          <LuFingerprint aria-hidden="true" /> Sign in with a passkey
        </Button>
      </Stack>
    </form>
  )
}

function RegisterForm({ invite }: { invite: string }) {
  const [username, setUsername] = useState('')
  const [displayName, setDisplayName] = useState('')
  const [code, setCode] = useState(invite)
  const { busy, error, submit: run } = useCeremony()
  const submit = run(() =>
    registerWithPasskey({
      username: username.trim(),
      ...(displayName.trim() ? { display_name: displayName.trim() } : {}),
      ...(code.trim() ? { invite: code.trim() } : {}),
    }),
  )

  return (
    <form onSubmit={submit} aria-label="Create account">
      <Stack gap="4">
        {invite && (
          <Box borderWidth="1px" borderRadius="md" p="3" bg="bg.muted">
            <Text fontSize="sm">You were invited to herald. Choose a username and save a passkey to join.</Text>
          </Box>
        )}
        <Field.Root required>
          <Field.Label>
            Username <Field.RequiredIndicator />
          </Field.Label>
          <Input
            name="username"
            autoComplete="username"
            value={username}
            onChange={(e) => setUsername(e.target.value)}
          />
        </Field.Root>
        <Field.Root>
          <Field.Label>Display name</Field.Label>
          <Input name="display_name" autoComplete="name" value={displayName} onChange={(e) => setDisplayName(e.target.value)} />
        </Field.Root>
        <Field.Root>
          <Field.Label>Invite code</Field.Label>
          <Input name="invite" autoComplete="off" value={code} onChange={(e) => setCode(e.target.value)} />
          <Field.HelperText>From the invite link an admin sent you.</Field.HelperText>
        </Field.Root>
        <ErrorAlert error={error} />
        <Button type="submit" loading={busy} loadingText="Waiting for passkey…" disabled={!username.trim()}>
          <LuKeyRound aria-hidden="true" /> Create account with a passkey
        </Button>
      </Stack>
    </form>
  )
}

/**
 * First run: no admin exists yet. The person proves they run this herald with
 * the one-time setup code `herald serve` printed in its terminal (or one from
 * `herald invite create --role admin`), and registers a passkey as the admin.
 */
function SetupForm({ code: initial }: { code: string }) {
  const qc = useQueryClient()
  const [code, setCode] = useState(initial)
  const [username, setUsername] = useState('')
  const [displayName, setDisplayName] = useState('')
  const { busy, error, submit: run } = useCeremony((e) =>
    e instanceof ApiError && e.status === 403 ? new BadSetupCode(e.problem.detail) : e,
  )
  const submit = run(async () => {
    await registerWithPasskey({
      username: username.trim(),
      ...(displayName.trim() ? { display_name: displayName.trim() } : {}),
      invite: code.trim(),
    })
    void qc.invalidateQueries({ queryKey: setupKey })
  })

  return (
    <form onSubmit={submit} aria-label="Set up herald">
      <Stack gap="4">
        <Heading as="h2" size="lg">
          Set up herald
        </Heading>
        <Text fontSize="sm">
          herald has no admin yet. Enter the one-time setup code that <code>herald serve</code> printed in its terminal
          (or make one with <code>herald invite create --role admin</code>), choose a username, and save a passkey: you
          become the admin.
        </Text>
        <Field.Root required>
          <Field.Label>
            Setup code <Field.RequiredIndicator />
          </Field.Label>
          <Input name="invite" autoComplete="one-time-code" fontFamily="mono" value={code} onChange={(e) => setCode(e.target.value)} />
        </Field.Root>
        <Field.Root required>
          <Field.Label>
            Username <Field.RequiredIndicator />
          </Field.Label>
          <Input name="username" autoComplete="username" value={username} onChange={(e) => setUsername(e.target.value)} />
        </Field.Root>
        <Field.Root>
          <Field.Label>Display name</Field.Label>
          <Input name="display_name" autoComplete="name" value={displayName} onChange={(e) => setDisplayName(e.target.value)} />
        </Field.Root>
        <ErrorAlert error={error} />
        <Button type="submit" loading={busy} loadingText="Waiting for passkey…" disabled={!username.trim() || !code.trim()}>
          <LuKeyRound aria-hidden="true" /> Create the admin account with a passkey
        </Button>
      </Stack>
    </form>
  )
}
