/**
 * Where a graph's time goes, from onnxruntime's own profiler (`enableProfiling`: a Chrome-trace
 * JSON with one event per kernel run, its op type and its input and output shapes).
 *
 * For the last profiled run, kernel times are grouped by op type and by UNet block, with the
 * multiply-accumulates each kernel did (computed from its shapes) and so its rate as a fraction of
 * the matmul peak: "Conv takes 61% of the time at 35% of peak" tells the lead which op to fix.
 */
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import type { MatmulPeak } from "./context.js";
import { type Feeds, openSession } from "./ort-session.js";
import { type DetailTable, percent } from "./report.js";
import { BenchError } from "./stats.js";

interface TraceEvent {
  readonly cat?: string;
  readonly name?: string;
  readonly ts?: number;
  readonly dur?: number;
  readonly args?: {
    readonly op_name?: string;
    readonly input_type_shape?: ReadonlyArray<Readonly<Record<string, number[]>>>;
    readonly output_type_shape?: ReadonlyArray<Readonly<Record<string, number[]>>>;
  };
}

export interface KernelTime {
  /** Node name in the optimised graph (our module path, plus a fusion suffix when fused). */
  readonly node: string;
  readonly op: string;
  readonly us: number;
  readonly macs: number;
  readonly inputShapes: readonly (readonly number[])[];
}

const KERNEL_SUFFIX = "_kernel_time";
/** onnxruntime CPU kernels that multiply matrices (fused forms included). */
const MATRIX_PRODUCTS = new Set(["MatMul", "FusedMatMul", "Gemm", "FusedGemm"]);
/** Kernels listed one by one under the grouped tables. */
const TOP_KERNELS = 12;

/** `[{"float": [2, 320, 32, 32]}, ...]` -> the dims of each entry. */
function shapesOf(list: unknown): number[][] {
  if (!Array.isArray(list)) return [];
  return list.map((entry) => {
    const dims = Object.values(entry as Record<string, unknown>)[0];
    return Array.isArray(dims) ? (dims as number[]) : [];
  });
}

