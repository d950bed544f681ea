// The posts read models, followed through their resource streams: every
// message is the whole resource (the feeds, one feed, one post).

import { defineResource } from '../../live/resource'
import type { Feed, FeedsList, Post } from './types'

const isObject = (d: unknown): d is Record<string, unknown> => !!d && typeof d === 'object'

export const isPost = (d: unknown): d is Post =>
  isObject(d) && typeof d.id === 'string' && typeof d.title === 'string' && typeof d.content === 'string' && Array.isArray(d.tags)

const isFeed = (d: unknown): d is Feed => isObject(d) && typeof d.tag === 'string' && Array.isArray(d.posts)
const isFeeds = (d: unknown): d is FeedsList => isObject(d) && Array.isArray(d.feeds)

/** `GET /api/feeds/live`: `feeds` is every tag with posts. */
export const feedsList = defineResource<FeedsList>('feeds', { feeds: (s, d) => (isFeeds(d) ? d : s) }, 'feeds')

/** `GET /api/feeds/{tag}/live`: `feed` is the feed (a feed whose last post left has none, and goes on). */
export const feedView = defineResource<Feed>(
  'feed',
  { feed: (s, d) => (isFeed(d) ? { ...d, posts: d.posts.filter(isPost) } : s) },
  'feed',
)

/** `GET /api/posts/{id}/live`: `post` is the post. */
export const postView = defineResource<Post>('post', { post: (s, d) => (isPost(d) ? d : s) }, 'post')

export const FEEDS_STREAM = '/api/feeds/live'
// (A page's `min_position` is not part of the address, which names the shared stream: see useResource.)
export const feedStream = (tag: string) => `/api/feeds/${encodeURIComponent(tag)}/live`
export const postStream = (id: string) => `/api/posts/${encodeURIComponent(id)}/live`

/** The `min_position` a page was sent with (after a command), or null. */
export function minPositionOf(search: URLSearchParams): number | null {
  const n = Number(search.get('min_position'))
  return Number.isSafeInteger(n) && n > 0 ? n : null
}
