import { Card, DataList, Heading, HStack, Skeleton, Stack } from '@chakra-ui/react'
import { LuBan, LuCircleCheck, LuCircleX, LuGauge, LuRocket } from 'react-icons/lu'
import type { IconType } from 'react-icons'
import { useParams } from 'react-router'
import { BackLink } from '../../components/BackLink'
import { ErrorAlert } from '../../components/ErrorAlert'
import { EventTimeline } from '../../components/EventTimeline'
import { Time } from '../../components/Time'
import { useTimeline } from '../../live/streams'
import { useResource } from '../../live/useResource'
import { useAuth } from '../auth/AuthContext'
import { DeploymentActions } from './actions'
import { DeploymentProgress, StatusBadge, deploymentName } from './components'
import { deploymentStream, deploymentView } from './resource'

const TYPE_ICON: Record<string, IconType> = {
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
  // The deployment from its resource stream; the timeline from the log (kept current by the live events).
  const deployment = useResource(deploymentView, id ? deploymentStream(id) : null)
  const timeline = useTimeline(stream)
  const d = deployment.state

  return (
    <Stack gap="6">
      <BackLink to="/">All deployments</BackLink>
      <ErrorAlert error={deployment.error} title="This deployment could not be loaded" />
      {!d && !deployment.error && <Skeleton height="24" />}
      {d && (
        <Card.Root data-testid="deployment-summary" data-version={d.stream_version}>
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
        {timeline.data && (
          <EventTimeline events={timeline.data.events} icons={TYPE_ICON} label="Events of this deployment, oldest first" />
        )}
      </Stack>
    </Stack>
  )
}
