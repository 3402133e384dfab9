/**
 * `stepwise component run --kind unet|vae-encode|vae-decode|clip-text|clip|spm|spm-preprocess
 * --config <config.json> --weights <safetensors|bin> --inputs <safetensors> --out <safetensors>
 * [--backend onnx|reference|tfjs] [--dtype fp32|fp16]`: runs one component on given input tensors
 * and writes all of its outputs (intermediates included), for debugging a conversion against
 * upstream numbers. clip, spm and spm-preprocess are the preference model's pieces
 * (cli/spm-components.ts); tfjs runs the diffusion components on TensorFlow.js.
 *
 * Inputs are named as in the upstream reference io files (sample, timestep, encoder_hidden_states,
 * text_embeds, time_ids, image, latent, input_ids); other tensors in the file are ignored, so a
 * reference `io.safetensors` can be passed as is. Timesteps and ids may be integers; a single
 * timestep is repeated over the batch, as diffusers does.
 */
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Command } from "commander";
import { recordComponentGraph } from "../../diffusion/convert/component-graph.js";
import { checkParameters } from "../../diffusion/convert/convert.js";
import { OnnxRuntimeWorker } from "../../diffusion/engine/onnx-runtime.js";
import { modernVaeKey } from "../../diffusion/models/autoencoder-kl.js";
import {
  type ComponentKind,
  componentInputs,
  type IoSpec,
  measureComponent,
  type ResolvedConfig,
  resolveComponent,
  runComponent,
} from "../../diffusion/models/components.js";
import { readConfigFile } from "../../diffusion/models/config-reader.js";
import type { OnnxInputDType } from "../../diffusion/onnx/onnx-ops.js";
import { writeOnnxModel } from "../../diffusion/onnx/writer.js";
import { ReferenceOps } from "../../diffusion/ops/reference.js";
import { int64, shapeString, Tensor, toFloat32 } from "../../diffusion/tensor.js";
import {
  createTfjsOps,
  describeTfjsBackend,
  runTfjsComponent,
  selectTfjsBackend,
} from "../../diffusion/tfjs/index.js";
import { CheckpointParamSource } from "../../diffusion/weights/checkpoint-source.js";
import { readSafetensors, writeSafetensors } from "../../diffusion/weights/safetensors.js";
import { CliError } from "../cli-error.js";
import { type CommandOutput, processOutput } from "../command-output.js";
import {
  readSpmComponentFiles,
  runSpmComponent,
  SPM_COMPONENT_KINDS,
  type SpmComponentKind,
} from "../spm-components.js";
import { withUserErrors } from "../user-errors.js";

export const COMPONENT_KINDS: readonly ComponentKind[] = ["unet", "vae-encode", "vae-decode", "clip-text"];
const ALL_KINDS: readonly string[] = [...COMPONENT_KINDS, ...SPM_COMPONENT_KINDS];
const BACKENDS = ["onnx", "reference", "tfjs"] as const;
type Backend = (typeof BACKENDS)[number];
const DTYPES = { fp32: "float32", fp16: "float16" } as const;
type DtypeOption = keyof typeof DTYPES;
/** Weight keys older checkpoints carry that no definition reads (transformers' position_ids buffer). */
const IGNORED_WEIGHT_KEY = /\.position_ids$/;
/** The projection a CLIPTextModelWithProjection checkpoint holds beside the text tower. */
const TEXT_PROJECTION_KEY = "text_projection.weight";
/** Any image size lists every parameter: the definitions read the same weights at every size. */
const PARAMETER_LISTING_PIXELS = 64;

interface RunOptions {
  kind: string;
  config: string;
  weights?: string;
  inputs: string;
  out: string;
  backend: string;
  dtype: string;
}

export interface ComponentRunRequest {
  readonly kind: ComponentKind;
  readonly config: string;
  readonly weights: string;
  readonly inputs: string;
  readonly out: string;
  readonly backend: Backend;
  readonly dtype: "float32" | "float16";
}

