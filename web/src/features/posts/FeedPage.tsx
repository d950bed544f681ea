import { EmptyState, Skeleton, Stack, Text } from '@chakra-ui/react'
import { LuNewspaper } from 'react-icons/lu'
import { useParams, useSearchParams } from 'react-router'
import { BackLink } from '../../components/BackLink'
import { ErrorAlert } from '../../components/ErrorAlert'
import { Time } from '../../components/Time'
import { useResource } from '../../live/useResource'
import { PageHeader, PostCard, tagsSetBy, useRetryWhenMissing } from './components'
import { feedStream, feedView, minPositionOf } from './resource'
import { normaliseTag } from './tags'

/** One tag's posts, newest first, live: a post that gets the tag appears, one that loses it goes. */
export function FeedPage() {
  const { tag: raw = '' } = useParams()
  const [search] = useSearchParams()
  const tag = normaliseTag(raw)
  const feed = useResource(feedView, feedStream(tag), { minPosition: minPositionOf(search) })
  // No post has the tag (yet): the feed starts with the first one that gets it.
  useRetryWhenMissing(feed, { category: 'post' }, (e) => tagsSetBy(e).map(normaliseTag).includes(tag))
  const f = feed.state
  const missing = feed.error?.status === 404

  return (
    <Stack gap="6">
      <BackLink to="/feeds">All feeds</BackLink>
      <PageHeader title={`#${f?.tag ?? tag}`} />
      {f && (
        <Text color="fg.muted" fontSize="sm" data-testid="feed-summary">
          {f.post_count === 1 ? '1 post' : `${f.post_count} posts`}
          {f.post_count > 0 && (
            <>
              {' '}
              · last update <Time iso={f.updated_at} />
            </>
          )}
        </Text>
      )}
      {!missing && <ErrorAlert error={feed.error} title="This feed could not be loaded" />}
      {!f && !feed.error && <Skeleton height="32" />}
      {(missing || (f && f.posts.length === 0)) && (
        <EmptyState.Root data-testid="feed-empty">
          <EmptyState.Content>
            <EmptyState.Indicator>
              <LuNewspaper />
            </EmptyState.Indicator>
            <EmptyState.Title>{missing ? `No post is tagged ${tag} yet` : `No post is tagged ${tag} any more`}</EmptyState.Title>
            <EmptyState.Description>Posts with this tag appear here as soon as they are written.</EmptyState.Description>
          </EmptyState.Content>
        </EmptyState.Root>
      )}
      {f && f.posts.length > 0 && (
        <Stack gap="3" as="section" aria-label={`Posts tagged ${f.tag}`}>
          {f.posts.map((p) => (
            <PostCard key={p.id} post={p} />
          ))}
        </Stack>
      )}
    </Stack>
  )
}
