import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["**/*.test.ts"],
    exclude: ["node_modules/**", "dist/**"],
    // Model and server tests run real onnxruntime sessions on 2 cores: give them room.
    testTimeout: 120_000,
    hookTimeout: 180_000,
    pool: "forks",
    // Starts one S3 endpoint (radosgw) per run, only when a selected file calls describeWithS3.
    globalSetup: ["test/setup/s3-service.ts"],
  },
});