function product(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

/**
 * Multiply-accumulates of one kernel from its shapes: convolutions are output elements times the
 * weight's per-output-channel size; matrix products are output elements times the shared
 * dimension (A's last, which is K in every MatMul/Gemm our graphs emit: none sets transA).
 */
export function kernelMacs(op: string, inputs: readonly number[][], outputs: readonly number[][]): number {
  const out = outputs[0];
  if (!out || out.length === 0) return 0;
  if (op === "Conv" || op === "FusedConv" || op === "NhwcFusedConv" || op === "NchwcConv") {
    const w = inputs[1];
    return w && w.length > 1 ? product(out) * (product(w) / w[0]) : 0;
  }
  if (MATRIX_PRODUCTS.has(op)) {
    const a = inputs[0];
    return a && a.length > 0 ? product(out) * a[a.length - 1] : 0;
  }
  return 0;
}

/** Kernel times of the last `model_run` in an onnxruntime profile. */
export function lastRunKernels(events: readonly TraceEvent[]): KernelTime[] {
  const runs = events.filter((e) => e.cat === "Session" && e.name === "model_run");
  const last = runs[runs.length - 1];
  if (!last || last.ts === undefined || last.dur === undefined) {
    throw new BenchError("the onnxruntime profile has no model_run event");
  }
  const start = last.ts;
  const end = last.ts + last.dur;
  const kernels: KernelTime[] = [];
  for (const e of events) {
    if (e.cat !== "Node" || !e.name?.endsWith(KERNEL_SUFFIX) || e.ts === undefined || e.dur === undefined)
      continue;
    if (e.ts < start || e.ts > end) continue;
    const op = e.args?.op_name ?? "?";
    const inputs = shapesOf(e.args?.input_type_shape);
    const outputs = shapesOf(e.args?.output_type_shape);
    kernels.push({
      node: e.name.slice(0, -KERNEL_SUFFIX.length),
      op,
      us: e.dur,
      macs: kernelMacs(op, inputs, outputs),
      inputShapes: inputs,
    });
  }
  return kernels;
}

/** "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q/MatMul" -> "down_blocks.1". */
export function blockOf(node: string): string {
  const m = /^(down_blocks\.\d+|up_blocks\.\d+|mid_block|conv_in|conv_out|conv_norm_out|time_embedding)/.exec(
    node,
  );
  return m ? m[1] : "other";
}

/**
 * What kind of layer a kernel belongs to, from its node name (the module whose parameters it
 * used, or that were read last) and, inside attention, its shapes: the q/k/v projections multiply
 * by a constant 2-D weight (which the profile does not list once prepacked), while QK^T and AV are
 * batched products of two activations. Those and the softmax and head reshapes are recorded
 * under `to_v` (the last weight read before them).
 */
export function layerKindOf(k: Pick<KernelTime, "node" | "op" | "inputShapes">): string {
  const node = k.node;
  if (/\.attn[12]\.to_out\b/.test(node)) return "attention output projection";
  if (/\.attn[12]\./.test(node)) {
    const weight = k.inputShapes[1];
    return MATRIX_PRODUCTS.has(k.op) && (weight === undefined || weight.length === 2)
      ? "attention q/k/v projections"
      : "attention core (QK^T, softmax, AV, head reshapes)";
  }
  const patterns: Array<[RegExp, string]> = [
    [/\.ff\./, "feed-forward (GEGLU)"],
    [/\.proj_(?:in|out)\b/, "transformer proj_in/proj_out"],
    [/\.resnets\.\d+\.conv[12]\b/, "resnet 3x3 convs"],
    [/\.resnets\.\d+\.conv_shortcut\b/, "resnet shortcut convs"],
    [/\.resnets\.\d+\.norm[12]\b/, "resnet group norms (+ SiLU)"],
    [/\.resnets\.\d+/, "resnet other (time projection, adds)"],
    [/\.attentions\.\d+\.norm\b/, "transformer group norm"],
    [/\.transformer_blocks\.\d+\.norm\d\b/, "transformer layer norms"],
    [/samplers\./, "down/upsamplers"],
  ];
  for (const [re, kind] of patterns) if (re.test(node)) return kind;
  return "other";
}

interface Group {
  us: number;
  macs: number;
  count: number;
}

function groupBy(kernels: readonly KernelTime[], key: (k: KernelTime) => string): Map<string, Group> {
  const groups = new Map<string, Group>();
  for (const k of kernels) {
    const g = groups.get(key(k)) ?? { us: 0, macs: 0, count: 0 };
    g.us += k.us;
    g.macs += k.macs;
    g.count += 1;
    groups.set(key(k), g);
  }
  return new Map([...groups].sort((a, b) => b[1].us - a[1].us));
}

/** A kernel's or a group's MAC rate as a fraction of the matmul peak ("" when it does no MACs). */
function ofPeak(macs: number, us: number, peak: MatmulPeak): string {
  if (macs === 0 || us === 0) return "";
  return percent(macs / (us / 1e6) / 1e9 / peak.gmacs, 0);
}

export interface ProfileSummary {
  readonly kernelMs: number;
  readonly tables: DetailTable[];
  readonly byOp: Readonly<Record<string, { ms: number; share: number; macShare: number }>>;
}

export function summarizeProfile(
  kernels: readonly KernelTime[],
  peak: MatmulPeak,
  label: string,
): ProfileSummary {
  const totalUs = kernels.reduce((a, k) => a + k.us, 0);
  const totalMacs = kernels.reduce((a, k) => a + k.macs, 0);
  const rows = (groups: Map<string, Group>) =>
    [...groups].map(([name, g]) => [
      name,
      String(g.count),
      percent(g.us / totalUs),
      `${(g.us / 1000).toFixed(1)} ms`,
      totalMacs > 0 ? percent(g.macs / totalMacs) : "",
      ofPeak(g.macs, g.us, peak),
    ]);
  const header = ["", "kernels", "time share", "time", "MAC share", "rate / matmul peak"];
  const byOpGroups = groupBy(kernels, (k) => k.op);
  const top = [...kernels].sort((a, b) => b.us - a.us).slice(0, TOP_KERNELS);
  return {
    kernelMs: totalUs / 1000,
    byOp: Object.fromEntries(
      [...byOpGroups].map(([op, g]) => [
        op,
        { ms: g.us / 1000, share: g.us / totalUs, macShare: totalMacs > 0 ? g.macs / totalMacs : 0 },
      ]),
    ),
    tables: [
      {
        title: `${label}: time by op type (one profiled run)`,
        header: ["op", ...header.slice(1)],
        rows: rows(byOpGroups),
      },
      {
        title: `${label}: time by layer kind`,
        header: ["layer kind", ...header.slice(1)],
        rows: rows(groupBy(kernels, layerKindOf)),
      },
      {
        title: `${label}: time by UNet block`,
        header: ["block", ...header.slice(1)],
        rows: rows(groupBy(kernels, (k) => blockOf(k.node))),
      },
      {
        title: `${label}: the ${TOP_KERNELS} slowest kernels`,
        header: ["node", "op", "time share", "time", "GMAC", "rate / matmul peak"],
        rows: top.map((k) => [
          k.node,
          k.op,
          percent(k.us / totalUs),
          `${(k.us / 1000).toFixed(1)} ms`,
          (k.macs / 1e9).toFixed(2),
          ofPeak(k.macs, k.us, peak),
        ]),
      },
    ],
  };
}

/**
 * Open `modelPath` with profiling on, run it `warmup` times and once more, and read the kernels of
 * that last run. The profile file is deleted afterwards (it is large and only the summary counts).
 */
export async function profileModel(
  modelPath: string,
  feeds: Feeds,
  options: { readonly threads: number; readonly warmup: number; readonly workDir: string },
): Promise<KernelTime[]> {
  const dir = await mkdtemp(join(options.workDir, "profile-"));
  try {
    const session = await openSession(modelPath, { threads: options.threads, profileDir: dir });
    try {
      for (let i = 0; i <= options.warmup; i++) {
        const out = await session.run(feeds);
        for (const t of Object.values(out)) t.dispose();
      }
      session.endProfiling();
    } finally {
      await session.release();
    }
    const files = (await readdir(dir)).filter((f) => f.endsWith(".json"));
    if (files.length !== 1)
      throw new BenchError(`expected one onnxruntime profile in ${dir}, found ${files.length}`);
    const events = JSON.parse(await readFile(join(dir, files[0]), "utf8")) as TraceEvent[];
    return lastRunKernels(events);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
