import { ApiError } from '../../lib/api'
import { sendCommand, type CommandResult } from '../../lib/commands'
import { normaliseTags } from './tags'
import type { Post, PostDraft } from './types'

/** `CreatePost` on a new stream (`post-<id>`). */
export const createPost = (id: string, draft: PostDraft, commandId?: string): Promise<CommandResult> =>
  sendCommand(id, { type: 'CreatePost', data: { title: draft.title, content: draft.content, tags: draft.tags } }, 0, commandId)

export type PostChanges = Partial<PostDraft>

const sameList = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((x, i) => x === b[i])

/** The fields of `draft` that differ from `post` (an `UpdatePost` carries only those), or null for none. */
export function postChanges(post: Pick<Post, 'title' | 'content' | 'tags'>, draft: PostDraft): PostChanges | null {
  const changes: PostChanges = {}
  if (draft.title !== post.title) changes.title = draft.title
  if (draft.content !== post.content) changes.content = draft.content
  const tags = normaliseTags(draft.tags)
  if (!sameList(tags, post.tags)) changes.tags = tags
  return Object.keys(changes).length ? changes : null
}

/** `UpdatePost` against the version the editor started from (a change since then: 409). */
export const updatePost = (id: string, changes: PostChanges, expectedVersion: number, commandId?: string): Promise<CommandResult> =>
  sendCommand(id, { type: 'UpdatePost', data: changes }, expectedVersion, commandId)

/** The field a 400 names (`data.tags[2]: …`), so the editor can show it there. */
export function problemField(e: unknown): keyof PostDraft | null {
  if (!(e instanceof ApiError) || e.status !== 400) return null
  const m = /^data\.(title|content|tags)\b/.exec(e.problem.detail ?? '')
  return m ? (m[1] as keyof PostDraft) : null
}
