import { Button } from '@chakra-ui/react'
import { useMutation } from '@tanstack/react-query'
import { LuDices } from 'react-icons/lu'
import { useNavigate } from 'react-router'
import { toaster } from '../../components/ui/toaster'
import { errorMessage, newId } from '../../lib/api'
import { createPost } from './api'
import { postPath } from './components'
import { randomPost } from './random'

/** Writes a generated post (operators) and opens it, at the position its command reached. */
export function RandomPostButton() {
  const navigate = useNavigate()
  const mutation = useMutation({
    mutationFn: () => {
      const id = newId()
      return createPost(id, randomPost()).then((r) => ({ id, position: r.position }))
    },
    onSuccess: ({ id, position }) => navigate(`${postPath(id)}?min_position=${position}`),
    onError: (e) => toaster.create({ type: 'error', title: 'No random post was written', description: errorMessage(e) }),
  })
  return (
    <Button variant="outline" onClick={() => mutation.mutate()} loading={mutation.isPending}>
      <LuDices aria-hidden="true" /> Random post
    </Button>
  )
}
