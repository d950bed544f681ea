import { Link as ChakraLink } from '@chakra-ui/react'
import { LuArrowLeft } from 'react-icons/lu'
import { Link } from 'react-router'

/** "← All deployments": back to where a page belongs. */
export function BackLink({ to, children }: { to: string; children: string }) {
  return (
    <ChakraLink asChild fontSize="sm" color="fg.muted">
      <Link to={to}>
        <LuArrowLeft aria-hidden="true" /> {children}
      </Link>
    </ChakraLink>
  )
}
