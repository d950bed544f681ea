import { Center, Heading, Spinner, Stack, Text } from '@chakra-ui/react'
import { useQuery, useQueryClient } from '@tanstack/react-query'
import { useEffect, useMemo } from 'react'
import { Link, Navigate, Route, Routes, useLocation, useSearchParams } from 'react-router'
import { ErrorAlert } from './components/ErrorAlert'
import { Layout } from './components/Layout'
import { features } from './features'
import { fetchMe, meKey } from './features/auth/api'
import { AuthContext, authOf } from './features/auth/AuthContext'
import { LoginPage } from './features/auth/LoginPage'
import { StepUpProvider } from './features/auth/StepUp'
import { setUnauthorizedHandler } from './lib/api'
import { Features, FeaturesProvider } from './lib/feature'
import { LiveProvider } from './live/LiveProvider'

const featureSet = new Features(features)

export function App() {
  const qc = useQueryClient()
  const me = useQuery({ queryKey: meKey, queryFn: ({ signal }) => fetchMe(signal), staleTime: 60_000 })

  useEffect(() => {
    // Any 401 means the session is over: show the login page.
    setUnauthorizedHandler(() => qc.setQueryData(meKey, null))
    return () => setUnauthorizedHandler(null)
  }, [qc])

  const auth = useMemo(() => (me.data ? authOf(me.data.user, me.data.via) : null), [me.data])

  if (me.isPending) {
    return (
      <Center minH="100vh">
        <Spinner size="lg" aria-label="Loading herald" />
      </Center>
    )
  }
  if (me.isError && !me.data) {
    return (
      <Center minH="100vh" p="4">
        <Stack maxW="md">
          <ErrorAlert title="herald cannot be reached" error={me.error} />
        </Stack>
      </Center>
    )
  }
  if (!auth) return <SignedOut />

  return (
    <FeaturesProvider value={featureSet}>
      <AuthContext.Provider value={auth}>
        <LiveProvider enabled onUnauthorized={() => qc.setQueryData(meKey, null)}>
          <StepUpProvider username={auth.user.username}>
            <Layout>
              <Routes>
                {featureSet.routes.map((r) => (
                  <Route key={r.path} path={r.path} element={r.element} />
                ))}
                <Route path="/login" element={<AfterLogin />} />
                <Route path="/register" element={<AfterLogin />} />
                <Route path="*" element={<NotFound />} />
              </Routes>
            </Layout>
          </StepUpProvider>
        </LiveProvider>
      </AuthContext.Provider>
    </FeaturesProvider>
  )
}

function SignedOut() {
  const location = useLocation()
  if (location.pathname === '/login' || location.pathname === '/register') return <LoginPage />
  const next = location.pathname + location.search
  return <Navigate to={`/login?next=${encodeURIComponent(next)}`} replace />
}

function AfterLogin() {
  const [params] = useSearchParams()
  const next = params.get('next')
  return <Navigate to={next && next.startsWith('/') && !next.startsWith('//') ? next : '/'} replace />
}

function NotFound() {
  return (
    <Stack gap="3">
      <Heading as="h1" size="xl">
        Not found
      </Heading>
      <Text>
        There is no page here. <Link to="/">Go to the start page.</Link>
      </Text>
    </Stack>
  )
}
