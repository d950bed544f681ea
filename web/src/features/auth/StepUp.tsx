import { Text } from '@chakra-ui/react'
import { useEffect, useRef, useState, type ReactNode } from 'react'
import { LuFingerprint } from 'react-icons/lu'
import { ConfirmDialog } from '../../components/ConfirmDialog'
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
  const [open, setOpen] = useState(false)
  const pendingRef = useRef<Pending | null>(null)
  const reconnectLive = useLiveReconnect()

  useEffect(() => {
    setReauthHandler(
      () =>
        new Promise<void>((resolve, reject) => {
          pendingRef.current = { resolve, reject }
          setOpen(true)
        }),
    )
    return () => setReauthHandler(null)
  }, [])

  /** Lets the waiting request go on (`ok`) or fail with `StepUpCancelled`. */
  const settle = (ok: boolean) => {
    const p = pendingRef.current
    pendingRef.current = null
    if (!p) return
    if (ok) p.resolve()
    else p.reject(new StepUpCancelled())
  }

  return (
    <>
      {children}
      <ConfirmDialog
        open={open}
        title="Confirm it is you"
        confirmLabel={
          <>
            <LuFingerprint aria-hidden="true" /> Confirm with passkey
          </>
        }
        cancelLabel="Cancel"
        busyText="Waiting for passkey…"
        onConfirm={async () => {
          await loginWithPasskey(username)
          // herald may have issued a new session id (cookie) and ended the old
          // session's live streams: resume on the new one now, without a drop.
          reconnectLive()
          settle(true)
        }}
        onClose={() => {
          // After a confirm this is a no-op; otherwise it is a cancel.
          settle(false)
          setOpen(false)
        }}
      >
        <Text>
          This action needs a recent passkey check. Confirm with your passkey as <b>{username}</b> and it will go ahead.
        </Text>
      </ConfirmDialog>
    </>
  )
}
