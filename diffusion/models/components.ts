/**
 * The components of a Stable Diffusion pipeline as data: which model definition runs each one,
 * how its config is resolved and what its graph inputs and outputs are called. The zoo, the
 * converter, `inspect` and `component run` all go through this table.
 */
import { MetaOps, type MetaTensor } from "../ops/meta.js";
import type { Ops } from "../ops/ops.js";
import {
  resolveVaeConfig,
  type VaeConfig,
  vaeDecoder,
  vaeEncoder,
  vaeScaleFactor,
} from "./autoencoder-kl.js";
import { type ClipTextConfig, clipTextModel, resolveClipTextConfig } from "./clip-text.js";
import type { RawConfig } from "./config-reader.js";
import {
  inferenceUNetRun,
  resolveUNetConfig,
  textEmbedsDim,
  type UNetConfig,
  type UNetRunOptions,
  unet2DConditionModel,
} from "./unet2d-condition.js";

export type ComponentKind = "unet" | "vae-encode" | "vae-decode" | "clip-text";

export type ResolvedConfig =
  | { readonly kind: "unet"; readonly config: UNetConfig }
  | { readonly kind: "vae-encode" | "vae-decode"; readonly config: VaeConfig }
  | { readonly kind: "clip-text"; readonly config: ClipTextConfig; readonly projection: boolean };

export function resolveComponent(kind: ComponentKind, raw: RawConfig, file?: string): ResolvedConfig {
  switch (kind) {
    case "unet":
      return { kind, config: resolveUNetConfig(raw, file) };
    case "vae-encode":
    case "vae-decode":
      return { kind, config: resolveVaeConfig(raw, file) };
    case "clip-text": {
      const architectures = Array.isArray(raw.architectures) ? (raw.architectures as unknown[]) : [];
      return {
        kind,
        config: resolveClipTextConfig(raw, file),
        projection: architectures.includes("CLIPTextModelWithProjection"),
      };
    }
  }
}

export interface IoSpec {
  readonly name: string;
  readonly dtype: "float32" | "int64";
  /** Numbers are fixed sizes, strings symbolic (dynamic) dimensions. */
  readonly shape: ReadonlyArray<number | string>;
}

/** Graph inputs of a component (names as in the upstream reference io files). */
export function componentInputs(c: ResolvedConfig): IoSpec[] {
  switch (c.kind) {
    case "unet": {
      const u = c.config;
      const inputs: IoSpec[] = [
        { name: "sample", dtype: "float32", shape: ["batch", u.inChannels, "height", "width"] },
        { name: "timestep", dtype: "float32", shape: ["batch"] },
        {
          name: "encoder_hidden_states",
          dtype: "float32",
          shape: ["batch", "sequence", u.crossAttentionDim[0]],
        },
      ];
      if (u.additionEmbedType === "text_time") {
        inputs.push({ name: "text_embeds", dtype: "float32", shape: ["batch", textEmbedsDim(u)] });
        inputs.push({ name: "time_ids", dtype: "float32", shape: ["batch", 6] });
      }
      return inputs;
    }
    case "vae-encode":
      return [{ name: "image", dtype: "float32", shape: ["batch", c.config.inChannels, "height", "width"] }];
    case "vae-decode":
      return [
        { name: "latent", dtype: "float32", shape: ["batch", c.config.latentChannels, "height", "width"] },
      ];
    case "clip-text":
      return [{ name: "input_ids", dtype: "int64", shape: ["batch", c.config.maxPositionEmbeddings] }];
  }
}

/** Runs the component's model definition; returns its named outputs. */
export function runComponent<T>(
  ops: Ops<T>,
  c: ResolvedConfig,
  inputs: Readonly<Record<string, T>>,
  options: {
    readonly allHiddenStates?: boolean;
    readonly intermediates?: boolean;
    /** How the UNet runs; default `inferenceUNetRun` of its config. */
    readonly unetRun?: UNetRunOptions;
  } = {},
): Record<string, T> {
  switch (c.kind) {
    case "unet": {
      const r = unet2DConditionModel(
        ops,
        c.config,
        {
          sample: inputs.sample,
          timestep: inputs.timestep,
          encoderHiddenStates: inputs.encoder_hidden_states,
          textEmbeds: inputs.text_embeds,
          timeIds: inputs.time_ids,
        },
        options.unetRun ?? inferenceUNetRun(c.config),
      );
      const out: Record<string, T> = { out: r.sample };
      if (options.intermediates) {
        out.time_embedding_out = r.timeEmbedding;
        if (r.addEmbedding) out.add_embedding_out = r.addEmbedding;
      }
      return out;
    }
    case "vae-encode": {
      const r = vaeEncoder(ops, c.config, inputs.image);
      const out: Record<string, T> = { posterior_mean: r.mean, posterior_logvar: r.logvar };
      if (options.intermediates) out.moments = r.moments;
      return out;
    }
    case "vae-decode":
      return { decoded: vaeDecoder(ops, c.config, inputs.latent) };
    case "clip-text": {
      const r = clipTextModel(ops, c.config, inputs.input_ids, { projection: c.projection });
      const out: Record<string, T> = {
        last_hidden_state: r.lastHiddenState,
        hidden_states_penultimate: r.hiddenStates[r.hiddenStates.length - 2],
        pooler_output: r.pooled,
      };
      if (r.textEmbeds) out.text_embeds = r.textEmbeds;
      if (options.allHiddenStates) {
        const { maxPositionEmbeddings: s, hiddenSize: d } = c.config;
        const stacked = r.hiddenStates.map((h) => ops.reshape(h, [1, -1, s, d]));
        out.all_hidden_states = ops.concat(stacked, 0);
      }
      return out;
    }
  }
}

export interface ShapeReport {
  readonly parameters: number;
  readonly macs: number;
  readonly meta: MetaOps;
}

/**
 * Parameter count and multiply-accumulates of one forward pass, without weights. `pixels` is the
 * image size (latent sizes follow the VAE's downscale, 8 unless given), `batch` the batch size.
 */
export function measureComponent(
  c: ResolvedConfig,
  pixels: number,
  batch = 1,
  vaeDownscale = 8,
): ShapeReport {
  const meta = new MetaOps();
  const latent = Math.max(1, Math.round(pixels / vaeDownscale));
  const shapes: Record<string, MetaTensor> = {};
  for (const spec of componentInputs(c)) {
    const shape = spec.shape.map((d) => {
      if (typeof d === "number") return d;
      if (d === "batch") return batch;
      if (d === "sequence") return 77;
      return c.kind === "vae-encode" ? pixels : latent;
    });
    shapes[spec.name] = { shape, integer: spec.dtype === "int64" };
  }
  runComponent(meta, c, shapes);
  return { parameters: meta.parameterCount, macs: meta.macs, meta };
}

export { vaeScaleFactor };
