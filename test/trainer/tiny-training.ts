/**
 * Small training setups for the trainer suites: the zoo's tiny engines and the tiny SPM (built by
 * the real converters once per test process), a config at 64x64 (8x8 latents) with few steps, and a
 * log that records what the trainer said. Kept small so each round takes about a second on 2 cores.
 */
import type { TrainConfig } from "../../trainer/config.js";
import { parseTrainConfig, type RawTrainConfig } from "../../trainer/config.js";
import type { TrainerLog } from "../../trainer/lora-run.js";
import { loadSessionConfig, TrainingSession } from "../../trainer/session.js";
import { TEST_PROVIDER, tinyEngineFolder } from "../helpers/tiny-engines.js";
import { tinySpmFolders } from "../scoring/tiny-spm.js";

export const TINY_PROMPTS = ["a red cat", "a blue house", "green fields at dawn", "a portrait of a dog"];

/** Every training knob small: 6 steps with the pool opening at step 2, pools of 4, 2 prompts a round. */
export async function tinyRawConfig(
  family: "tiny-sd15" | "tiny-sdxl",
  outputDir: string,
  overrides: Record<string, unknown> = {},
): Promise<RawTrainConfig> {
  return parseTrainConfig({
    model: await tinyEngineFolder(family),
    spm: (await tinySpmFolders()).engine,
    prompts: TINY_PROMPTS,
    output_dir: outputDir,
    resolution: 64,
    lora_rank: 2,
    num_epochs: 2,
    checkpoint_every: 1,
    sample: { num_steps: 6, sample_batch_size: 2 },
    train: { divert_start_step: 2, learning_rate: 1e-2 },
    validation: { prompts: ["a cat"], seeds: [1, 2] },
    ...overrides,
  });
}

export interface RecordedLog extends TrainerLog {
  readonly lines: { readonly level: "info" | "warn"; readonly msg: string; readonly obj: object }[];
}

export function recordingLog(): RecordedLog {
  const lines: RecordedLog["lines"][number][] = [];
  return {
    lines,
    info: (obj, msg) => lines.push({ level: "info", msg, obj }),
    warn: (obj, msg) => lines.push({ level: "warn", msg, obj }),
  };
}

/** A session on the WebAssembly backend (the one CI machines use) with one intra-op thread. */
export async function openTinySession(
  options: { rawConfig?: RawTrainConfig; resume?: string },
  log: TrainerLog = recordingLog(),
): Promise<TrainingSession> {
  const { config, checkpoint } = await loadSessionConfig(options);
  return TrainingSession.open({ config, checkpoint, provider: TEST_PROVIDER, tfjsBackend: "wasm", log });
}

export type { TrainConfig };
