// The browser app (SeedSelect page and kernel benchmark page), built from the same engine/, models/ and
// weights-tools/ sources as the Node command line. `npm run build:web` writes dist/web.
import { defineConfig } from 'vite';
import { fileURLToPath } from 'node:url';

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

export default defineConfig({
  root: here('./'),
  base: './',
  // the library code lives next to web/, outside the Vite root
  server: { fs: { allow: [here('../')] } },
  build: {
    outDir: here('../dist/web'),
    emptyOutDir: true,
    target: 'es2022',
    sourcemap: true,
    chunkSizeWarningLimit: 2048,
    rolldownOptions: {
      input: { main: here('./index.html'), bench: here('./bench.html') },
      // engine/device.ts loads Dawn (npm `webgpu`) only when running under Node; in a browser that
      // branch never runs, so the package stays out of the bundle.
      external: ['webgpu'],
    },
  },
});
