import { createSystem, defaultConfig, defineConfig } from '@chakra-ui/react'

// The one theme: Chakra's defaults, a system font stack, and a visible focus
// ring everywhere (keyboard users must always see where they are).
const config = defineConfig({
  globalCss: {
    'html, body': { minHeight: '100%' },
    ':focus-visible': {
      outline: '2px solid',
      outlineColor: 'colorPalette.focusRing',
      outlineOffset: '2px',
    },
  },
  theme: {
    tokens: {
      fonts: {
        heading: { value: 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif' },
        body: { value: 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif' },
        mono: { value: 'ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace' },
      },
    },
  },
})

export const system = createSystem(defaultConfig, config)
