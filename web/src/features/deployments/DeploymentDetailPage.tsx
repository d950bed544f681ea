import { Box, Card, DataList, Heading, HStack, Link as ChakraLink, Skeleton, Stack, Text, Timeline } from '@chakra-ui/react'
import { useQuery } from '@tanstack/react-query'
import { LuArrowLeft, LuBan, LuCircleCheck, LuCircleX, LuGauge, LuRocket } from 'react-icons/lu'
import { Link, useParams } from 'react-router'
import { ErrorAlert } from '../../components/ErrorAlert'
import { Time } from '../../components/Time'
import { actorLabel, describeEvent } from '../../lib/describe'
import type { Envelope } from '../../lib/types'
import { useAuth } from '../auth/AuthContext'
import { DeploymentActions } from './actions'
import { deploymentKeys, fetchDeployment, fetchStream } from './api'
import { DeploymentProgress, StatusBadge, deploymentName } from './components'

const TYPE_ICON: Record<string, typeof LuRocket> = {
  DeploymentStarted: LuRocket,
  DeploymentProgressed: LuGauge,
  DeploymentSucceeded: LuCircleCheck,
  DeploymentFailed: LuCircleX,
  DeploymentCancelled: LuBan,
}

export function DeploymentDetailPage() {
  const { id = '' } = useParams()
  const { canOperate } = useAuth()
  const stream = `deployment-${id}`
  const deployment = useQuery({ queryKey: deploymentKeys.detail(id), queryFn: ({ signal }) => fetchDeployment(id, signal) })
  const timeline = useQuery({ queryKey: deploymentKeys.stream(stream), queryFn: ({ signal }) => fetchStream(stream, signal) })
  const d = deployment.data

  return (
    <Stack gap="6">
      <ChakraLink asChild fontSize="sm" color="fg.muted">
        <Link to="/">
          <LuArrowLeft aria-hidden="true" /> All deployments
        </Link>
      </ChakraLink>
      <ErrorAlert error={deployment.error} title="This deployment could not be loaded" />
      {deployment.isPending && <Skeleton height="24" />}
      {d && (
        <Card.Root>
          <Card.Body>
            <Stack gap="4">
              <HStack justify="space-between" wrap="wrap" gap="3">
                <Heading as="h1" size="xl">
                  {deploymentName(d)}
                </Heading>
                <StatusBadge status={d.status} />
              </HStack>
              <DeploymentProgress deployment={d} />
              <DataList.Root orientation="horizontal" size="sm">
                <DataList.Item>
                  <DataList.ItemLabel>Started by</DataList.ItemLabel>
                  <DataList.ItemValue>{d.started_by.name}</DataList.ItemValue>
                </DataList.Item>
                <DataList.Item>
                  <DataList.ItemLabel>Started</DataList.ItemLabel>
                  <DataList.ItemValue>
                    <Time iso={d.started_at} absolute />
                  </DataList.ItemValue>
                </DataList.Item>
                <DataList.Item>
                  <DataList.ItemLabel>Last change</DataList.ItemLabel>
                  <DataList.ItemValue>
                    <Time iso={d.updated_at} />
                  </DataList.ItemValue>
                </DataList.Item>
                {d.message && (
                  <DataList.Item>
                    <DataList.ItemLabel>Latest message</DataList.ItemLabel>
                    <DataList.ItemValue>{d.message}</DataList.ItemValue>
                  </DataList.Item>
                )}
                {d.reason && (
                  <DataList.Item>
                    <DataList.ItemLabel>Reason</DataList.ItemLabel>
                    <DataList.ItemValue>{d.reason}</DataList.ItemValue>
                  </DataList.Item>
                )}
                <DataList.Item>
                  <DataList.ItemLabel>Id</DataList.ItemLabel>
                  <DataList.ItemValue fontFamily="mono" fontSize="xs" wordBreak="break-all">
                    {d.id}
                  </DataList.ItemValue>
                </DataList.Item>
              </DataList.Root>
              {canOperate && <DeploymentActions deployment={d} size="sm" />}
            </Stack>
          </Card.Body>
        </Card.Root>
      )}
      <Stack gap="3">
        <Heading as="h2" size="lg">
          Timeline
        </Heading>
        <ErrorAlert error={timeline.error} />
        {timeline.isPending && <Skeleton height="32" />}
        {timeline.data && <EventTimeline events={timeline.data.events} />}
      </Stack>
    </Stack>
  )
}

function EventTimeline({ events }: { events: Envelope[] }) {
  return (
    <Box bg="bg" borderWidth="1px" borderRadius="md" p={{ base: '3', md: '5' }}>
      <Timeline.Root size="lg" as="ol" aria-label="Events of this deployment, oldest first">
        {events.map((e) => {
          const Icon = TYPE_ICON[e.type] ?? LuGauge
          return (
            <Timeline.Item key={e.position} as="li" data-testid="timeline-event">
              <Timeline.Connector>
                <Timeline.Separator />
                <Timeline.Indicator>
                  <Icon aria-hidden="true" />
                </Timeline.Indicator>
              </Timeline.Connector>
              <Timeline.Content>
                <Timeline.Title>
                  <Text as="span" fontWeight="semibold">
                    {actorLabel(e)}
                  </Text>{' '}
                  {describeEvent(e)}
                </Timeline.Title>
                <Timeline.Description>
                  <Time iso={e.recorded_at} absolute /> · {e.type} · version {e.version} · position {e.position}
                </Timeline.Description>
              </Timeline.Content>
            </Timeline.Item>
          )
        })}
      </Timeline.Root>
    </Box>
  )
}
