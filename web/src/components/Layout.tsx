import { Box, Button, Container, Flex, HStack, Link as ChakraLink, SkipNavContent, SkipNavLink, Text } from '@chakra-ui/react'
import { useQueryClient } from '@tanstack/react-query'
import type { ReactNode } from 'react'
import { LuLogOut } from 'react-icons/lu'
import { NavLink, useNavigate } from 'react-router'
import { logout, meKey } from '../features/auth/api'
import { useAuth } from '../features/auth/AuthContext'
import { useFeatures } from '../lib/feature'
import { ConnectionIndicator } from './ConnectionIndicator'
import { ColorModeButton } from './ui/color-mode'
import { toaster } from './ui/toaster'
import { errorMessage } from '../lib/api'

function NavItem({ to, children }: { to: string; children: ReactNode }) {
  return (
    <ChakraLink asChild px="2" py="1" borderRadius="md" fontWeight="medium" _currentPage={{ bg: 'bg.emphasized' }}>
      <NavLink to={to} end={to === '/'}>
        {children}
      </NavLink>
    </ChakraLink>
  )
}

export function Layout({ children }: { children: ReactNode }) {
  const { user, isAdmin, canOperate } = useAuth()
  const { nav } = useFeatures()
  const shown = nav.filter((n) => (n.role === 'admin' ? isAdmin : n.role === 'operator' ? canOperate : true))
  const qc = useQueryClient()
  const navigate = useNavigate()

  const signOut = async () => {
    try {
      await logout()
    } catch (e) {
      toaster.create({ type: 'error', title: 'Could not sign out', description: errorMessage(e) })
      return
    }
    // Signed out first (the app switches to the login page), then forget the rest.
    qc.setQueryData(meKey, null)
    qc.removeQueries({ predicate: (q) => q.queryKey[0] !== meKey[0] })
    navigate('/login', { replace: true })
  }

  return (
    <Box minH="100vh" bg="bg.subtle">
      <SkipNavLink>Skip to content</SkipNavLink>
      <Box as="header" bg="bg" borderBottomWidth="1px">
        <Container maxW="7xl" px={{ base: '3', md: '6' }} py="2">
          <Flex wrap="wrap" gap="2" align="center" justify="space-between">
            <HStack gap={{ base: '1', md: '4' }} wrap="wrap">
              <Text fontWeight="bold" fontSize="lg" mr="2">
                herald
              </Text>
              <Box as="nav" aria-label="Main">
                <HStack as="ul" listStyleType="none" gap="1" wrap="wrap">
                  {shown.map((n) => (
                    <li key={n.to}>
                      <NavItem to={n.to}>{n.label}</NavItem>
                    </li>
                  ))}
                </HStack>
              </Box>
            </HStack>
            <HStack gap="2" wrap="wrap">
              <ConnectionIndicator />
              <Text fontSize="sm" color="fg.muted" title={`Roles: ${user.roles.join(', ')}`}>
                {user.display_name || user.username}
                <Text as="span" hideBelow="sm">
                  {' '}
                  ({user.roles.join(', ') || 'no role'})
                </Text>
              </Text>
              <ColorModeButton />
              <Button size="sm" variant="ghost" onClick={signOut}>
                <LuLogOut aria-hidden="true" /> Sign out
              </Button>
            </HStack>
          </Flex>
        </Container>
      </Box>
      <SkipNavContent />
      <Container as="main" maxW="7xl" px={{ base: '3', md: '6' }} py={{ base: '4', md: '8' }}>
        {children}
      </Container>
    </Box>
  )
}
