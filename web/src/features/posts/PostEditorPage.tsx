import { Alert, Button, Card, Field, HStack, Input, Skeleton, Stack, Textarea } from '@chakra-ui/react'
import { useMutation } from '@tanstack/react-query'
import { useRef, useState, type FormEvent } from 'react'
import { LuSave } from 'react-icons/lu'
import { Link, useNavigate, useParams } from 'react-router'
import { BackLink } from '../../components/BackLink'
import { ErrorAlert } from '../../components/ErrorAlert'
import { toaster } from '../../components/ui/toaster'
import { ApiError } from '../../lib/api'
import type { CommandResult } from '../../lib/commands'
import { OnceCommand } from '../../lib/once'
import { useResource } from '../../live/useResource'
import { useAuth } from '../auth/AuthContext'
import { createPost, postChanges, problemField, updatePost } from './api'
import { PageHeader, TagInput, postPath } from './components'
import { RandomPostButton } from './RandomPostButton'
import { postStream, postView } from './resource'
import { commitTags, type Chips } from './tags'
import type { Post, PostDraft } from './types'

export const TITLE_MAX = 200
export const CONTENT_MAX = 20_000
const chars = (s: string) => [...s].length
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/

/** What the editor can tell before herald does (herald's own words come back in its 400). */
export function draftProblems(d: { title: string; content: string }): { title?: string; content?: string } {
  const p: { title?: string; content?: string } = {}
  if (!d.title.trim()) p.title = 'A title is needed.'
  else if (chars(d.title) > TITLE_MAX) p.title = `At most ${TITLE_MAX} characters (this is ${chars(d.title)}).`
  else if (CONTROL.test(d.title)) p.title = 'One line, without tabs or other control characters.'
  if (!d.content.trim()) p.content = 'Some text is needed.'
  else if (chars(d.content) > CONTENT_MAX) p.content = `At most ${CONTENT_MAX} characters (this is ${chars(d.content)}).`
  return p
}

/** `/posts/new`. */
export function NewPostPage() {
  return <EditorGate />
}

/** `/posts/:id/edit`: the post, live, so a change by someone else while editing is seen. */
export function EditPostPage() {
  const { id = '' } = useParams()
  return <EditorGate id={id} />
}

function EditorGate({ id }: { id?: string }) {
  const { canOperate } = useAuth()
  const post = useResource(postView, id ? postStream(id) : null)
  const heading = id ? 'Edit post' : 'New post'
  if (!canOperate)
    return (
      <Stack gap="3">
        <PageHeader title={heading} />
        <Alert.Root status="info">
          <Alert.Indicator />
          <Alert.Description>Only operators can write posts.</Alert.Description>
        </Alert.Root>
      </Stack>
    )
  return (
    <Stack gap="6">
      <BackLink to={id ? postPath(id) : '/feeds'}>{id ? 'Back to the post' : 'All feeds'}</BackLink>
      <PageHeader title={heading}>{!id && <RandomPostButton />}</PageHeader>
      {id && <ErrorAlert error={post.error} title="This post could not be loaded" />}
      {id && !post.state && !post.error && <Skeleton height="60" />}
      {(!id || post.state) && <Editor key={id ?? 'new'} post={post.state ?? null} />}
    </Stack>
  )
}

