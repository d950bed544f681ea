import { Button, Dialog, Portal, Stack, Text } from '@chakra-ui/react'
import { useState, type ReactNode } from 'react'
import { ErrorAlert } from './ErrorAlert'

/**
 * "Are you sure?" for a risky action: runs `onConfirm` (step-up included, via
 * the API client), stays open with herald's answer when it is refused (a 422's
 * title and detail), and closes when it is done.
 */
export function ConfirmDialog({
  open,
  title,
  children,
  confirmLabel,
  cancelLabel = 'Close',
  busyText,
  danger = false,
  onConfirm,
  onClose,
}: {
  open: boolean
  title: string
  children: ReactNode
  confirmLabel: ReactNode
  cancelLabel?: string
  /** What the confirm button says while `onConfirm` runs. */
  busyText?: string
  danger?: boolean
  onConfirm: () => Promise<unknown>
  onClose: () => void
}) {
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<unknown>(null)
  const close = () => {
    if (busy) return
    setError(null)
    onClose()
  }
  const confirm = async () => {
    if (busy) return
    setBusy(true)
    setError(null)
    try {
      await onConfirm()
      setBusy(false)
      onClose()
    } catch (e) {
      setBusy(false)
      setError(e)
    }
  }
  return (
    <Dialog.Root open={open} onOpenChange={(d) => !d.open && close()} role="alertdialog" placement="center">
      <Portal>
        <Dialog.Backdrop />
        <Dialog.Positioner>
          <Dialog.Content>
            <Dialog.Header>
              <Dialog.Title>{title}</Dialog.Title>
            </Dialog.Header>
            <Dialog.Body>
              <Stack gap="3">
                {typeof children === 'string' ? <Text>{children}</Text> : children}
                <ErrorAlert error={error} />
              </Stack>
            </Dialog.Body>
            <Dialog.Footer>
              <Button variant="outline" onClick={close} disabled={busy}>
                {cancelLabel}
              </Button>
              <Button colorPalette={danger ? 'red' : undefined} onClick={confirm} loading={busy} loadingText={busyText}>
                {confirmLabel}
              </Button>
            </Dialog.Footer>
          </Dialog.Content>
        </Dialog.Positioner>
      </Portal>
    </Dialog.Root>
  )
}
