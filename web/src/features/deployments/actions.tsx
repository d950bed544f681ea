import { Alert, Button, Dialog, Field, HStack, Input, Portal, Stack, Text, Textarea } from '@chakra-ui/react'
import { useMutation } from '@tanstack/react-query'
import { useRef, useState, type FormEvent } from 'react'
import { LuBan, LuCircleCheck, LuCircleX, LuGauge } from 'react-icons/lu'
import { ErrorAlert } from '../../components/ErrorAlert'
import { toaster } from '../../components/ui/toaster'
import { ApiError } from '../../lib/api'
import { OnceCommand } from '../../lib/once'
import { sendDeploymentCommand, type CommandResult } from './api'
import { deploymentName } from './components'
import { STATUS_LABEL, type Deployment, type DeploymentCommand } from './types'

type Action = 'progress' | 'succeed' | 'fail' | 'cancel'

const TITLES: Record<Action, string> = {
  progress: 'Report progress',
  succeed: 'Mark as succeeded',
  fail: 'Mark as failed',
  cancel: 'Cancel the deployment',
}
const DONE: Record<Action, string> = {
  progress: 'Progress reported',
  succeed: 'Marked as succeeded',
  fail: 'Marked as failed',
  cancel: 'Deployment cancelled',
}

/** The operator's buttons for one deployment in progress. */
export function DeploymentActions({ deployment, size = 'xs' }: { deployment: Deployment; size?: 'xs' | 'sm' }) {
  const [open, setOpen] = useState<Action | null>(null)
  const name = deploymentName(deployment)
  // The dialog stays open (with what was typed) when the deployment changes or
  // finishes underneath it; only the buttons go.
  if (deployment.status !== 'in_progress' && !open) return null
  return (
    <>
      {deployment.status === 'in_progress' && (
      <HStack gap="1" wrap="wrap" role="group" aria-label={`Actions for ${name}`}>
        <Button size={size} variant="outline" onClick={() => setOpen('progress')} aria-label={`Report progress of ${name}`}>
          <LuGauge aria-hidden="true" /> Progress
        </Button>
        <Button size={size} variant="outline" colorPalette="green" onClick={() => setOpen('succeed')} aria-label={`Mark ${name} as succeeded`}>
          <LuCircleCheck aria-hidden="true" /> Succeed
        </Button>
        <Button size={size} variant="outline" colorPalette="red" onClick={() => setOpen('fail')} aria-label={`Mark ${name} as failed`}>
          <LuCircleX aria-hidden="true" /> Fail
        </Button>
        <Button size={size} variant="ghost" onClick={() => setOpen('cancel')} aria-label={`Cancel ${name}`}>
          <LuBan aria-hidden="true" /> Cancel
        </Button>
      </HStack>
      )}
      {open && <ActionDialog action={open} deployment={deployment} onClose={() => setOpen(null)} />}
    </>
  )
}

