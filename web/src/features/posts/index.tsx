import type { Feature } from '../../lib/feature'
import { describePostCreated, describePostUpdated } from './describe'
import { FeedPage } from './FeedPage'
import { FeedsPage } from './FeedsPage'
import { EditPostPage, NewPostPage } from './PostEditorPage'
import { PostPage } from './PostPage'
import { POST_PREFIX } from './types'

/** Posts and the feed of each of their tags. */
export const posts: Feature = {
  name: 'posts',
  routes: [
    { path: '/feeds', element: <FeedsPage /> },
    { path: '/feeds/:tag', element: <FeedPage /> },
    { path: '/posts/new', element: <NewPostPage /> },
    { path: '/posts/:id', element: <PostPage /> },
    { path: '/posts/:id/edit', element: <EditPostPage /> },
  ],
  nav: { to: '/feeds', label: 'Feeds' },
  // The pages follow herald's resource streams; a post's history gets the events appended (live/cache.ts).
  live: { types: ['PostCreated', 'PostUpdated'] },
  describe: { PostCreated: describePostCreated, PostUpdated: describePostUpdated },
  streamPage: (stream) =>
    stream.startsWith(POST_PREFIX) && stream.length > POST_PREFIX.length
      ? `/posts/${encodeURIComponent(stream.slice(POST_PREFIX.length))}`
      : null,
}
