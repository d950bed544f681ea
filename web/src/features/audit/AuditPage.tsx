import {
  Alert,
  Box,
  Button,
  Code,
  Field,
  HStack,
  Heading,
  Input,
  Link as ChakraLink,
  SimpleGrid,
  Skeleton,
  Stack,
  Table,
  Text,
} from '@chakra-ui/react'
import { useInfiniteQuery, useQuery } from '@tanstack/react-query'
import { useState, type FormEvent } from 'react'
import { LuShieldAlert, LuShieldCheck } from 'react-icons/lu'
import { Link } from 'react-router'
import { ErrorAlert } from '../../components/ErrorAlert'
import { Time } from '../../components/Time'
import { actorLabel } from '../../lib/describe'
import { useFeatures } from '../../lib/feature'
import type { Envelope } from '../../lib/types'
import type { EventFilter } from '../../live/filter'
import { useConnectionStatus } from '../../live/LiveProvider'
import { auditKey, fetchAuditPage, fetchVerify, verifyKey, type AuditCursor } from './api'

export function AuditPage() {
  const [filter, setFilter] = useState<EventFilter>({})
  const log = useInfiniteQuery({
    queryKey: auditKey(filter),
    queryFn: ({ pageParam, signal }) => fetchAuditPage(filter, pageParam, signal),
    initialPageParam: null as AuditCursor,
    getNextPageParam: (last) => (last.after > 0 ? last.after : undefined),
    // Live events are prepended to the cache; a refetch would throw away the older pages.
    staleTime: Infinity,
  })
  const events = log.data?.pages.flatMap((p) => p.events) ?? []
  const oldest = log.data?.pages[log.data.pages.length - 1]

  return (
    <Stack gap="6">
      <Heading as="h1" size="2xl">
        Audit log
      </Heading>
      <ChainStatusCard />
      <Filters value={filter} onChange={setFilter} />
      <ErrorAlert error={log.error} title="The log could not be read" />
      {log.isPending ? (
        <Skeleton height="40" />
      ) : (
        <Box bg="bg" borderWidth="1px" borderRadius="md">
          <Table.ScrollArea>
            <Table.Root size="sm" aria-label="Events, newest first">
              <Table.Header>
                <Table.Row>
                  <Table.ColumnHeader textAlign="end">#</Table.ColumnHeader>
                  <Table.ColumnHeader>When</Table.ColumnHeader>
                  <Table.ColumnHeader>Who</Table.ColumnHeader>
                  <Table.ColumnHeader>What</Table.ColumnHeader>
                  <Table.ColumnHeader hideBelow="md">Stream</Table.ColumnHeader>
                </Table.Row>
              </Table.Header>
              <Table.Body>
                {events.map((e) => (
                  <EventRow key={e.position} e={e} />
                ))}
              </Table.Body>
            </Table.Root>
          </Table.ScrollArea>
          {events.length === 0 && (
            <Text p="4" color="fg.muted">
              No events {Object.values(filter).some(Boolean) ? 'match these filters' : 'yet'}
              {oldest && oldest.after > 0 ? ` after position ${oldest.after}` : ''}.
            </Text>
          )}
        </Box>
      )}
      {log.hasNextPage && (
        <Button alignSelf="start" variant="outline" onClick={() => log.fetchNextPage()} loading={log.isFetchingNextPage}>
          Load older events {oldest ? `(before position ${oldest.after + 1})` : ''}
        </Button>
      )}
    </Stack>
  )
}

function EventRow({ e }: { e: Envelope }) {
  const { describe, streamPage } = useFeatures()
  const page = streamPage(e.stream)
  return (
    <Table.Row data-testid="audit-event">
      <Table.Cell textAlign="end" fontVariantNumeric="tabular-nums" color="fg.muted">
        {e.position}
      </Table.Cell>
      <Table.Cell whiteSpace="nowrap">
        <Time iso={e.recorded_at} />
      </Table.Cell>
      <Table.Cell>{actorLabel(e)}</Table.Cell>
      <Table.Cell>
        <Text fontWeight="medium">{e.type}</Text>
        <Text fontSize="sm" color="fg.muted">
          {describe(e)}
        </Text>
        <details>
          <summary style={{ cursor: 'pointer', fontSize: '0.8em' }}>Envelope</summary>
          <Code as="pre" display="block" whiteSpace="pre-wrap" wordBreak="break-all" fontSize="xs" p="2" maxW="xl">
            {JSON.stringify(e, null, 2)}
          </Code>
        </details>
      </Table.Cell>
      <Table.Cell hideBelow="md" fontFamily="mono" fontSize="xs" wordBreak="break-all">
        {page ? (
          <ChakraLink asChild colorPalette="blue" variant="underline">
            <Link to={page}>{e.stream}</Link>
          </ChakraLink>
        ) : (
          e.stream
        )}
      </Table.Cell>
    </Table.Row>
  )
}

