import { Button, Card, Field, Heading, Input, SimpleGrid, Stack } from '@chakra-ui/react'
import { useMutation } from '@tanstack/react-query'
import { useState, type FormEvent } from 'react'
import { LuRocket } from 'react-icons/lu'
import { ErrorAlert } from '../../components/ErrorAlert'
import { toaster } from '../../components/ui/toaster'
import { newId } from '../../lib/api'
import { sendDeploymentCommand } from './api'

/** StartDeployment: a new stream (`expected_version: 0`) with a fresh id. */
export function StartForm() {
  const [service, setService] = useState('')
  const [version, setVersion] = useState('')
  const [environment, setEnvironment] = useState('')

  const mutation = useMutation({
    mutationFn: () =>
      sendDeploymentCommand(
        newId(),
        {
          type: 'StartDeployment',
          data: {
            service: service.trim(),
            ...(version.trim() ? { version: version.trim() } : {}),
            ...(environment.trim() ? { environment: environment.trim() } : {}),
          },
        },
        0,
      ),
    onSuccess: () => {
      toaster.create({ type: 'success', title: 'Deployment started', description: service.trim() })
      setVersion('')
    },
  })

  const submit = (ev: FormEvent) => {
    ev.preventDefault()
    if (!service.trim()) return
    mutation.mutate()
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
                <Input value={service} onChange={(e) => setService(e.target.value)} placeholder="user-service" maxLength={200} />
              </Field.Root>
              <Field.Root>
                <Field.Label>Version</Field.Label>
                <Input value={version} onChange={(e) => setVersion(e.target.value)} placeholder="1.4.2" maxLength={200} />
              </Field.Root>
              <Field.Root>
                <Field.Label>Environment</Field.Label>
                <Input value={environment} onChange={(e) => setEnvironment(e.target.value)} placeholder="prod" maxLength={200} />
              </Field.Root>
              <Button type="submit" loading={mutation.isPending} disabled={!service.trim()}>
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
