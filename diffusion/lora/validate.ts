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
  splitModulePath,
} from "./adapter.js";
import { type LoraIssue, LoraValidationError } from "./errors.js";

/**
 * Ranks above this are refused unless configured otherwise: published SDXL SPO LoRAs are rank 64
 * and common community LoRAs go to 128; the feeds grow linearly with r, and rank 256 on every SDXL
 * attention slot is ~1.5 GB of float32, already more than an adapter cache should take per entry.
 */
export const DEFAULT_MAX_LORA_RANK = 256;

export interface LoraValidationOptions {
  /** Highest accepted rank (default DEFAULT_MAX_LORA_RANK). */
  readonly maxRank?: number;
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

function moduleIssues(
  name: string,
  key: string,
  m: LoraModuleWeights,
  slot: LoraSlotShape,
  maxRank: number,
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
  if (!Number.isFinite(m.alpha)) issue("non-finite", `alpha ${m.alpha}`);
  for (const [role, t] of [["down", m.down] as const, ["up", m.up] as const]) {
    const at = firstNonFinite(t.data);
    if (at >= 0) issue("non-finite", `${role}[${at}] = ${t.data[at]}`);
  }
  return issues;
}

/**
 * Check every module of `adapter` against `slots`. Unknown modules, wrong shapes, non-finite values
 * and ranks above the maximum are errors; so are text-encoder modules the model has no slots for
 * (most engines give text encoders none), unless `ignoreTextEncoder` drops them (they are returned
 * so the caller can say so).
 */
export function validateAdapter(
  adapter: LoraAdapter,
  slots: readonly LoraSlotShape[],
  options: LoraValidationOptions = {},
): LoraValidationResult {
  const maxRank = options.maxRank ?? DEFAULT_MAX_LORA_RANK;
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
    issues.push(...moduleIssues(name, key, m, slot, maxRank));
    kept.push([name, m]);
  }
  if (issues.length > 0) throw new LoraValidationError(issues, options.source);
  return { adapter: dropped.length === 0 ? adapter : loraAdapter(kept), droppedTextEncoderModules: dropped };
}
