/**
 * For test files that need S3: `describeWithS3(name, (target) => {...})` runs its suite against the
 * endpoint the global setup provides (s3-service.ts), skips it with a message when there is none,
 * and fails under CI=true, where the S3 tests are required.
 */
import { describe, inject } from "vitest";
import { type S3TestService, type S3TestTarget, TEST_S3_ENV } from "./s3-target.js";

export type { S3TestTarget } from "./s3-target.js";

export function describeWithS3(name: string, fn: (target: S3TestTarget) => void): void {
  const service: S3TestService | undefined = inject("stepwiseS3");
  if (service?.status === "ready") {
    describe(name, () => fn(service.target));
    return;
  }
  const reason =
    service === undefined
      ? "the S3 global setup (test/setup/s3-service.ts) is not in this vitest config"
      : service.status === "unavailable"
        ? service.reason
        : `the global setup saw no "describeWithS3(" in the selected files (set ${TEST_S3_ENV.endpoint} to force one)`;
  if (process.env.CI === "true") throw new Error(`CI=true requires "${name}", but ${reason}`);
  console.warn(`[skip] ${name}: no S3: ${reason}`);
  describe.skip(name, () => {});
}
