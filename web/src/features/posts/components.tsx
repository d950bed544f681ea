import { Box, Card, HStack, Heading, Input, Link as ChakraLink, Stack, Tag, Text, Wrap } from '@chakra-ui/react'
import { useEffect, type KeyboardEvent, type ReactNode } from 'react'
import { Link } from 'react-router'
import { Time } from '../../components/Time'
import type { EventFilter } from '../../live/filter'
import { useLiveEvents } from '../../live/LiveProvider'
import type { Resource } from '../../live/useResource'
import type { Envelope } from '../../lib/types'
import { commitTags, removeTag, typeTags, type Chips } from './tags'
import { authorName, type Post } from './types'

export const feedPath = (tag: string) => `/feeds/${encodeURIComponent(tag)}`
export const postPath = (id: string) => `/posts/${encodeURIComponent(id)}`

/** A post's tags, each a link to its feed. */
export function TagLinks({ tags }: { tags: string[] }) {
  if (tags.length === 0) return null
  return (
    <Wrap gap="1.5" as="ul" listStyleType="none" aria-label="Tags">
      {tags.map((t) => (
        <li key={t}>
          <Tag.Root size="sm" colorPalette="blue" variant="subtle" asChild>
            <Link to={feedPath(t)}>
              <Tag.Label>#{t}</Tag.Label>
            </Link>
          </Tag.Root>
        </li>
      ))}
    </Wrap>
  )
}

const EXCERPT = 280

/** One post in a feed: its title (a link to it), the start of its text, its tags. */
export function PostCard({ post }: { post: Post }) {
  const excerpt = post.content.length > EXCERPT ? `${post.content.slice(0, EXCERPT).trimEnd()}…` : post.content
  return (
    <Card.Root size="sm" as="article" data-testid={`post-card-${post.id}`}>
      <Card.Body>
        <Stack gap="2">
          <Heading as="h2" size="md">
            <ChakraLink asChild colorPalette="blue" variant="underline">
              <Link to={postPath(post.id)}>{post.title}</Link>
            </ChakraLink>
          </Heading>
          <Text fontSize="sm" color="fg.muted">
            By {authorName(post.author)} · <Time iso={post.created_at} />
            {post.updated_at !== post.created_at && (
              <>
                {' '}
                · edited <Time iso={post.updated_at} />
              </>
            )}
          </Text>
          <Text whiteSpace="pre-line" lineClamp={4}>
            {excerpt}
          </Text>
          <TagLinks tags={post.tags} />
        </Stack>
      </Card.Body>
    </Card.Root>
  )
}

/**
 * The tags of the editor as chips: a comma or Enter turns what is typed into
 * chips (normalised as herald does), Backspace in the empty box removes the
 * last one, each chip has a remove button. Controlled: `value` is the chips,
 * the text still in the box and why it was refused, if it was.
 */
export function TagInput({ value, onChange, id, invalid }: { value: Chips; onChange: (c: Chips) => void; id?: string; invalid?: boolean }) {
  const { tags, text } = value
  const keyDown = (e: KeyboardEvent<HTMLInputElement>) => {
    if (e.key === 'Enter') {
      // Enter adds the tag; it does not send the form.
      e.preventDefault()
      onChange(commitTags(tags, text))
    } else if (e.key === 'Backspace' && text === '' && tags.length > 0) {
      e.preventDefault()
      onChange({ tags: tags.slice(0, -1), text: '', error: null })
    }
  }
  return (
    <Box
      borderWidth="1px"
      borderRadius="md"
      px="2"
      py="1.5"
      bg="bg"
      borderColor={invalid ? 'border.error' : 'border'}
      _focusWithin={{ outline: '2px solid', outlineColor: 'colorPalette.focusRing' }}
      w="full"
    >
      <Wrap gap="1.5" align="center">
        {tags.map((t) => (
          <Tag.Root key={t} size="md" variant="solid" colorPalette="blue" data-testid="tag-chip">
            <Tag.Label>{t}</Tag.Label>
            <Tag.EndElement>
              <Tag.CloseTrigger aria-label={`Remove tag ${t}`} onClick={() => onChange({ tags: removeTag(tags, t), text, error: value.error })} />
            </Tag.EndElement>
          </Tag.Root>
        ))}
        <Input
          id={id}
          unstyled
          flex="1"
          minW="40"
          py="1"
          outline="none"
          value={text}
          placeholder={tags.length ? 'Add another tag' : 'Type a tag, then Enter or a comma'}
          onChange={(e) => onChange(typeTags(tags, e.target.value))}
          onKeyDown={keyDown}
          onBlur={() => text.trim() && onChange(commitTags(tags, text))}
          autoComplete="off"
          aria-describedby={id ? `${id}-help` : undefined}
        />
      </Wrap>
    </Box>
  )
}

/**
 * A resource that herald does not have (404) yet: followed again as soon as a
 * live event says it may exist now (waiting for that event's position), and
 * now and then anyway.
 */
export function useRetryWhenMissing<S>(resource: Resource<S>, filter: EventFilter, wakes: (e: Envelope) => boolean): void {
  const missing = resource.error?.status === 404
  useLiveEvents(filter, (events) => {
    if (!missing) return
    const hit = events.filter(wakes)
    if (hit.length) resource.retry(hit[hit.length - 1].position)
  })
  const { retry } = resource
  useEffect(() => {
    if (!missing) return
    const id = setInterval(() => retry(), 30_000)
    return () => clearInterval(id)
  }, [missing, retry])
}

/** The tags an event puts on a post (PostCreated's, or PostUpdated's new ones). */
export function tagsSetBy(e: Envelope): string[] {
  const tags = e.data.tags
  if (Array.isArray(tags)) return tags.filter((t): t is string => typeof t === 'string')
  if (tags && typeof tags === 'object' && Array.isArray((tags as { new?: unknown }).new))
    return ((tags as { new: unknown[] }).new).filter((t): t is string => typeof t === 'string')
  return []
}

export function PageHeader({ title, children }: { title: string; children?: ReactNode }) {
  return (
    <HStack justify="space-between" wrap="wrap" gap="3">
      <Heading as="h1" size="2xl">
        {title}
      </Heading>
      {children && (
        <HStack gap="2" wrap="wrap">
          {children}
        </HStack>
      )}
    </HStack>
  )
}