function Editor({ post }: { post: Post | null }) {
  const navigate = useNavigate()
  const [title, setTitle] = useState(post?.title ?? '')
  const [content, setContent] = useState(post?.content ?? '')
  const [chips, setChips] = useState<Chips>({ tags: post?.tags ?? [], text: '', error: null })
  const [tried, setTried] = useState(false)
  // The version this edit started from: herald refuses (409) when someone changed it since.
  const [base, setBase] = useState<Post | null>(post)
  const latest = useRef(post)
  latest.current = post
  // One filled-in form, one command: a double click or a retry is the same command.
  const [once] = useState(() => new OnceCommand<{ id: string; result: CommandResult }>())
  const edit = <T,>(set: (v: T) => void) => (v: T) => {
    once.renew()
    set(v)
  }

  const mutation = useMutation({
    mutationFn: async (draft: PostDraft): Promise<{ id: string; result: CommandResult } | null> => {
      if (!base) {
        return once.submit(async (ids) => ({ id: ids.aggregateId, result: await createPost(ids.aggregateId, draft, ids.commandId) }))
      }
      const changes = postChanges(base, draft)
      if (!changes) return null
      return once.submit(async (ids) => ({ id: base.id, result: await updatePost(base.id, changes, base.stream_version, ids.commandId) }))
    },
    onSuccess: (done) => {
      if (!done) return
      toaster.create({ type: 'success', title: base ? 'Post saved' : 'Post written' })
      navigate(`${postPath(done.id)}?min_position=${done.result.position}`)
    },
    onError: (e) => {
      if (e instanceof ApiError && e.status === 409 && latest.current) {
        // Seen now: the next save is against the latest version.
        setBase(latest.current)
        once.renew()
      }
    },
  })

  const draftNow = (): { draft: PostDraft; chips: Chips } => {
    const c = commitTags(chips.tags, chips.text)
    return { draft: { title, content, tags: c.tags }, chips: c }
  }
  const local = draftProblems({ title, content })
  const field = problemField(mutation.error)
  const unchanged = base !== null && postChanges(base, draftNow().draft) === null
  const changedElsewhere = base !== null && post !== null && post.stream_version !== base.stream_version

  const submit = (ev: FormEvent) => {
    ev.preventDefault()
    setTried(true)
    const now = draftNow()
    setChips(now.chips)
    if (now.chips.error || local.title || local.content || once.pending) return
    mutation.mutate(now.draft)
  }

  return (
    <Card.Root>
      <Card.Body>
        <form onSubmit={submit} aria-label={base ? 'Edit the post' : 'Write a post'} noValidate>
          <Stack gap="5">
            {changedElsewhere && (
              <Alert.Root status="info" role="status">
                <Alert.Indicator />
                <Alert.Content>
                  <Alert.Description>
                    Someone changed this post while you were editing it: it is now “{post?.title}”, tagged {post?.tags.join(', ') || 'nothing'}.
                    herald refuses a save based on the old version.
                  </Alert.Description>
                </Alert.Content>
                <Button
                  size="sm"
                  variant="outline"
                  alignSelf="center"
                  onClick={() => {
                    setBase(post)
                    once.renew()
                  }}
                >
                  Edit on top of it
                </Button>
              </Alert.Root>
            )}
            <Field.Root required invalid={(tried && !!local.title) || field === 'title'}>
              <Field.Label>
                Title <Field.RequiredIndicator />
              </Field.Label>
              <Input value={title} onChange={(e) => edit(setTitle)(e.target.value)} placeholder="What happened" />
              <Field.ErrorText>{local.title ?? (field === 'title' ? mutation.error?.message : null)}</Field.ErrorText>
            </Field.Root>
            <Field.Root required invalid={(tried && !!local.content) || field === 'content'}>
              <Field.Label>
                Text <Field.RequiredIndicator />
              </Field.Label>
              <Textarea value={content} onChange={(e) => edit(setContent)(e.target.value)} rows={10} placeholder="Tell the story" />
              <Field.ErrorText>{local.content ?? (field === 'content' ? mutation.error?.message : null)}</Field.ErrorText>
            </Field.Root>
            <Field.Root invalid={!!chips.error || field === 'tags'}>
              <Field.Label htmlFor="post-tags">Tags</Field.Label>
              <TagInput id="post-tags" value={chips} onChange={edit(setChips)} invalid={!!chips.error || field === 'tags'} />
              <Field.HelperText id="post-tags-help">
                Up to 10; each 1–32 characters of a–z, 0–9 and - (letters are lowercased). The post appears in the feed of each tag.
              </Field.HelperText>
              <Field.ErrorText>{chips.error ?? (field === 'tags' ? mutation.error?.message : null)}</Field.ErrorText>
            </Field.Root>
            {field === null && <ErrorAlert error={mutation.error} title={base ? 'Not saved' : 'Not written'} />}
            <HStack gap="2">
              <Button type="submit" loading={mutation.isPending} disabled={mutation.isPending || unchanged}>
                <LuSave aria-hidden="true" /> {base ? 'Save changes' : 'Create post'}
              </Button>
              <Button asChild variant="ghost">
                <Link to={base ? postPath(base.id) : '/feeds'}>Cancel</Link>
              </Button>
            </HStack>
          </Stack>
        </form>
      </Card.Body>
    </Card.Root>
  )
}
