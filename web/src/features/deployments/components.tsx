import { Badge, HStack, Progress, Text } from '@chakra-ui/react'
import { LuCircleCheck, LuCircleX, LuLoader, LuBan } from 'react-icons/lu'
import { STATUS_LABEL, type Deployment, type DeploymentStatus } from './types'

const PALETTE: Record<DeploymentStatus, string> = {
  in_progress: 'blue',
  succeeded: 'green',
  failed: 'red',
  cancelled: 'gray',
}
const ICON = { in_progress: LuLoader, succeeded: LuCircleCheck, failed: LuCircleX, cancelled: LuBan }

/** The status in words and with an icon: colour is never the only signal. */
export function StatusBadge({ status }: { status: DeploymentStatus }) {
  const Icon = ICON[status]
  return (
    <Badge colorPalette={PALETTE[status]} variant="subtle" size="md" data-status={status}>
      <Icon aria-hidden="true" />
      {STATUS_LABEL[status]}
    </Badge>
  )
}

export function deploymentName(d: Pick<Deployment, 'service' | 'version' | 'environment'>): string {
  return [d.service, d.version, d.environment ? `to ${d.environment}` : null].filter(Boolean).join(' ')
}

export function DeploymentProgress({ deployment: d, minW = '28' }: { deployment: Deployment; minW?: string }) {
  return (
    <HStack gap="2" minW={minW}>
      <Progress.Root
        value={d.progress}
        max={100}
        size="sm"
        flex="1"
        colorPalette={PALETTE[d.status]}
        aria-label={`Progress of ${deploymentName(d)}`}
        striped={d.status === 'in_progress'}
      >
        <Progress.Track>
          <Progress.Range />
        </Progress.Track>
      </Progress.Root>
      <Text as="span" fontSize="sm" fontVariantNumeric="tabular-nums" minW="9" textAlign="end">
        {d.progress}%
      </Text>
    </HStack>
  )
}
