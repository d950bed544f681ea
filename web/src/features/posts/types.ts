import type { Actor } from '../../lib/types'

/** One post, as `GET /api/posts/{id}` and the post streams give it. */
export interface Post {
  id: string
  title: string
  content: string
  tags: string[]
  /** The actor of its PostCreated. */
  author: Actor | string | null
  created_at: string
  updated_at: string
  stream_version: number
  /** The read model's position (the post view; absent in a feed's posts). */
  position?: number
}

export interface FeedSummary {
  tag: string
  post_count: number
  updated_at: string
}

/** `GET /api/feeds`: the tags with posts, most recently updated first. */
export interface FeedsList {
  feeds: FeedSummary[]
  position: number
}

/** `GET /api/feeds/{tag}`: its posts, newest first. */
export interface Feed extends FeedSummary {
  posts: Post[]
  position: number
}

/** What the editor writes. */
export interface PostDraft {
  title: string
  content: string
  tags: string[]
}

export const POST_PREFIX = 'post-'

export function authorName(author: Post['author']): string {
  if (!author) return 'someone'
  return typeof author === 'string' ? author : author.name
}
