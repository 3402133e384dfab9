/**
 * Vitest global setup: one S3 endpoint for the whole run, started only when a selected test file
 * needs one (contains `describeWithS3(`), so runs of other files pay nothing.
 *
 * 1. STEPWISE_TEST_S3_ENDPOINT set: use that S3 as it is.
 * 2. Otherwise, radosgw installed: start test/services/radosgw.sh in a temporary folder (about
 *    15 s), hand its endpoint to the tests, and stop it and remove the folder at the end (also if
 *    the run is interrupted).
 * 3. Otherwise the S3 tests skip, and the run ends with a loud line saying so. Under CI=true a
 *    missing S3 fails the run instead.
 */
import { execFile, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type { TestProject } from "vitest/node";
import {
  parseEnvLines,
  S3_TEST_MARKER,
  type S3TestService,
  TEST_S3_ENV,
  targetFromEnv,
} from "./s3-target.js";

const RADOSGW_SCRIPT = join(dirname(fileURLToPath(import.meta.url)), "..", "services", "radosgw.sh");
/** radosgw starts in about 15 s on 2 cores; allow for a loaded machine. */
const START_TIMEOUT_MS = 180_000;
const STOP_TIMEOUT_MS = 30_000;
const run = promisify(execFile);

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const service = await startService(project);
  project.provide("stepwiseS3", service);
  if (service.status === "unavailable") {
    if (process.env.CI === "true") throw new Error(`CI=true requires the S3 tests, but ${service.reason}`);
    console.warn(`\n[s3] S3 tests will be SKIPPED: ${service.reason}\n`);
  }
  if (service.status === "ready")
    console.info(`[s3] S3 tests use ${service.target.endpoint} (${service.target.source})`);
  return async () => {
    await stopRadosgw();
    if (service.status === "unavailable") {
      console.warn(`\n${"!".repeat(100)}\n!! S3 TESTS SKIPPED: ${service.reason}\n${"!".repeat(100)}\n`);
    }
  };
}

let radosgwDir: string | undefined;

async function startService(project: TestProject): Promise<S3TestService> {
  if (!(await selectedFilesNeedS3(project))) return { status: "not-requested" };
  const external = targetFromEnv(process.env, TEST_S3_ENV.endpoint);
  if (external !== undefined) return { status: "ready", target: external };
  if (!["radosgw", "ceph-mon", "ceph-osd"].every(isInstalled)) {
    return {
      status: "unavailable",
      reason: `${TEST_S3_ENV.endpoint} is not set and radosgw is not installed (apt-get install radosgw ceph-mon ceph-osd)`,
    };
  }
  const dir = await mkdtemp(join(tmpdir(), "stepwise-radosgw-"));
  radosgwDir = dir;
  // A run cut short skips the teardown: stop the daemons on exit (and radosgw.sh watches our pid
  // in case we are killed outright).
  process.once("exit", stopRadosgwNow);
  try {
    await run("bash", [RADOSGW_SCRIPT, "start", dir], {
      timeout: START_TIMEOUT_MS,
      env: { ...process.env, STEPWISE_RADOSGW_OWNER_PID: String(process.pid) },
    });
    const target = targetFromEnv(parseEnvLines(await readFile(join(dir, "env"), "utf8")), "radosgw");
    if (target === undefined) throw new Error(`${dir}/env names no endpoint`);
    return { status: "ready", target };
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr ?? String(error);
    await stopRadosgw();
    return {
      status: "unavailable",
      reason: `radosgw did not start: ${stderr.trim().split("\n").slice(-5).join(" | ")}`,
    };
  }
}

/** Whether any test file this run will execute calls `describeWithS3(`. */
async function selectedFilesNeedS3(project: TestProject): Promise<boolean> {
  // The command line's file filters are not public API; without them we assume every file runs.
  const filters = (project.vitest as unknown as { filenamePattern?: string[] }).filenamePattern;
  const { testFiles } = await project.globTestFiles(filters);
  for (const file of testFiles) {
    if ((await readFile(file, "utf8")).includes(S3_TEST_MARKER)) return true;
  }
  return false;
}

async function stopRadosgw(): Promise<void> {
  const dir = radosgwDir;
  if (dir === undefined) return;
  radosgwDir = undefined;
  process.off("exit", stopRadosgwNow);
  if (existsSync(join(dir, "ceph.conf")))
    await run("bash", [RADOSGW_SCRIPT, "stop", dir], { timeout: STOP_TIMEOUT_MS });
}

function stopRadosgwNow(): void {
  if (radosgwDir !== undefined && existsSync(join(radosgwDir, "ceph.conf"))) {
    spawnSync("bash", [RADOSGW_SCRIPT, "stop", radosgwDir], { timeout: STOP_TIMEOUT_MS });
  }
}

function isInstalled(command: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${command}`]).status === 0;
}
