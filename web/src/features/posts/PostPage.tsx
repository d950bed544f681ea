import { Box, Button, Card, Heading, Skeleton, Stack, Text } from '@chakra-ui/react'
import { LuFilePen, LuFilePlus, LuPencil } from 'react-icons/lu'
import { Link, useParams, useSearchParams } from 'react-router'
import { BackLink } from '../../components/BackLink'
import { ErrorAlert } from '../../components/ErrorAlert'
import { EventTimeline } from '../../components/EventTimeline'
import { Time } from '../../components/Time'
import { useTimeline } from '../../live/streams'
import { useResource } from '../../live/useResource'
import { useAuth } from '../auth/AuthContext'
import { TagLinks, postPath, useRetryWhenMissing } from './components'
import { minPositionOf, postStream, postView } from './resource'
import { POST_PREFIX, authorName } from './types'

const ICONS = { PostCreated: LuFilePlus, PostUpdated: LuFilePen }

/** One post, live, with its history; operators can edit it. */
export function PostPage() {
  const { id = '' } = useParams()
  const [search] = useSearchParams()
  const { canOperate } = useAuth()
  // After a command the page is opened with its position: herald answers once the post shows it.
  const post = useResource(postView, postStream(id), { minPosition: minPositionOf(search) })
  const stream = `${POST_PREFIX}${id}`
  useRetryWhenMissing(post, { stream }, () => true)
  const history = useTimeline(post.state ? stream : null)
  const p = post.state

  return (
    <Stack gap="6">
      <BackLink to="/feeds">All feeds</BackLink>
      <ErrorAlert error={post.error} title={post.error?.status === 404 ? 'There is no such post' : 'This post could not be loaded'} />
      {!p && !post.error && <Skeleton height="40" />}
      {p && (
        <Card.Root as="article" data-testid="post">
          <Card.Body>
            <Stack gap="4">
              <Heading as="h1" size="2xl" data-testid="post-title">
                {p.title}
              </Heading>
              <Text fontSize="sm" color="fg.muted">
                By {authorName(p.author)} · written <Time iso={p.created_at} />
                {p.updated_at !== p.created_at && (
                  <>
                    {' '}
                    · edited <Time iso={p.updated_at} />
                  </>
                )}
              </Text>
              <TagLinks tags={p.tags} />
              <Box as="section" aria-label="Text">
                <Text whiteSpace="pre-wrap" data-testid="post-content">
                  {p.content}
                </Text>
              </Box>
              {canOperate && (
                <Box>
                  <Button asChild size="sm" variant="outline">
                    <Link to={`${postPath(p.id)}/edit`} aria-label="Edit post">
                      <LuPencil aria-hidden="true" /> Edit
                    </Link>
                  </Button>
                </Box>
              )}
            </Stack>
          </Card.Body>
        </Card.Root>
      )}
      {p && (
        <Stack gap="3">
          <Heading as="h2" size="lg">
            History
          </Heading>
          <ErrorAlert error={history.error} />
          {history.isPending && <Skeleton height="20" />}
          {history.data && <EventTimeline events={history.data.events} icons={ICONS} label="Changes to this post, oldest first" />}
        </Stack>
      )}
    </Stack>
  )
}