function ActionDialog({ action, deployment, onClose }: { action: Action; deployment: Deployment; onClose: () => void }) {
  const [percent, setPercent] = useState(String(Math.min(100, deployment.progress + 10)))
  const [text, setText] = useState('')
  const name = deploymentName(deployment)
  // The version the person looked at when they opened the dialog: a change
  // since then answers 409, shown here; after it, a retry is against the latest.
  const [baseVersion, setBaseVersion] = useState(deployment.stream_version)
  const latest = useRef(deployment)
  latest.current = deployment
  // One dialog, one command: a double click or a retry is the same command_id.
  const [once] = useState(() => new OnceCommand<CommandResult>())
  const changed = deployment.stream_version !== baseVersion

  const mutation = useMutation({
    mutationFn: () => {
      const t = text.trim()
      let command: DeploymentCommand
      switch (action) {
        case 'progress':
          command = { type: 'ReportDeploymentProgress', data: { percent: Number(percent), ...(t ? { message: t } : {}) } }
          break
        case 'succeed':
          command = { type: 'SucceedDeployment' }
          break
        case 'fail':
          command = { type: 'FailDeployment', data: { reason: t } }
          break
        case 'cancel':
          command = { type: 'CancelDeployment', data: t ? { reason: t } : {} }
          break
      }
      // Against the version shown: if someone changed it meanwhile, 409 says so.
      return once.submit((ids) => sendDeploymentCommand(deployment.id, command, baseVersion, ids.commandId))
    },
    onError: (e) => {
      if (e instanceof ApiError && e.status === 409) {
        // Seen now: the next try is a new command against the latest version.
        setBaseVersion(latest.current.stream_version)
        once.renew()
      }
    },
    onSuccess: () => {
      toaster.create({ type: 'success', title: DONE[action], description: name })
      onClose()
    },
  })

  const pct = Number(percent)
  const percentInvalid = action === 'progress' && (!Number.isInteger(pct) || pct < 0 || pct > 100 || percent.trim() === '')
  const reasonMissing = action === 'fail' && text.trim() === ''

  const submit = (ev: FormEvent) => {
    ev.preventDefault()
    if (percentInvalid || reasonMissing || once.pending) return
    mutation.mutate()
  }

  return (
    <Dialog.Root open onOpenChange={(d) => !d.open && onClose()} placement="center">
      <Portal>
        <Dialog.Backdrop />
        <Dialog.Positioner>
          <Dialog.Content>
            <form onSubmit={submit}>
            <Dialog.Header>
              <Dialog.Title>{TITLES[action]}</Dialog.Title>
            </Dialog.Header>
            <Dialog.Body>
              <Stack gap="4">
                <Text color="fg.muted">{name}</Text>
                {changed && (
                  <Alert.Root status="info" size="sm" role="status">
                    <Alert.Indicator />
                    <Alert.Description>
                      This deployment changed while this dialog was open: it is now{' '}
                      {deployment.status === 'in_progress'
                        ? `at ${deployment.progress}%${deployment.message ? ` (${deployment.message})` : ''}`
                        : STATUS_LABEL[deployment.status].toLowerCase()}
                      .
                    </Alert.Description>
                  </Alert.Root>
                )}
                {action === 'progress' && (
                  <Field.Root required invalid={percentInvalid}>
                    <Field.Label>
                      Percent done <Field.RequiredIndicator />
                    </Field.Label>
                    <Input
                      type="number"
                      inputMode="numeric"
                      min={0}
                      max={100}
                      step={1}
                      value={percent}
                      onChange={(e) => {
                        once.renew()
                        setPercent(e.target.value)
                      }}
                    />
                    <Field.ErrorText>A whole number from 0 to 100.</Field.ErrorText>
                  </Field.Root>
                )}
                {action !== 'succeed' && (
                  <Field.Root required={action === 'fail'} invalid={reasonMissing && mutation.isError}>
                    <Field.Label>
                      {action === 'progress' ? 'Message' : 'Reason'} {action === 'fail' && <Field.RequiredIndicator />}
                    </Field.Label>
                    <Textarea
                      value={text}
                      onChange={(e) => {
                        once.renew()
                        setText(e.target.value)
                      }}
                      rows={3}
                      maxLength={2000}
                    />
                    {action === 'fail' && <Field.HelperText>Say what went wrong; it goes in the log.</Field.HelperText>}
                  </Field.Root>
                )}
                {action === 'succeed' && <Text>The deployment will be marked as succeeded at 100%.</Text>}
                <ErrorAlert error={mutation.error} />
              </Stack>
            </Dialog.Body>
            <Dialog.Footer>
              <Button variant="outline" onClick={onClose} type="button">
                Close
              </Button>
              <Button
                type="submit"
                loading={mutation.isPending}
                disabled={percentInvalid || reasonMissing || mutation.isPending}
                colorPalette={action === 'fail' ? 'red' : action === 'succeed' ? 'green' : undefined}
              >
                {TITLES[action]}
              </Button>
            </Dialog.Footer>
            </form>
          </Dialog.Content>
        </Dialog.Positioner>
      </Portal>
    </Dialog.Root>
  )
}
