/**
 * Does an adapter fit a base model? Checked against the model's slot list (module, in, out; the
 * same list the converter writes into the engine manifest), before an adapter is published to the
 * registry or fed to an engine. Every problem is collected and reported in one error.
 */
import { shapeString } from "../tensor.js";
import {
  type LoraAdapter,
  type LoraModuleWeights,
  type LoraSlotShape,
  loraAdapter,
  moduleRank,
  moduleScale,
  splitModulePath,
} from "./adapter.js";
import { type LoraIssue, LoraValidationError } from "./errors.js";

/**
 * Ranks above this are refused unless configured otherwise: published SDXL SPO LoRAs are rank 64
 * and common community LoRAs go to 128; the feeds grow linearly with r, and rank 256 on every SDXL
 * attention slot is ~1.5 GB of float32, already more than an adapter cache should take per entry.
 */
export const DEFAULT_MAX_LORA_RANK = 256;

/**
 * The largest |weight| a request may give a LoRA (the HTTP API refuses more). Validation checks
 * the adapter's arithmetic at this weight, so no weight a request can ask for overflows.
 */
export const MAX_LORA_WEIGHT = 10;

/** The engine dtypes an adapter may be fed to, with their largest finite values. */
export type EngineDtype = "float32" | "float16";
export const DTYPE_MAX: Readonly<Record<EngineDtype, number>> = {
  float32: 3.4028234663852886e38,
  float16: 65504,
};

export interface LoraValidationOptions {
  /** Highest accepted rank (default DEFAULT_MAX_LORA_RANK). */
  readonly maxRank?: number;
  /** The dtype of the engine the adapter is for: its range bounds the values (default float32). */
  readonly dtype?: EngineDtype;
  /** Drop (and report) text-encoder modules the base model has no slots for, instead of failing. */
  readonly ignoreTextEncoder?: boolean;
  /** The file being validated, for the message. */
  readonly source?: string;
}

export interface LoraValidationResult {
  /** The adapter, without the dropped modules. */
  readonly adapter: LoraAdapter;
  /** Text-encoder modules dropped under `ignoreTextEncoder`. */
  readonly droppedTextEncoderModules: readonly string[];
}

function firstNonFinite(data: Float32Array): number {
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) return i;
  return -1;
}

/** Index of the largest |value| (-1 when empty). */
function largestAt(data: Float32Array): number {
  let at = -1;
  let largest = -1;
  for (let i = 0; i < data.length; i++) {
    const v = Math.abs(data[i]);
    if (v > largest) {
      largest = v;
      at = i;
    }
  }
  return at;
}

/**
 * Finite values can still overflow the engine's arithmetic (3e38 is a finite float32; beyond 65504
 * is infinite in float16). Two bounds, both at the heaviest request weight w = MAX_LORA_WEIGHT:
 * the feeds themselves (down as is, up with w * alpha / r folded in) must be representable, and so
 * must every element of the weight delta they add, |(w alpha / r) sum_r up down| <=
 * w |alpha| max|up| max|down|. A module past either bound gives infinities, then NaN images.
 */
function overflowIssue(m: LoraModuleWeights, dtype: EngineDtype): string | undefined {
  const limit = DTYPE_MAX[dtype];
  const downAt = largestAt(m.down.data);
  const upAt = largestAt(m.up.data);
  if (downAt < 0 || upAt < 0) return undefined;
  const down = Math.abs(m.down.data[downAt]);
  const up = Math.abs(m.up.data[upAt]);
  const scale = MAX_LORA_WEIGHT * Math.abs(moduleScale(m));
  const where = (role: "down" | "up") =>
    role === "down" ? `down[${downAt}] = ${m.down.data[downAt]}` : `up[${upAt}] = ${m.up.data[upAt]}`;
  if (down > limit) return `${where("down")} is beyond ${dtype}'s largest value ${limit}`;
  if (up * scale > limit) {
    return `${where("up")} times the scale ${scale} (weight ${MAX_LORA_WEIGHT}, alpha / rank) is beyond ${dtype}'s largest value ${limit}`;
  }
  const delta = MAX_LORA_WEIGHT * Math.abs(m.alpha) * up * down;
  if (delta > limit) {
    return `${where(up >= down ? "up" : "down")}: the weight delta can reach ${delta.toPrecision(3)} at weight ${MAX_LORA_WEIGHT}, beyond ${dtype}'s largest value ${limit}`;
  }
  return undefined;
}

function moduleIssues(
  name: string,
  key: string,
  m: LoraModuleWeights,
  slot: LoraSlotShape,
  maxRank: number,
  dtype: EngineDtype,
): LoraIssue[] {
  const issues: LoraIssue[] = [];
  const issue = (kind: LoraIssue["kind"], detail: string) => issues.push({ kind, module: name, key, detail });
  const r = moduleRank(m);
  if (m.down.shape[1] !== slot.inFeatures || m.up.shape[0] !== slot.outFeatures) {
    issue(
      "shape",
      `down ${shapeString(m.down.shape)}, up ${shapeString(m.up.shape)}; ` +
        `the slot takes [r, ${slot.inFeatures}] and [${slot.outFeatures}, r]`,
    );
  }
  if (r > maxRank) issue("rank", `rank ${r} > ${maxRank}`);
  if (r === 0) issue("rank-zero", "");
  if (!Number.isFinite(m.alpha)) issue("non-finite", `alpha ${m.alpha}`);
  let finite = Number.isFinite(m.alpha);
  for (const [role, t] of [["down", m.down] as const, ["up", m.up] as const]) {
    const at = firstNonFinite(t.data);
    if (at >= 0) issue("non-finite", `${role}[${at}] = ${t.data[at]}`);
    finite &&= at < 0;
  }
  const overflow = finite ? overflowIssue(m, dtype) : undefined;
  if (overflow !== undefined) issue("overflow", overflow);
  return issues;
}

/**
 * Check every module of `adapter` against `slots`. Unknown modules, wrong shapes, non-finite values,
 * values that overflow the engine dtype, rank 0 and ranks above the maximum are errors; so are text-encoder modules the model has no slots for
 * (most engines give text encoders none), unless `ignoreTextEncoder` drops them (they are returned
 * so the caller can say so).
 */
export function validateAdapter(
  adapter: LoraAdapter,
  slots: readonly LoraSlotShape[],
  options: LoraValidationOptions = {},
): LoraValidationResult {
  const maxRank = options.maxRank ?? DEFAULT_MAX_LORA_RANK;
  const dtype = options.dtype ?? "float32";
  const byModule = new Map(slots.map((s) => [s.module, s]));
  const issues: LoraIssue[] = [];
  const dropped: string[] = [];
  const kept: [string, LoraModuleWeights][] = [];
  for (const [name, m] of adapter.modules) {
    const key = m.sourceKey ?? name;
    const slot = byModule.get(name);
    if (!slot) {
      if (splitModulePath(name).component === "unet") {
        issues.push({ kind: "unknown-module", module: name, key, detail: "" });
      } else if (options.ignoreTextEncoder) {
        dropped.push(name);
      } else {
        issues.push({ kind: "text-encoder", module: name, key, detail: "" });
      }
      continue;
    }
    issues.push(...moduleIssues(name, key, m, slot, maxRank, dtype));
    kept.push([name, m]);
  }
  if (issues.length > 0) throw new LoraValidationError(issues, options.source);
  return { adapter: dropped.length === 0 ? adapter : loraAdapter(kept), droppedTextEncoderModules: dropped };
}
