/**
 * The machine's float32 matrix-multiply rate through onnxruntime: a 1024x1024 by 1024x1024 MatMul,
 * intra-op threads = cores, the median of many runs after warm-up. Every achieved rate in the
 * report is a fraction of this one, measured in the same process.
 *
 * B is a constant initializer, as a model's weights are, so onnxruntime prepacks it once at load
 * (a B fed as an input is repacked on every run, which here costs 10-15% of the rate and would
 * flatter every fraction). On a shared machine the rate moves with the load from minute to minute,
 * so the UNet benchmarks also time short bursts of this MatMul between their own runs (`burst`)
 * and divide round by round.
 */
import type { InferenceSession } from "onnxruntime-node";
import { OnnxOps } from "../diffusion/onnx/onnx-ops.js";
import { encodeOnnxModel } from "../diffusion/onnx/writer.js";
import { MapParamSource } from "../diffusion/ops/params.js";
import { createGenerator } from "../diffusion/random/index.js";
import type { Float32Tensor } from "../diffusion/tensor.js";
import type { BenchContext, MatmulPeak } from "./context.js";
import { type Feeds, openSession, ortFloat32, timedRun } from "./ort-session.js";
import { type BenchResult, ms, timeSummary } from "./report.js";
import { median, repeat, summarize } from "./stats.js";

/** M = N = K: big enough that packing and threading overheads are small, small enough to stay fast. */
export const MATMUL_SIZE = 1024;
export const FLOPS_PER_MAC = 2;
/** Repetitions: ~15 ms each here, so many are cheap and make the median steady. */
const REPS = { full: { warmup: 5, rounds: 50 }, quick: { warmup: 3, rounds: 15 } };
const WEIGHT = "b";

/** A graph computing a @ B for a [n, n] input and a constant [n, n] B, with the project's ONNX backend. */
async function matmulModel(n: number, b: Float32Tensor): Promise<Uint8Array> {
  const ops = new OnnxOps({ params: new MapParamSource(new Map([[WEIGHT, b]])) });
  const a = ops.input("a", "float32", [n, n]);
  ops.output("c", ops.matmul(a, ops.param(WEIGHT, [n, n])));
  return (await encodeOnnxModel(ops, { graphName: "matmul" })).model;
}

/** An open MatMul session to time, whole runs or bursts. */
export class MatmulProbe {
  readonly macs = MATMUL_SIZE ** 3;

  private constructor(
    private readonly session: InferenceSession,
    private readonly feeds: Feeds,
  ) {}

  static async open(threads: number): Promise<MatmulProbe> {
    const n = MATMUL_SIZE;
    const g = createGenerator("stepwise", 1);
    const a = g.randn([n, n]);
    const session = await openSession(await matmulModel(n, g.randn([n, n])), { threads });
    return new MatmulProbe(session, { a: ortFloat32(a) });
  }

  /** One run, in milliseconds. */
  run(): Promise<number> {
    return timedRun(this.session, this.feeds);
  }

  /** The median of `runs` back-to-back runs, in milliseconds: the rate right now. */
  async burst(runs: number): Promise<number> {
    const times: number[] = [];
    for (let i = 0; i < runs; i++) times.push(await this.run());
    return median(times, "matmul burst");
  }

  /** GMAC/s of a run that took `ms` milliseconds. */
  gmacsAt(ms: number): number {
    return this.macs / (ms / 1000) / 1e9;
  }

  close(): Promise<void> {
    return this.session.release();
  }
}

export interface MatmulMeasurement {
  readonly peak: MatmulPeak;
  readonly result: BenchResult;
}

export async function measureMatmul(ctx: BenchContext, probe: MatmulProbe): Promise<MatmulMeasurement> {
  const n = MATMUL_SIZE;
  const times = await repeat(() => probe.run(), REPS[ctx.options.quick ? "quick" : "full"]);
  const s = summarize(times, "matmul");
  const gmacs = probe.gmacsAt(s.median);
  const gflops = gmacs * FLOPS_PER_MAC;
  ctx.log(`matmul ${n}^3: ${gflops.toFixed(1)} GFLOP/s (median ${ms(s.median)})`);
  return {
    peak: { gflops, gmacs },
    result: {
      name: "matmul",
      rows: [
        {
          bench: "matmul",
          measure: `float32 ${n}x${n}x${n} MatMul (constant B), ${ctx.options.threads} threads`,
          value: "1.000 (the reference rate)",
          context: `${gflops.toFixed(1)} GFLOP/s; ${timeSummary(s)} per run`,
        },
      ],
      data: { size: n, threads: ctx.options.threads, gflops, timesMs: times, summary: s },
    },
  };
}
