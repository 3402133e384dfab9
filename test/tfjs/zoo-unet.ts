/**
 * The zoo's tiny UNets (tiny-sd15, tiny-sdxl) for the tfjs suites: the folder is written by the
 * real zoo writer into a temporary directory, its UNet config and weights read back, the folder
 * removed. Plus seeded inputs and LoRA factors for them.
 */
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ResolvedConfig, resolveComponent } from "../../diffusion/models/components.js";
import { SDXL_TIME_IDS, textEmbedsDim, type UNetConfig } from "../../diffusion/models/unet2d-condition.js";
import type { LoraFactors } from "../../diffusion/ops/ops.js";
import { type Float32Tensor, float32, type Tensor } from "../../diffusion/tensor.js";
import { readSafetensors } from "../../diffusion/weights/safetensors.js";
import { writeZooModel, type ZooModelName } from "../../diffusion/zoo/zoo.js";
import { Rng, randn } from "../ops/random.js";

export interface ZooUnet {
  readonly resolved: ResolvedConfig & { kind: "unet" };
  readonly config: UNetConfig;
  readonly weights: ReadonlyMap<string, Tensor>;
}

export async function loadZooUnet(name: ZooModelName): Promise<ZooUnet> {
  const dir = await mkdtemp(join(tmpdir(), `stepwise-tfjs-${name}-`));
  try {
    const folder = join(dir, name);
    await writeZooModel(name, folder);
    const raw = JSON.parse(await readFile(join(folder, "unet", "config.json"), "utf8"));
    const resolved = resolveComponent("unet", raw, "unet/config.json");
    if (resolved.kind !== "unet") throw new Error("not a UNet config");
    const weights = (await readSafetensors(join(folder, "unet", "diffusion_pytorch_model.safetensors")))
      .tensors;
    return { resolved, config: resolved.config, weights };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Seeded UNet inputs named as `componentInputs` lists them (SDXL's added conditioning included). */
export function unetInputs(
  config: UNetConfig,
  seed: number,
  sizes: { batch: number; height: number; width: number; tokens: number },
): Record<string, Tensor> {
  const rng = new Rng(seed);
  const { batch, height, width, tokens } = sizes;
  const inputs: Record<string, Tensor> = {
    sample: randn(rng, [batch, config.inChannels, height, width]),
    timestep: float32(
      [batch],
      Array.from({ length: batch }, (_, i) => [981, 421, 13][i % 3]),
    ),
    encoder_hidden_states: randn(rng, [batch, tokens, config.crossAttentionDim[0]]),
  };
  if (config.additionEmbedType === "text_time") {
    inputs.text_embeds = randn(rng, [batch, textEmbedsDim(config)]);
    inputs.time_ids = float32(
      [batch, SDXL_TIME_IDS],
      Array.from({ length: batch }, (_, i) =>
        i % 2 ? [768, 512, 32, 16, 1024, 1024] : [1024, 1024, 0, 0, 1024, 1024],
      ).flat(),
    );
  }
  return inputs;
}

export interface SlotShape {
  readonly module: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
}

/** Random factors of rank `rank` for each slot; `scale` keeps the adapter's effect moderate. */
export function randomFactors(
  slots: readonly SlotShape[],
  rank: number,
  seed: number,
  scale: number,
): Map<string, LoraFactors<Float32Tensor>> {
  const rng = new Rng(seed);
  return new Map(
    slots.map((s) => [
      s.module,
      { down: randn(rng, [rank, s.inFeatures], scale), up: randn(rng, [s.outFeatures, rank], scale) },
    ]),
  );
}
