import { ChakraProvider } from '@chakra-ui/react'
import { ThemeProvider } from 'next-themes'
import type { ReactNode } from 'react'
import { system } from '../../theme'

/** Chakra's system plus next-themes for light and dark (as Chakra v3 recommends). */
export function Provider({ children }: { children: ReactNode }) {
  return (
    <ChakraProvider value={system}>
      <ThemeProvider attribute="class" disableTransitionOnChange defaultTheme="system" enableSystem>
        {children}
      </ThemeProvider>
    </ChakraProvider>
  )
}
