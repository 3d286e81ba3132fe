// The browser end-to-end test (`npm run test:browser`), kept out of `npm test`: it needs Chromium and a
// built web app (dist/web).
import { defineConfig } from 'vitest/config';
import { fileURLToPath } from 'node:url';

export default defineConfig({
  root: fileURLToPath(new URL('../../', import.meta.url)),
  test: {
    include: ['test/browser/**/*.browser.ts'],
    testTimeout: 2_400_000,
    hookTimeout: 600_000,
    pool: 'forks',
    fileParallelism: false,
  },
});
