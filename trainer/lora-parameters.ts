/**
 * The LoRA SPO trains, as named host parameters: `<module>.lora_down` [r, in] and
 * `<module>.lora_up` [out, r] for each target module (its path inside the UNet), the names the
 * engine's graph inputs, the training graphs' inputs and the checkpoint's `lora.safetensors` use.
 * The trainer holds this map as the master copy; the optimizer updates it and the gradient backend
 * is handed it after each step.
 *
 * Initialisation as SPO's PEFT config (`init_lora_weights="gaussian"`, lora_alpha = r): down
 * ~ N(0, std 1/r), up = 0, so the policy starts equal to the base model, and alpha / r = 1 means the
 * factors are fed to the engine as they are.
 */
import { type LoraAdapter, loraAdapter, loraModule, qualifiedModulePath } from "../diffusion/lora/adapter.js";
import type { LoraFactors } from "../diffusion/ops/ops.js";
import type { RandomGenerator } from "../diffusion/random/generator.js";
import { type Float32Tensor, float32, shapeString } from "../diffusion/tensor.js";
import { TrainerCheckpointError } from "./errors.js";

/** A module the LoRA trains: its path inside the UNet and the size of its linear map. */
export interface LoraModuleShape {
  readonly module: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
}

export type LoraParameters = Map<string, Float32Tensor>;

const LORA_NAME = /^(.+)\.lora_(down|up)$/;

export function downName(module: string): string {
  return `${module}.lora_down`;
}

export function upName(module: string): string {
  return `${module}.lora_up`;
}

/** SPO's initial factors: down ~ N(0, (1/r)^2) from `generator` (module order), up = 0. */
export function initialLoraParameters(
  modules: readonly LoraModuleShape[],
  rank: number,
  generator: RandomGenerator,
): LoraParameters {
  const std = Math.fround(1 / rank);
  const out: LoraParameters = new Map();
  for (const m of modules) {
    const noise = generator.randn([rank, m.inFeatures]);
    out.set(
      downName(m.module),
      float32(
        [rank, m.inFeatures],
        Array.from(noise.data, (z) => Math.fround(z * std)),
      ),
    );
    out.set(upName(m.module), float32([m.outFeatures, rank]));
  }
  return out;
}

/** The factors by module; every name must be a `.lora_down` / `.lora_up` of a complete pair. */
export function loraFactorsOf(
  parameters: ReadonlyMap<string, Float32Tensor>,
  source = "the LoRA",
): Map<string, LoraFactors<Float32Tensor>> {
  const out = new Map<string, LoraFactors<Float32Tensor>>();
  for (const [name, t] of parameters) {
    const match = LORA_NAME.exec(name);
    if (!match || t.dtype !== "float32") {
      throw new TrainerCheckpointError(source, `holds an unexpected tensor ${name} (${t.dtype})`);
    }
    if (match[2] === "up") continue;
    const up = parameters.get(upName(match[1]));
    if (!up) throw new TrainerCheckpointError(source, `holds only one factor of ${match[1]}`);
    out.set(match[1], { down: t, up });
  }
  if (out.size * 2 !== parameters.size) {
    const orphan = [...parameters.keys()].find(
      (n) => n.endsWith(".lora_up") && !parameters.has(n.replace(/up$/, "down")),
    );
    throw new TrainerCheckpointError(
      source,
      `holds only one factor of ${orphan?.slice(0, -".lora_up".length)}`,
    );
  }
  return out;
}

/**
 * Parameters for `modules` from a checkpoint's LoRA: each module must be there with the shapes of
 * `rank`, and no other module may be.
 */
export function loraParametersFrom(
  saved: ReadonlyMap<string, Float32Tensor>,
  modules: readonly LoraModuleShape[],
  rank: number,
  source: string,
): LoraParameters {
  const factors = loraFactorsOf(saved, source);
  const out: LoraParameters = new Map();
  for (const m of modules) {
    const f = factors.get(m.module);
    if (!f) throw new TrainerCheckpointError(source, `holds no LoRA factors for ${m.module}`);
    for (const [name, host, shape] of [
      [downName(m.module), f.down, [rank, m.inFeatures]],
      [upName(m.module), f.up, [m.outFeatures, rank]],
    ] as const) {
      if (shapeString(host.shape) !== shapeString(shape)) {
        throw new TrainerCheckpointError(
          source,
          `${name} is ${shapeString(host.shape)}, the policy's is ${shapeString(shape)} (another lora_rank or model?)`,
        );
      }
      out.set(name, float32(shape, host.data));
    }
  }
  const known = new Set(modules.map((m) => m.module));
  const extra = [...factors.keys()].filter((m) => !known.has(m));
  if (extra.length > 0) {
    throw new TrainerCheckpointError(
      source,
      `holds LoRA factors for modules this model has no slot for: ${extra.slice(0, 3).join(", ")}`,
    );
  }
  return out;
}

/** The LoRA as an adapter (`unet.`-qualified modules, alpha = r: scale 1), for export and feeds. */
export function loraAdapterOf(parameters: ReadonlyMap<string, Float32Tensor>, rank: number): LoraAdapter {
  return loraAdapter(
    [...loraFactorsOf(parameters)].map(([module, f]) => {
      const name = qualifiedModulePath("unet", module);
      return [
        name,
        loraModule(name, float32(f.down.shape, f.down.data), float32(f.up.shape, f.up.data), rank),
      ] as const;
    }),
  );
}
