/**
 * Where a graph's time goes, from onnxruntime's own profiler (`enableProfiling`: a Chrome-trace
 * JSON with one event per kernel run, its op type and its input and output shapes).
 *
 * For the last profiled run, kernel times are grouped by op type and by UNet block, with the
 * multiply-accumulates each kernel did (computed from its shapes) and so its rate as a fraction of
 * the matmul peak: "Conv takes 61% of the time at 35% of peak" tells the lead which op to fix.
 */
import { mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import type { InferenceSession } from "onnxruntime-node";
import type { MatmulPeak } from "./context.js";
import { type Feeds, openSession, timedRun } from "./ort-session.js";
import { type DetailTable, percent } from "./report.js";
import { BenchError, median } from "./stats.js";

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
 * weight's per-output-channel size, transposed convolutions input elements times the weight's
 * per-input-channel size; matrix products are output elements times the shared dimension K, which
 * is A's last-two-dims size over M (out's second-to-last), so a transposed A (Gemm transA, the
 * weight gradients of linear layers; FusedMatMul's transA) counts right too.
 */
export function kernelMacs(op: string, inputs: readonly number[][], outputs: readonly number[][]): number {
  const out = outputs[0];
  if (!out || out.length === 0) return 0;
  if (op === "Conv" || op === "FusedConv" || op === "NhwcFusedConv" || op === "NchwcConv") {
    const w = inputs[1];
    return w && w.length > 1 ? product(out) * (product(w) / w[0]) : 0;
  }
  if (op === "ConvTranspose") {
    const [x, w] = inputs;
    return x && w && w.length > 1 ? product(x) * (product(w) / w[0]) : 0;
  }
  if (MATRIX_PRODUCTS.has(op)) {
    const a = inputs[0];
    if (!a || a.length === 0) return 0;
    if (a.length < 2 || out.length < 2) return product(out) * a[a.length - 1];
    return product(out) * ((a[a.length - 1] * a[a.length - 2]) / out[out.length - 2]);
  }
  return 0;
}

/** Kernel times of each `model_run` in an onnxruntime profile, in run order. */
export function kernelsByRun(events: readonly TraceEvent[]): KernelTime[][] {
  const runs = events
    .filter((e) => e.cat === "Session" && e.name === "model_run" && e.ts !== undefined && e.dur !== undefined)
    .map((e) => ({ start: e.ts!, end: e.ts! + e.dur!, kernels: [] as KernelTime[] }))
    .sort((a, b) => a.start - b.start);
  for (const e of events) {
    if (e.cat !== "Node" || !e.name?.endsWith(KERNEL_SUFFIX) || e.ts === undefined || e.dur === undefined)
      continue;
    const run = runs.find((r) => e.ts! >= r.start && e.ts! <= r.end);
    if (!run) continue;
    const op = e.args?.op_name ?? "?";
    const inputs = shapesOf(e.args?.input_type_shape);
    const outputs = shapesOf(e.args?.output_type_shape);
    run.kernels.push({
      node: e.name.slice(0, -KERNEL_SUFFIX.length),
      op,
      us: e.dur,
      macs: kernelMacs(op, inputs, outputs),
      inputShapes: inputs,
    });
  }
  return runs.map((r) => r.kernels);
}

/** Kernel times of the last `model_run` in an onnxruntime profile. */
export function lastRunKernels(events: readonly TraceEvent[]): KernelTime[] {
  const runs = kernelsByRun(events);
  if (runs.length === 0) throw new BenchError("the onnxruntime profile has no model_run event");
  return runs[runs.length - 1];
}

/**
 * Each node's median kernel time over several runs of one graph. On a busy machine another
 * process takes a core for whole scheduler slices (milliseconds), which lands on a random kernel
 * of a random run: a 10 us kernel then reads 4 ms. A per-node median over runs drops those hits.
 */
export function medianKernels(runs: readonly (readonly KernelTime[])[]): KernelTime[] {
  if (runs.length === 0) throw new BenchError("no profiled runs to take medians over");
  const byNode = new Map<string, { kernel: KernelTime; us: number[] }>();
  for (const run of runs) {
    for (const k of run) {
      const entry = byNode.get(k.node) ?? { kernel: k, us: [] };
      entry.us.push(k.us);
      byNode.set(k.node, entry);
    }
  }
  return [...byNode.values()].map(({ kernel, us }) => ({ ...kernel, us: median(us, kernel.node) }));
}

/**
 * "a.b.attn1.to_q/MatMul_2/MatmulTransposeFusion/" -> "a.b.attn1.to_q": the module a node belongs
 * to; "" for nodes the optimiser adds at graph level ("ReorderOutput_token_57"), whose numbering
 * differs between graphs.
 */
function moduleOfNode(node: string): string {
  const slash = node.indexOf("/");
  return slash < 0 ? "" : node.slice(0, slash);
}

/**
 * The kernels of `run` with no counterpart in `reference` (another graph's run): matched as a
 * multiset on module, op type and input shapes, not on node names, since a node added under a
 * module renumbers its siblings (`to_v/MatMul_2` becomes `to_v/MatMul_4`). For a graph with LoRA
 * slots against the same graph without, these are the slots' own kernels.
 */
export function unmatchedKernels(run: readonly KernelTime[], reference: readonly KernelTime[]): KernelTime[] {
  const key = (k: KernelTime) => `${moduleOfNode(k.node)}|${k.op}|${JSON.stringify(k.inputShapes)}`;
  const available = new Map<string, number>();
  for (const k of reference) available.set(key(k), (available.get(key(k)) ?? 0) + 1);
  const unmatched: KernelTime[] = [];
  for (const k of run) {
    const left = available.get(key(k)) ?? 0;
    if (left > 0) available.set(key(k), left - 1);
    else unmatched.push(k);
  }
  return unmatched;
}

/**
 * "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q/MatMul" -> "down_blocks.1";
 * "decoder.up_blocks.3.resnets.0.conv1/Conv_nchwc" -> "decoder.up_blocks.3" (VAE).
 */
export function blockOf(node: string): string {
  const m =
    /^((?:encoder\.|decoder\.)?(?:down_blocks\.\d+|up_blocks\.\d+|mid_block|conv_in|conv_out|conv_norm_out)|time_embedding|post_quant_conv|quant_conv)/.exec(
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
    [/\.attentions\.\d+\.group_norm\b/, "VAE attention group norm"],
    [/\.attentions\.\d+\.to_/, "VAE attention (q/k/v, QK^T, softmax, AV, output)"],
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
        title: `${label}: time by block`,
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
 * A session with onnxruntime's profiler on: time runs with `run`, labelled, then `finish` for the
 * kernels of every run. The profile file is deleted then (it is large; only the kernels count).
 */
export class ProfilingSession {
  private readonly labels: string[] = [];

  private constructor(
    private readonly session: InferenceSession,
    private readonly dir: string,
  ) {}

  static async open(modelPath: string, threads: number, workDir: string): Promise<ProfilingSession> {
    await mkdir(workDir, { recursive: true });
    const dir = await mkdtemp(join(workDir, "profile-"));
    try {
      return new ProfilingSession(await openSession(modelPath, { threads, profileDir: dir }), dir);
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  /** One run, remembered under `label`; returns its wall time in milliseconds. */
  async run(feeds: Feeds, label: string): Promise<number> {
    this.labels.push(label);
    return timedRun(this.session, feeds);
  }

  /** End profiling and return each run's label and kernels, in run order. */
  async finish(): Promise<Array<{ readonly label: string; readonly kernels: KernelTime[] }>> {
    try {
      this.session.endProfiling();
      await this.session.release();
      const files = (await readdir(this.dir)).filter((f) => f.endsWith(".json"));
      if (files.length !== 1) {
        throw new BenchError(`expected one onnxruntime profile in ${this.dir}, found ${files.length}`);
      }
      const events = JSON.parse(await readFile(join(this.dir, files[0]), "utf8")) as TraceEvent[];
      const runs = kernelsByRun(events);
      if (runs.length !== this.labels.length) {
        throw new BenchError(
          `the profile in ${this.dir} has ${runs.length} runs, ${this.labels.length} were made`,
        );
      }
      return runs.map((kernels, i) => ({ label: this.labels[i], kernels }));
    } finally {
      await rm(this.dir, { recursive: true, force: true });
    }
  }
}

/** Profile `modelPath`: `warmup` runs, then one whose kernels are returned. */
export async function profileModel(
  modelPath: string,
  feeds: Feeds,
  options: { readonly threads: number; readonly warmup: number; readonly workDir: string },
): Promise<KernelTime[]> {
  const session = await ProfilingSession.open(modelPath, options.threads, options.workDir);
  for (let i = 0; i <= options.warmup; i++)
    await session.run(feeds, i < options.warmup ? "warmup" : "profiled");
  const runs = await session.finish();
  return runs[runs.length - 1].kernels;
}
