import { Box, Text, Timeline } from '@chakra-ui/react'
import type { IconType } from 'react-icons'
import { LuDot } from 'react-icons/lu'
import { actorLabel } from '../lib/describe'
import { useFeatures } from '../lib/feature'
import type { Envelope } from '../lib/types'
import { Time } from './Time'

/** The events of one stream, oldest first, each in words (its feature's description). */
export function EventTimeline({ events, icons = {}, label }: { events: Envelope[]; icons?: Record<string, IconType>; label: string }) {
  const { describe } = useFeatures()
  return (
    <Box bg="bg" borderWidth="1px" borderRadius="md" p={{ base: '3', md: '5' }}>
      <Timeline.Root size="lg" as="ol" aria-label={label}>
        {events.map((e) => {
          const Icon = icons[e.type] ?? LuDot
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
                  {describe(e)}
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
