import { Button, Card, Field, Heading, Input, SimpleGrid, Stack } from '@chakra-ui/react'
import { useMutation } from '@tanstack/react-query'
import { useState, type FormEvent } from 'react'
import { LuRocket } from 'react-icons/lu'
import { ErrorAlert } from '../../components/ErrorAlert'
import { toaster } from '../../components/ui/toaster'
import { OnceCommand } from '../../lib/once'
import { sendDeploymentCommand, type CommandResult } from './api'

/**
 * StartDeployment: a new stream (`expected_version: 0`). Its aggregate id and
 * command id are made once per filled-in form, so a double click or a retry is
 * the same command; the form clears after success and the next one gets new ids.
 */
export function StartForm() {
  const [service, setService] = useState('')
  const [version, setVersion] = useState('')
  const [environment, setEnvironment] = useState('')
  const [once] = useState(() => new OnceCommand<CommandResult>())

  const mutation = useMutation({
    mutationFn: (data: { service: string; version?: string; environment?: string }) =>
      once.submit((ids) => sendDeploymentCommand(ids.aggregateId, { type: 'StartDeployment', data }, 0, ids.commandId)),
    onSuccess: (_r, data) => {
      toaster.create({ type: 'success', title: 'Deployment started', description: data.service })
      setService('')
      setVersion('')
      setEnvironment('')
    },
  })

  const edit = (set: (v: string) => void) => (v: string) => {
    // Different fields are a different command.
    once.renew()
    set(v)
  }

  const submit = (ev: FormEvent) => {
    ev.preventDefault()
    if (!service.trim() || once.pending) return
    mutation.mutate({
      service: service.trim(),
      ...(version.trim() ? { version: version.trim() } : {}),
      ...(environment.trim() ? { environment: environment.trim() } : {}),
    })
  }

  return (
    <Card.Root size="sm">
      <Card.Body>
        <form onSubmit={submit} aria-labelledby="start-heading">
          <Stack gap="3">
            <Heading as="h2" size="md" id="start-heading">
              Start a deployment
            </Heading>
            <SimpleGrid columns={{ base: 1, sm: 2, lg: 4 }} gap="3" alignItems="end">
              <Field.Root required>
                <Field.Label>
                  Service <Field.RequiredIndicator />
                </Field.Label>
                <Input value={service} onChange={(e) => edit(setService)(e.target.value)} placeholder="user-service" maxLength={200} />
              </Field.Root>
              <Field.Root>
                <Field.Label>Version</Field.Label>
                <Input value={version} onChange={(e) => edit(setVersion)(e.target.value)} placeholder="1.4.2" maxLength={200} />
              </Field.Root>
              <Field.Root>
                <Field.Label>Environment</Field.Label>
                <Input value={environment} onChange={(e) => edit(setEnvironment)(e.target.value)} placeholder="prod" maxLength={200} />
              </Field.Root>
              <Button type="submit" loading={mutation.isPending} disabled={!service.trim() || mutation.isPending}>
                <LuRocket aria-hidden="true" /> Start
              </Button>
            </SimpleGrid>
            <ErrorAlert error={mutation.error} />
          </Stack>
        </form>
      </Card.Body>
    </Card.Root>
  )
}
