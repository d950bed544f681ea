import { Button, Dialog, Portal, Stack, Text } from '@chakra-ui/react'
import { useEffect, useRef, useState, type ReactNode } from 'react'
import { LuFingerprint } from 'react-icons/lu'
import { ErrorAlert } from '../../components/ErrorAlert'
import { setReauthHandler } from '../../lib/api'
import { useLiveReconnect } from '../../live/LiveProvider'
import { loginWithPasskey } from './api'

interface Pending {
  resolve: () => void
  reject: (e: Error) => void
}

export class StepUpCancelled extends Error {
  constructor() {
    super('Not done: it needs you to confirm with your passkey, and that was cancelled.')
    this.name = 'StepUpCancelled'
  }
}

/**
 * When a command answers 403 `reauth_required`, asks the person to confirm with
 * their passkey (a click, so the browser allows the WebAuthn prompt), runs the
 * login ceremony for the current username, and lets the client retry once.
 */
export function StepUpProvider({ username, children }: { username: string; children: ReactNode }) {
  const [pending, setPending] = useState<Pending | null>(null)
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<unknown>(null)
  const pendingRef = useRef<Pending | null>(null)
  const reconnectLive = useLiveReconnect()

  useEffect(() => {
    setReauthHandler(
      () =>
        new Promise<void>((resolve, reject) => {
          const p = { resolve, reject }
          pendingRef.current = p
          setError(null)
          setPending(p)
        }),
    )
    return () => setReauthHandler(null)
  }, [])

  const close = (ok: boolean) => {
    const p = pendingRef.current
    pendingRef.current = null
    setPending(null)
    if (!p) return
    if (ok) p.resolve()
    else p.reject(new StepUpCancelled())
  }

  const confirm = async () => {
    setBusy(true)
    setError(null)
    try {
      await loginWithPasskey(username)
      // herald may have issued a new session id (cookie) and ended the old
      // session's live streams: resume on the new one now, without a drop.
      reconnectLive()
      close(true)
    } catch (e) {
      setError(e)
    } finally {
      setBusy(false)
    }
  }

  return (
    <>
      {children}
      <Dialog.Root
        open={pending !== null}
        onOpenChange={(d) => {
          if (!d.open) close(false)
        }}
        role="alertdialog"
      >
        <Portal>
          <Dialog.Backdrop />
          <Dialog.Positioner>
            <Dialog.Content>
              <Dialog.Header>
                <Dialog.Title>Confirm it is you</Dialog.Title>
              </Dialog.Header>
              <Dialog.Body>
                <Stack gap="3">
                  <Text>
                    This action needs a recent passkey check. Confirm with your passkey as <b>{username}</b> and it
                    will go ahead.
                  </Text>
                  <ErrorAlert error={error} />
                </Stack>
              </Dialog.Body>
              <Dialog.Footer>
                <Button variant="outline" onClick={() => close(false)} disabled={busy}>
                  Cancel
                </Button>
                <Button onClick={confirm} loading={busy} loadingText="Waiting for passkey…">
                  <LuFingerprint aria-hidden="true" /> Confirm with passkey
                </Button>
              </Dialog.Footer>
            </Dialog.Content>
          </Dialog.Positioner>
        </Portal>
      </Dialog.Root>
    </>
  )
}
