import { HStack, Status, Text, VisuallyHidden } from '@chakra-ui/react'
import { useEffect, useState } from 'react'
import { LuCloudOff, LuRadio, LuRefreshCw, LuTimer } from 'react-icons/lu'
import type { StatusInfo } from '../live/connection'
import { useConnectionStatus } from '../live/LiveProvider'

function describe(s: StatusInfo, now: number | null): { label: string; detail: string; palette: 'green' | 'orange' | 'blue' | 'red' | 'gray' } {
  const wait = s.retryAt && now !== null ? Math.max(0, Math.ceil((s.retryAt - now) / 1000)) : null
  switch (s.status) {
    case 'live':
      return { label: 'Live', detail: 'Changes appear as they happen.', palette: 'green' }
    case 'connecting':
      return { label: 'Connecting…', detail: 'Opening the live connection.', palette: 'gray' }
    case 'reconnecting':
      return {
        label: 'Reconnecting…',
        detail: `The live connection dropped${wait ? `; trying again in ${wait} s` : '; trying again'}. Nothing will be missed.`,
        palette: 'orange',
      }
    case 'polling':
      return {
        label: 'Polling',
        detail:
          s.pollingReason === 'no-delivery'
            ? 'Live updates are held back on the way (a proxy may be buffering them); checking for changes every second instead.'
            : 'The live connection cannot get through; checking for changes every second instead.',
        palette: 'blue',
      }
    case 'offline':
      return {
        label: 'Offline',
        detail: `herald cannot be reached${wait ? `; trying again in ${wait} s` : ''}. What you see may be out of date.`,
        palette: 'red',
      }
    case 'stopped':
      return { label: 'Not connected', detail: 'Sign in to see live changes.', palette: 'gray' }
  }
}

const ICONS = { live: LuRadio, connecting: LuRefreshCw, reconnecting: LuRefreshCw, polling: LuTimer, offline: LuCloudOff, stopped: LuCloudOff }

/** live / reconnecting / polling / offline: in words and an icon, not colour alone. */
export function ConnectionIndicator() {
  const s = useConnectionStatus()
  const [now, setNow] = useState(() => Date.now())
  useEffect(() => {
    if (!s.retryAt) return
    const id = setInterval(() => setNow(Date.now()), 1000)
    return () => clearInterval(id)
  }, [s.retryAt])
  const { label, detail, palette } = describe(s, now)
  // Announced without the countdown, so a screen reader hears it once per change.
  const spoken = describe(s, null).detail
  const Icon = ICONS[s.status]
  return (
    <HStack
      gap="1.5"
      px="2"
      py="1"
      borderRadius="full"
      borderWidth="1px"
      borderColor={`${palette}.muted`}
      bg={`${palette}.subtle`}
      title={detail}
      data-testid="connection-status"
      data-status={s.status}
    >
      <Status.Root colorPalette={palette} size="sm">
        <Status.Indicator />
      </Status.Root>
      <Icon aria-hidden="true" />
      {/* Announced when it changes; the detail is read too. */}
      <Text as="span" fontSize="sm" fontWeight="medium" role="status" aria-live="polite">
        {label}
        <VisuallyHidden>: {spoken}</VisuallyHidden>
      </Text>
    </HStack>
  )
}
