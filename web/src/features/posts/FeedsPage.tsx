import { Box, Button, EmptyState, Link as ChakraLink, Skeleton, Stack, Table } from '@chakra-ui/react'
import { LuNewspaper, LuPlus } from 'react-icons/lu'
import { Link } from 'react-router'
import { ErrorAlert } from '../../components/ErrorAlert'
import { Time } from '../../components/Time'
import { useResource } from '../../live/useResource'
import { useAuth } from '../auth/AuthContext'
import { PageHeader, feedPath } from './components'
import { RandomPostButton } from './RandomPostButton'
import { FEEDS_STREAM, feedsList } from './resource'

/** Every tag with posts, most recently updated first, live. */
export function FeedsPage() {
  const { canOperate } = useAuth()
  const feeds = useResource(feedsList, FEEDS_STREAM)
  const list = feeds.state?.feeds
  return (
    <Stack gap="6">
      <PageHeader title="Feeds">
        {canOperate && (
          <>
            <Button asChild>
              <Link to="/posts/new">
                <LuPlus aria-hidden="true" /> New post
              </Link>
            </Button>
            <RandomPostButton />
          </>
        )}
      </PageHeader>
      <ErrorAlert error={feeds.error} title="The feeds could not be loaded" />
      {!list && !feeds.error ? (
        <Stack gap="2" aria-label="Loading feeds">
          <Skeleton height="10" />
          <Skeleton height="10" />
        </Stack>
      ) : list && list.length === 0 ? (
        <EmptyState.Root>
          <EmptyState.Content>
            <EmptyState.Indicator>
              <LuNewspaper />
            </EmptyState.Indicator>
            <EmptyState.Title>No posts yet</EmptyState.Title>
            <EmptyState.Description>
              {canOperate ? 'Write one; each of its tags becomes a feed.' : 'Each tag of a post becomes a feed here.'}
            </EmptyState.Description>
          </EmptyState.Content>
        </EmptyState.Root>
      ) : (
        list && (
          <Box bg="bg" borderWidth="1px" borderRadius="md">
            <Table.ScrollArea>
              <Table.Root size="sm" aria-label="Feeds">
                <Table.Header>
                  <Table.Row>
                    <Table.ColumnHeader>Tag</Table.ColumnHeader>
                    <Table.ColumnHeader textAlign="end">Posts</Table.ColumnHeader>
                    <Table.ColumnHeader>Last update</Table.ColumnHeader>
                  </Table.Row>
                </Table.Header>
                <Table.Body>
                  {list.map((f) => (
                    <Table.Row key={f.tag} data-testid={`feed-${f.tag}`}>
                      <Table.Cell>
                        <ChakraLink asChild fontWeight="medium" colorPalette="blue" variant="underline">
                          <Link to={feedPath(f.tag)}>#{f.tag}</Link>
                        </ChakraLink>
                      </Table.Cell>
                      <Table.Cell textAlign="end" fontVariantNumeric="tabular-nums">
                        {f.post_count}
                      </Table.Cell>
                      <Table.Cell whiteSpace="nowrap">
                        <Time iso={f.updated_at} />
                      </Table.Cell>
                    </Table.Row>
                  ))}
                </Table.Body>
              </Table.Root>
            </Table.ScrollArea>
          </Box>
        )
      )}
    </Stack>
  )
}
