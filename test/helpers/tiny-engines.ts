/**
 * Tiny engine folders for the engine, pipeline and CLI tests: the zoo's tiny-sd15 / tiny-sdxl
 * diffusers folders converted by the real converter, exactly the path a user's checkpoint takes.
 *
 * Each test file runs in its own process (vitest's forks pool), so folders are built once per
 * process, on first use, into one temporary directory that is removed when the process exits.
 */
import { rmSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { convertDiffusers } from "../../diffusion/convert/convert.js";
import { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import type { ExecutionProviderConfig } from "../../diffusion/engine/execution-provider.js";
import type { RuntimeOptions } from "../../diffusion/engine/onnx-runtime.js";
import { writeZooModel, type ZooModelName } from "../../diffusion/zoo/zoo.js";

/**
 * One intra-op thread: test files run side by side on a 2-core machine, and onnxruntime's spinning
 * pool threads only fight each other there (measured on the engine and pipeline suites: 17 s of
 * CPU with 1 thread against 26 s with 2, and a shorter wall time).
 */
export const TEST_THREADS = 1;
export const TEST_PROVIDER: ExecutionProviderConfig = { provider: "cpu", intraOpThreads: TEST_THREADS };

let root: Promise<string> | undefined;
const folders = new Map<ZooModelName, Promise<string>>();

function scratchRoot(): Promise<string> {
  root ??= mkdtemp(join(tmpdir(), "stepwise-tiny-engines-")).then((dir) => {
    process.once("exit", () => rmSync(dir, { recursive: true, force: true }));
    return dir;
  });
  return root;
}

/** A scratch folder for a test's own files, under this process's temporary root. */
export async function scratchDir(prefix: string): Promise<string> {
  return mkdtemp(join(await scratchRoot(), `${prefix}-`));
}

/** The engine folder of a zoo model (built on first call in this process). */
export function tinyEngineFolder(name: ZooModelName): Promise<string> {
  let folder = folders.get(name);
  if (!folder) {
    folder = (async () => {
      const dir = await scratchRoot();
      const diffusers = join(dir, `${name}-diffusers`);
      const engine = join(dir, `${name}-engine`);
      await writeZooModel(name, diffusers);
      await convertDiffusers({ from: diffusers, out: engine });
      return engine;
    })();
    folders.set(name, folder);
  }
  return folder;
}

/** A freshly opened engine on a zoo model's folder; the caller closes it. */
export async function openTinyEngine(
  name: ZooModelName,
  provider: ExecutionProviderConfig = TEST_PROVIDER,
  options: RuntimeOptions = {},
): Promise<DiffusionEngine> {
  return DiffusionEngine.open(await tinyEngineFolder(name), provider, options);
}
