/// <reference types="vitest/config" />
import { defineConfig } from 'vite'
import react from '@vitejs/plugin-react'

// `npm run dev` serves the console on :5173 and sends /api to a herald on :8080
// (`HERALD_URL` to point elsewhere), so cookies stay same-origin.
const herald = process.env.HERALD_URL ?? 'http://127.0.0.1:8080'

export default defineConfig({
  plugins: [react()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // Hashed file names under assets/: herald serves them as immutable.
    assetsDir: 'assets',
    chunkSizeWarningLimit: 1500,
  },
  server: {
    proxy: { '/api': { target: herald, changeOrigin: false } },
  },
  preview: {
    proxy: { '/api': { target: herald, changeOrigin: false } },
  },
  test: {
    environment: 'node',
    include: ['src/**/*.test.{ts,tsx}'],
    restoreMocks: true,
  },
})
