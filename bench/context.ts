/**
 * What the benchmarks share in one run: options, progress output, the matmul probe and the
 * matrix-multiply peak that every rate is divided by (measured once, first), and sessions over the
 * big graphs (opened once: an SD1.5 UNet session takes seconds and gigabytes to load).
 */
import type { InferenceSession } from "onnxruntime-node";
import type { LoraTargetSetName } from "../diffusion/lora/targets.js";
import type { ZooModelName } from "../diffusion/zoo/zoo.js";
import { type MatmulMeasurement, MatmulProbe, measureMatmul } from "./matmul.js";
import { openSession } from "./ort-session.js";
import { type BenchGraphName, type RandomGraph, randomComponentGraph } from "./random-graphs.js";
import { tinyEngine } from "./tiny-engines.js";

export interface BenchOptions {
  /** Fewer repetitions, no SD1.5. */
  readonly quick: boolean;
  /** Profile the SD1.5 step even when it meets its target. */
  readonly profile: boolean;
  /** Intra-op threads of every session (the engine's default: the core count). */
  readonly threads: number;
}

/** What a matmul run measured: the rate every achieved rate is a fraction of. */
export interface MatmulPeak {
  /** Median float32 rate, GFLOP/s (2 * M * N * K per run). */
  readonly gflops: number;
  /** The same in multiply-accumulates: gflops / 2. */
  readonly gmacs: number;
}

export class BenchContext {
  private probeSession: Promise<MatmulProbe> | undefined;
  private matmul: Promise<MatmulMeasurement> | undefined;
  private readonly sessions = new Map<string, Promise<InferenceSession>>();
  private readonly graphs = new Map<string, Promise<RandomGraph>>();
  private readonly engines = new Map<string, Promise<string>>();

  constructor(
    readonly options: BenchOptions,
    readonly log: (message: string) => void,
  ) {}

  /** The 1024^3 MatMul session, open for the whole run. */
  matmulProbe(): Promise<MatmulProbe> {
    this.probeSession ??= MatmulProbe.open(this.options.threads);
    return this.probeSession;
  }

  /** The matmul benchmark of this run (the reference rate), run on first use. */
  matmulMeasurement(): Promise<MatmulMeasurement> {
    this.matmul ??= this.matmulProbe().then((probe) => measureMatmul(this, probe));
    return this.matmul;
  }

  async matmulPeak(): Promise<MatmulPeak> {
    return (await this.matmulMeasurement()).peak;
  }

  /**
   * A session kept open for the rest of the run. `instance` opens another session of the same
   * model: variants compared by interleaving need one each, since a session run right after
   * itself is faster (its thread pool still spinning, its buffers warm).
   */
  session(modelPath: string, instance = ""): Promise<InferenceSession> {
    const key = `${modelPath}\0${instance}`;
    let s = this.sessions.get(key);
    if (!s) {
      this.log(`loading ${modelPath}${instance ? ` (${instance})` : ""}`);
      s = openSession(modelPath, { threads: this.options.threads });
      this.sessions.set(key, s);
    }
    return s;
  }

  /** Close a session `session()` opened (to free its memory before loading something big). */
  async release(modelPath: string, instance = ""): Promise<void> {
    const key = `${modelPath}\0${instance}`;
    const s = this.sessions.get(key);
    if (!s) return;
    this.sessions.delete(key);
    await (await s).release();
  }

  /**
   * A tiny engine folder, resolved once per run: its cache key hashes sources that others may be
   * editing, and every benchmark of one run must measure the same build.
   */
  tinyEngine(name: ZooModelName, targets: LoraTargetSetName): Promise<string> {
    const key = `${name}|${targets}`;
    let e = this.engines.get(key);
    if (!e) {
      e = tinyEngine(name, targets, this.log);
      this.engines.set(key, e);
    }
    return e;
  }

  /** The SD1.5 UNet graph with the given LoRA targets (written on first use, cached across runs; once per run). */
  sd15UNet(targets: LoraTargetSetName): Promise<RandomGraph> {
    return this.graph("sd15-unet", targets);
  }

  /** A full-size benchmark graph with random weights (written on first use, cached across runs; once per run). */
  graph(name: BenchGraphName, targets: LoraTargetSetName = "none"): Promise<RandomGraph> {
    const key = `${name}|${targets}`;
    let g = this.graphs.get(key);
    if (!g) {
      g = randomComponentGraph(name, targets, this.log);
      this.graphs.set(key, g);
    }
    return g;
  }

  async close(): Promise<void> {
    const open: Array<[string, Promise<{ release(): Promise<void> }>]> = [...this.sessions];
    if (this.probeSession)
      open.push(["the matmul probe", this.probeSession.then((p) => ({ release: () => p.close() }))]);
    for (const [what, s] of open) {
      try {
        await (await s).release();
      } catch (err) {
        // A session that failed to open was reported by its benchmark; nothing to release.
        this.log(`closing ${what}: ${(err as Error).message}`);
      }
    }
    this.sessions.clear();
    this.probeSession = undefined;
  }
}
