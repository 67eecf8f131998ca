import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Native work runs on the addon's own threads; forks keep each file's addon instance apart.
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 600_000,
  },
});
