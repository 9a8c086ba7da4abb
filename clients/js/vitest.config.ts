import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    globalSetup: ["./test/global-setup.ts"],
    include: ["test/**/*.test.ts", "test/**/*.test.tsx"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // One server process is shared; test files use their own sessions and run one at a time
    // so a 2-core machine is not oversubscribed.
    fileParallelism: false,

  },
});