function Filters({ value, onChange }: { value: EventFilter; onChange: (f: EventFilter) => void }) {
  const { eventTypes } = useFeatures()
  const [stream, setStream] = useState(value.stream ?? '')
  const [type, setType] = useState(value.type ?? '')
  const [actor, setActor] = useState(value.actor ?? '')
  const apply = (ev: FormEvent) => {
    ev.preventDefault()
    const f: EventFilter = {}
    if (stream.trim()) f.stream = stream.trim()
    if (type.trim()) f.type = type.trim()
    if (actor.trim()) f.actor = actor.trim()
    onChange(f)
  }
  const clear = () => {
    setStream('')
    setType('')
    setActor('')
    onChange({})
  }
  return (
    <form onSubmit={apply} aria-label="Filter the log">
      <SimpleGrid columns={{ base: 1, sm: 2, lg: 4 }} gap="3" alignItems="end">
        <Field.Root>
          <Field.Label>Stream</Field.Label>
          <Input value={stream} onChange={(e) => setStream(e.target.value)} placeholder="deployment-…" />
        </Field.Root>
        <Field.Root>
          <Field.Label>Event type</Field.Label>
          <Input value={type} onChange={(e) => setType(e.target.value)} list="event-types" placeholder="DeploymentStarted" />
          <datalist id="event-types">
            {eventTypes.map((t) => (
              <option key={t} value={t} />
            ))}
          </datalist>
        </Field.Root>
        <Field.Root>
          <Field.Label>Actor</Field.Label>
          <Input value={actor} onChange={(e) => setActor(e.target.value)} placeholder="alice" />
        </Field.Root>
        <HStack>
          <Button type="submit">Apply filters</Button>
          <Button type="button" variant="ghost" onClick={clear}>
            Clear
          </Button>
        </HStack>
      </SimpleGrid>
    </form>
  )
}

function ChainStatusCard() {
  const verify = useQuery({ queryKey: verifyKey, queryFn: ({ signal }) => fetchVerify(signal), staleTime: Infinity })
  const live = useConnectionStatus()
  const v = verify.data
  const behind = v && live.position > v.head_position ? live.position - v.head_position : 0
  return (
    <Stack gap="2">
      {verify.isPending && <Skeleton height="16" />}
      <ErrorAlert error={verify.error} title="The hash chain could not be checked" />
      {v && (
        <Alert.Root status={v.ok ? 'success' : 'error'} role={v.ok ? 'status' : 'alert'}>
          <Alert.Indicator>{v.ok ? <LuShieldCheck /> : <LuShieldAlert />}</Alert.Indicator>
          <Alert.Content>
            <Alert.Title>{v.ok ? 'Hash chain intact' : `Hash chain broken at position ${v.first_bad_position}`}</Alert.Title>
            <Alert.Description>
              {v.ok
                ? `All ${v.checked} events up to position ${v.head_position} match their hashes.`
                : `The stored events from position ${v.first_bad_position} do not match their hashes: the log was changed outside herald.`}
              {behind > 0 && ` ${behind} newer event${behind === 1 ? ' has' : 's have'} not been checked yet.`}
              {v.head_hash && (
                <Text as="span" display="block" fontFamily="mono" fontSize="xs" wordBreak="break-all">
                  Head hash {v.head_hash}
                </Text>
              )}
            </Alert.Description>
          </Alert.Content>
          <Button size="sm" variant="outline" onClick={() => verify.refetch()} loading={verify.isFetching} alignSelf="center">
            Check again
          </Button>
        </Alert.Root>
      )}
    </Stack>
  )
}