export function componentCommand(output: CommandOutput = processOutput): Command {
  const component = new Command("component").description("Work with one model component at a time");
  component
    .command("run")
    .description("Run one component on input tensors from a safetensors file and write all of its outputs")
    .requiredOption("--kind <kind>", `which definition runs: ${ALL_KINDS.join(", ")}`)
    .requiredOption(
      "--config <file>",
      "the component's config.json (diffusers or transformers; a reference case.json for clip, spm, spm-preprocess)",
    )
    .option(
      "--weights <file>",
      "the component's weights (.safetensors, or a PyTorch .bin); not for spm-preprocess",
    )
    .requiredOption(
      "--inputs <file>",
      "safetensors with the input tensors (names as in the reference io files)",
    )
    .requiredOption("--out <file>", "safetensors file to write the outputs to")
    .option("--backend <backend>", `${BACKENDS.join(" or ")}`, "onnx")
    .option("--dtype <dtype>", "fp32 or fp16 (fp16: onnx backend only)", "fp32")
    .action(async (options: RunOptions) => {
      if ((SPM_COMPONENT_KINDS as readonly string[]).includes(options.kind)) {
        await runSpmKind(options, output);
        return;
      }
      const request = parseRunOptions(options);
      const outputs = await withUserErrors(() => runComponentFiles(request));
      output.stdout.write(
        `wrote ${Object.keys(outputs).length} outputs to ${request.out}:\n` +
          Object.entries(outputs)
            .map(([name, t]) => `  ${name} ${shapeString(t.shape)}\n`)
            .join(""),
      );
    });
  return component;
}

/** clip, spm and spm-preprocess: the preference model's reference cases (cli/spm-components.ts). */
async function runSpmKind(o: RunOptions, output: CommandOutput): Promise<void> {
  const kind = o.kind as SpmComponentKind;
  if (o.backend === "tfjs") throw new CliError(`--backend tfjs runs the diffusion components, not ${kind}`);
  if (!(BACKENDS as readonly string[]).includes(o.backend))
    throw new CliError(`--backend must be ${BACKENDS.join(", ")}, got "${o.backend}"`);
  if (!(o.dtype in DTYPES)) throw new CliError(`--dtype must be fp32 or fp16, got "${o.dtype}"`);
  if (kind !== "spm-preprocess" && !o.weights) throw new CliError(`--weights is required for --kind ${kind}`);
  const outputs = await withUserErrors(async () => {
    const c = await readSpmComponentFiles({ kind, config: o.config, weights: o.weights, inputs: o.inputs });
    const result = await runSpmComponent(c, {
      backend: o.backend as "onnx" | "reference",
      dtype: DTYPES[o.dtype as DtypeOption],
    });
    await writeSafetensors(o.out, result, { kind, backend: o.backend, dtype: o.dtype });
    return result;
  });
  output.stdout.write(
    `wrote ${outputs.size} outputs to ${o.out}:\n${[...outputs].map(([name, t]) => `  ${name} ${shapeString(t.shape)}\n`).join("")}`,
  );
}

function parseRunOptions(o: RunOptions): ComponentRunRequest {
  if (!ALL_KINDS.includes(o.kind)) {
    throw new CliError(`--kind must be one of ${ALL_KINDS.join(", ")}, got "${o.kind}"`);
  }
  if (!o.weights) throw new CliError(`--weights is required for --kind ${o.kind}`);
  if (!(BACKENDS as readonly string[]).includes(o.backend)) {
    throw new CliError(`--backend must be ${BACKENDS.join(" or ")}, got "${o.backend}"`);
  }
  if (!(o.dtype in DTYPES)) throw new CliError(`--dtype must be fp32 or fp16, got "${o.dtype}"`);
  const dtype = DTYPES[o.dtype as DtypeOption];
  if (dtype === "float16" && o.backend !== "onnx") {
    throw new CliError(`--dtype fp16 needs --backend onnx (the ${o.backend} backend computes in float32)`);
  }
  return {
    kind: o.kind as ComponentKind,
    config: o.config,
    weights: o.weights,
    inputs: o.inputs,
    out: o.out,
    backend: o.backend as Backend,
    dtype,
  };
}

