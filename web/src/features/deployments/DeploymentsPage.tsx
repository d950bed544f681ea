import { Box, Button, EmptyState, HStack, Heading, Link as ChakraLink, NativeSelect, Skeleton, Stack, Table, Text } from '@chakra-ui/react'
import { useState } from 'react'
import { LuRocket } from 'react-icons/lu'
import { Link } from 'react-router'
import { ErrorAlert } from '../../components/ErrorAlert'
import { Time } from '../../components/Time'
import { useResource } from '../../live/useResource'
import { useAuth } from '../auth/AuthContext'
import { DeploymentActions } from './actions'
import { DeploymentProgress, StatusBadge } from './components'
import { DEPLOYMENTS_MAX, DEPLOYMENTS_PAGE, deploymentsList, listStream, shownDeployments } from './resource'
import { StartForm } from './StartForm'
import { STATUS_LABEL, type DeploymentStatus } from './types'

export function DeploymentsPage() {
  const { canOperate } = useAuth()
  const [status, setStatus] = useState<DeploymentStatus | ''>('')
  const [limit, setLimit] = useState(DEPLOYMENTS_PAGE)
  // herald filters by status; the stream sends the list, then each change.
  const stream = listStream({ status: status || null, limit })
  // "Load more" keeps the rows on screen while the longer list comes.
  const list = useResource(deploymentsList, stream.url, { keepPrevious: true })
  const { rows, more } = list.state ? shownDeployments(list.state, stream) : { rows: [], more: false }
  const pending = list.state === undefined && !list.error

  return (
    <Stack gap="6">
      <Heading as="h1" size="2xl">
        Deployments
      </Heading>
      {canOperate && <StartForm />}
      <HStack justify="space-between" wrap="wrap" gap="3">
        <Heading as="h2" size="md">
          {status ? STATUS_LABEL[status] : 'All deployments'}
          {list.state && !list.isPlaceholder && (
            <Text as="span" color="fg.muted" fontWeight="normal" fontSize="sm">
              {' '}
              ({more ? `${rows.length}+` : rows.length})
            </Text>
          )}
        </Heading>
        <NativeSelect.Root size="sm" width="auto">
          <NativeSelect.Field
            aria-label="Show deployments with status"
            value={status}
            onChange={(e) => {
              setStatus(e.target.value as DeploymentStatus | '')
              setLimit(DEPLOYMENTS_PAGE)
            }}
          >
            <option value="">Every status</option>
            {Object.entries(STATUS_LABEL).map(([v, label]) => (
              <option key={v} value={v}>
                {label}
              </option>
            ))}
          </NativeSelect.Field>
          <NativeSelect.Indicator />
        </NativeSelect.Root>
      </HStack>
      <ErrorAlert error={list.error} title="The deployments could not be loaded" />
      {pending ? (
        <Stack gap="2" aria-label="Loading deployments">
          <Skeleton height="10" />
          <Skeleton height="10" />
          <Skeleton height="10" />
        </Stack>
      ) : rows.length === 0 ? (
        <EmptyState.Root>
          <EmptyState.Content>
            <EmptyState.Indicator>
              <LuRocket />
            </EmptyState.Indicator>
            <EmptyState.Title>No deployments{status ? ` ${STATUS_LABEL[status].toLowerCase()}` : ''} yet</EmptyState.Title>
            <EmptyState.Description>
              {canOperate ? 'Start one above; everyone watching sees it at once.' : 'They appear here as soon as someone starts one.'}
            </EmptyState.Description>
          </EmptyState.Content>
        </EmptyState.Root>
      ) : (
        <>
        {/* Phones: one card per deployment. */}
        <Stack as="ul" listStyleType="none" gap="3" hideFrom="md" aria-label="Deployments">
          {rows.map((d) => (
            <Box as="li" key={d.id} bg="bg" borderWidth="1px" borderRadius="md" p="3" data-testid={`deployment-card-${d.id}`}>
              <Stack gap="2">
                <HStack justify="space-between" align="start" gap="2">
                  <Box minW="0">
                    <ChakraLink asChild fontWeight="medium" colorPalette="blue" variant="underline">
                      <Link to={`/deployments/${encodeURIComponent(d.id)}`}>{d.service}</Link>
                    </ChakraLink>
                    <Text as="span" color="fg.muted" fontSize="sm">
                      {' '}
                      {[d.version, d.environment && `in ${d.environment}`].filter(Boolean).join(' ')}
                    </Text>
                  </Box>
                  <StatusBadge status={d.status} />
                </HStack>
                <DeploymentProgress deployment={d} />
                {(d.message || d.reason) && (
                  <Text fontSize="sm" color="fg.muted">
                    {d.reason ?? d.message}
                  </Text>
                )}
                <Text fontSize="xs" color="fg.muted">
                  Started by {d.started_by.name} · updated <Time iso={d.updated_at} />
                </Text>
                {canOperate && <DeploymentActions deployment={d} />}
              </Stack>
            </Box>
          ))}
        </Stack>
        <Box bg="bg" borderWidth="1px" borderRadius="md" hideBelow="md">
          <Table.ScrollArea>
            <Table.Root size="sm" interactive aria-label="Deployments">
              <Table.Header>
                <Table.Row>
                  <Table.ColumnHeader>Service</Table.ColumnHeader>
                  <Table.ColumnHeader hideBelow="md">Environment</Table.ColumnHeader>
                  <Table.ColumnHeader>Status</Table.ColumnHeader>
                  <Table.ColumnHeader minW="32">Progress</Table.ColumnHeader>
                  <Table.ColumnHeader hideBelow="lg">Started by</Table.ColumnHeader>
                  <Table.ColumnHeader hideBelow="md">Updated</Table.ColumnHeader>
                  {canOperate && <Table.ColumnHeader>Actions</Table.ColumnHeader>}
                </Table.Row>
              </Table.Header>
              <Table.Body>
                {rows.map((d) => (
                  <Table.Row key={d.id} data-testid={`deployment-${d.id}`}>
                    <Table.Cell>
                      <ChakraLink asChild fontWeight="medium" colorPalette="blue" variant="underline">
                        <Link to={`/deployments/${encodeURIComponent(d.id)}`}>{d.service}</Link>
                      </ChakraLink>
                      {d.version && (
                        <Text as="span" color="fg.muted" fontSize="sm">
                          {' '}
                          {d.version}
                        </Text>
                      )}
                      {(d.message || d.reason) && (
                        <Text fontSize="xs" color="fg.muted" lineClamp={1} maxW="xs">
                          {d.reason ?? d.message}
                        </Text>
                      )}
                    </Table.Cell>
                    <Table.Cell hideBelow="md">{d.environment ?? '—'}</Table.Cell>
                    <Table.Cell>
                      <StatusBadge status={d.status} />
                    </Table.Cell>
                    <Table.Cell>
                      <DeploymentProgress deployment={d} />
                    </Table.Cell>
                    <Table.Cell hideBelow="lg">{d.started_by.name}</Table.Cell>
                    <Table.Cell hideBelow="md" whiteSpace="nowrap">
                      <Time iso={d.updated_at} />
                    </Table.Cell>
                    {canOperate && (
                      <Table.Cell>
                        <DeploymentActions deployment={d} />
                      </Table.Cell>
                    )}
                  </Table.Row>
                ))}
              </Table.Body>
            </Table.Root>
          </Table.ScrollArea>
        </Box>
        {more && (
          <HStack gap="3" wrap="wrap" data-testid="deployments-more">
            <Text color="fg.muted" fontSize="sm" role="status">
              {`Showing the newest ${rows.length}${status ? ` ${STATUS_LABEL[status].toLowerCase()}` : ''} deployments; there are more.`}
              {limit >= DEPLOYMENTS_MAX && ' This is as many as herald lists at once: choose a status to narrow it down.'}
            </Text>
            {limit < DEPLOYMENTS_MAX && (
              <Button
                size="sm"
                variant="outline"
                loading={list.isPlaceholder}
                onClick={() => setLimit((l) => Math.min(DEPLOYMENTS_MAX, l + DEPLOYMENTS_PAGE))}
              >
                Load more
              </Button>
            )}
          </HStack>
        )}
        </>
      )}
    </Stack>
  )
}