/** Run the request and write its outputs; returns them. Errors name the file and the tensor. */
export async function runComponentFiles(request: ComponentRunRequest): Promise<Record<string, Tensor>> {
  for (const [option, file] of [
    ["--config", request.config],
    ["--weights", request.weights],
    ["--inputs", request.inputs],
  ]) {
    if (!existsSync(file)) throw new CliError(`${option} ${file}: no such file`);
  }
  const raw = await readConfigFile(request.config);
  let resolved = resolveComponent(request.kind, raw, request.config);
  const isVae = request.kind === "vae-encode" || request.kind === "vae-decode";
  const source = await CheckpointParamSource.open([request.weights], {
    rename: isVae ? modernVaeKey : undefined,
    ignore: (key) => IGNORED_WEIGHT_KEY.test(key),
  });
  try {
    // transformers configs name the class in `architectures`; without it, the weights tell.
    if (
      resolved.kind === "clip-text" &&
      !Array.isArray(raw.architectures) &&
      source.info(TEXT_PROJECTION_KEY)
    ) {
      resolved = { ...resolved, projection: true };
    }
    checkParameters(
      source,
      measureComponent(resolved, PARAMETER_LISTING_PIXELS).meta.params,
      request.weights,
      {
        allowUnexpected: true,
      },
    );
    const feeds = graphInputs(resolved, (await readSafetensors(request.inputs)).tensors, request.inputs);
    const outputs =
      request.backend === "onnx"
        ? await runOnnx(resolved, source, feeds, request)
        : request.backend === "tfjs"
          ? await runTfjs(resolved, source, feeds, request.weights)
          : await runReference(resolved, source, feeds);
    await writeSafetensors(request.out, outputs, {
      kind: request.kind,
      backend: request.backend,
      dtype: request.dtype,
    });
    return outputs;
  } finally {
    await source.close();
  }
}

/** The component's inputs from `file`, checked against its specs and converted to the graph's dtypes. */
function graphInputs(
  resolved: ResolvedConfig,
  tensors: ReadonlyMap<string, Tensor>,
  file: string,
): Record<string, Tensor> {
  const specs = componentInputs(resolved);
  const missing = specs.filter((s) => !tensors.has(s.name)).map((s) => s.name);
  if (missing.length > 0) {
    throw new CliError(
      `${file}: missing input tensor ${missing.join(", ")} (a ${resolved.kind} takes ${specs.map((s) => s.name).join(", ")})`,
    );
  }
  const symbols = new Map<string, { size: number; from: string }>();
  const feeds: Record<string, Tensor> = {};
  for (const spec of specs) {
    let t = tensors.get(spec.name)!;
    // Only the UNet takes a timestep, and its first input is the batch of latents.
    if (spec.name === "timestep") t = timestepForBatch(t, feeds.sample.shape[0], file);
    checkShape(spec, t, symbols, file);
    feeds[spec.name] = convertInput(spec, t, file);
  }
  return feeds;
}

/** diffusers accepts one timestep (0-d or [1]) for the whole batch and repeats it. */
function timestepForBatch(t: Tensor, batch: number, file: string): Tensor {
  if (t.size !== 1 || batch === 1) return t.shape.length === 0 ? t.reshape([1]) : t;
  if (t.shape.length > 1)
    throw new CliError(`${file}: timestep has shape ${shapeString(t.shape)}, expected [batch]`);
  const data = t.data as ArrayLike<number | bigint>;
  const repeated = Array.from({ length: batch }, () => data[0]);
  return t.dtype === "int64"
    ? int64([batch], repeated)
    : new Tensor("float32", [batch], Float32Array.from(repeated, Number));
}

function checkShape(
  spec: IoSpec,
  t: Tensor,
  symbols: Map<string, { size: number; from: string }>,
  file: string,
): void {
  const expected = `[${spec.shape.join(", ")}]`;
  if (t.shape.length !== spec.shape.length) {
    throw new CliError(`${file}: input ${spec.name} has shape ${shapeString(t.shape)}, expected ${expected}`);
  }
  spec.shape.forEach((dim, i) => {
    const size = t.shape[i];
    if (typeof dim === "number") {
      if (size !== dim) {
        throw new CliError(
          `${file}: input ${spec.name} has shape ${shapeString(t.shape)}, expected ${expected} (dimension ${i} must be ${dim})`,
        );
      }
      return;
    }
    const seen = symbols.get(dim);
    if (seen && seen.size !== size) {
      throw new CliError(
        `${file}: input ${spec.name} has ${dim} ${size} (dimension ${i}), but ${seen.from} has ${seen.size}`,
      );
    }
    symbols.set(dim, seen ?? { size, from: spec.name });
  });
}

const FLOAT_DTYPES: ReadonlySet<Tensor["dtype"]> = new Set(["float32", "float16", "bfloat16", "float64"]);
const INTEGER_DTYPES: ReadonlySet<Tensor["dtype"]> = new Set(["int64", "int32", "int16", "int8", "uint8"]);

/** Float inputs become float32; integer ids and timesteps become int64. */
function convertInput(spec: IoSpec, t: Tensor, file: string): Tensor {
  const integerAllowed = spec.dtype === "int64" || spec.name === "timestep";
  if (INTEGER_DTYPES.has(t.dtype) && integerAllowed) {
    if (t.dtype === "int64") return t;
    return int64(t.shape, Array.from(t.data as ArrayLike<number>));
  }
  if (FLOAT_DTYPES.has(t.dtype) && spec.dtype === "float32") return toFloat32(t);
  throw new CliError(
    `${file}: input ${spec.name} is ${t.dtype}, expected ${spec.dtype === "int64" ? "integers" : "floats"}`,
  );
}

async function runOnnx(
  resolved: ResolvedConfig,
  source: CheckpointParamSource,
  feeds: Record<string, Tensor>,
  request: ComponentRunRequest,
): Promise<Record<string, Tensor>> {
  const inputDtypes: Record<string, OnnxInputDType> = {};
  for (const [name, t] of Object.entries(feeds)) if (t.dtype === "int64") inputDtypes[name] = "int64";
  const ops = recordComponentGraph(resolved, {
    params: source,
    dtype: request.dtype,
    inputDtypes,
    paramsLabel: request.weights,
  });
  const dir = await mkdtemp(join(tmpdir(), "stepwise-component-"));
  try {
    const report = await writeOnnxModel(ops, dir);
    const runtime = await OnnxRuntimeWorker.start([{ name: resolved.kind, path: join(dir, "model.onnx") }], {
      provider: "cpu",
    });
    try {
      const out = await runtime.run(resolved.kind, feeds);
      return Object.fromEntries(report.outputs.map((o) => [o.name, toFloat32(out[o.name])]));
    } finally {
      await runtime.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function runTfjs(
  resolved: ResolvedConfig,
  source: CheckpointParamSource,
  feeds: Record<string, Tensor>,
  label: string,
): Promise<Record<string, Tensor>> {
  // Inference needs no gradients; the log line says which TensorFlow.js backend ran and why.
  const selection = await selectTfjsBackend({ gradients: false });
  process.stderr.write(`${describeTfjsBackend(selection)}\n`);
  const ops = await createTfjsOps(source, { label });
  try {
    return await runTfjsComponent(ops, resolved, feeds, { intermediates: true, allHiddenStates: true });
  } finally {
    ops.dispose();
  }
}

async function runReference(
  resolved: ResolvedConfig,
  source: CheckpointParamSource,
  feeds: Record<string, Tensor>,
): Promise<Record<string, Tensor>> {
  const weights = new Map<string, Tensor>();
  for (const name of source.names()) weights.set(name, await source.read(name));
  return runComponent(new ReferenceOps(weights), resolved, feeds, {
    intermediates: true,
    allHiddenStates: true,
  });
}
