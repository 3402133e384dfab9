/**
 * Training on onnxruntime (DESIGN.md, "Training path"): a training graph (a model definition, a
 * loss over `Ops`, and the backward nodes for the trained inputs, recorded by diffusion/autodiff/)
 * is recorded once per input shape and run in an onnxruntime worker thread with the engine's
 * execution provider (cpu, cuda or auto), which hands back the loss and the gradients.
 *
 * The trained parameters (LoRA factors, or every weight of a small model) are graph inputs. They
 * are kept in the worker between runs (`setParameters` after each optimizer step), so micro-batches
 * of one step, and graphs of several shapes, feed them without another copy from the main thread.
 * The optimizer stays outside (trainer/optimizer.ts, shared by every trainer and backend).
 *
 * Graphs are kept in memory when their weights fit protobuf's inline limit, and written to a
 * temporary folder otherwise (a LoRA graph of SD1.5 carries its frozen base weights as initializers).
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type GradientGraphInput,
  type GradientGraphOptions,
  LOSS_OUTPUT,
  recordGradientGraph,
} from "../autodiff/gradient-graph.js";
import type { ExecutionProviderConfig, ResolvedProvider } from "../engine/execution-provider.js";
import { OnnxRuntimeWorker } from "../engine/onnx-runtime.js";
import type { SessionSpec } from "../engine/worker-protocol.js";
import type { OnnxOps } from "../onnx/onnx-ops.js";
import { encodeOnnxModel, MODEL_FILE, OnnxWriteError, writeOnnxModel } from "../onnx/writer.js";
import { type Float32Tensor, shapeString, type Tensor } from "../tensor.js";
import { type PeakMemory, withPeakMemory } from "./peak-memory.js";

/** The worker's resident group of the trained parameters (diffusion/engine/onnx-runtime.ts, `keep`). */
const PARAMETERS_KEY = "parameters";

export class TrainingProgramError extends Error {
  constructor(message: string) {
    super(`training program: ${message}`);
    this.name = "TrainingProgramError";
  }
}

/** A recorded training graph and the names of what it returns. */
export interface TrainingGraph {
  /** The recording, its outputs marked (the loss, the gradients, and any statistics). */
  readonly ops: OnnxOps;
  /** The scalar loss output. */
  readonly loss: string;
  /** The gradient output of each trained parameter, keyed by the parameter's graph input name. */
  readonly gradients: ReadonlyMap<string, string>;
}

/**
 * Record a gradient graph (diffusion/autodiff/: the model and loss over `Ops`, LoRA factors or
 * parameters as differentiated inputs) as the program runs it. Its gradients are keyed by the
 * differentiated input's name: `<module>.lora_down`, or the parameter's name.
 */
export function recordTrainingGraph(options: GradientGraphOptions): TrainingGraph {
  const graph = recordGradientGraph(options);
  return {
    ops: graph.ops,
    loss: LOSS_OUTPUT,
    gradients: new Map(graph.gradients.map((g) => [g.input, g.output])),
  };
}

/** Gradient-graph inputs for host feeds: float32, at the feeds' (static) shapes. */
export function float32Inputs(feeds: Readonly<Record<string, Tensor>>): GradientGraphInput[] {
  return Object.entries(feeds).map(([name, t]) => ({ name, dtype: "float32", shape: t.shape }));
}

export interface TrainingStepResult {
  readonly loss: number;
  /** d loss / d parameter, by parameter name. */
  readonly gradients: Map<string, Float32Tensor>;
  /** The graph's other outputs (statistics the loss marked), by name. */
  readonly outputs: Record<string, Tensor>;
  /** Resident memory around the onnxruntime run (recording and loading excluded). */
  readonly memory: PeakMemory;
  /** Whether this step recorded and loaded a graph (the first of its shape). */
  readonly recorded: boolean;
}

interface LoadedGraph {
  readonly session: string;
  readonly loss: string;
  readonly gradients: ReadonlyMap<string, string>;
  readonly inputs: ReadonlySet<string>;
}

/** "sample:2x4x8x8,timestep:2" from feed shapes, in name order. */
function shapeKey(feeds: Readonly<Record<string, Tensor>>): string {
  return Object.keys(feeds)
    .sort()
    .map((name) => `${name}:${feeds[name].shape.join("x")}`)
    .join(",");
}

/**
 * Loaded graphs kept at most: each session holds its own copy of the frozen weights (a LoRA graph of
 * SD1.5 carries 3.4 GB), and a trainer's micro-batch layouts are few (full batches, and the last
 * partial one of a round), so the least recently used graph beyond this is released.
 */
export const DEFAULT_MAX_GRAPHS = 4;

export interface TrainingProgramOptions {
  /** Names the graphs (and the temporary folder's files). */
  readonly label?: string;
  readonly maxGraphs?: number;
}

export class TrainingProgram {
  /** By structure and shapes, least recently used first. */
  private readonly graphs = new Map<string, LoadedGraph>();
  private readonly parameterShapes = new Map<string, string>();
  /** The parameters resident in the worker now (the last `setParameters`). */
  private parameterNames: ReadonlySet<string> = new Set();
  private folder: string | undefined;
  private recordings = 0;
  private closed = false;

  private constructor(
    private readonly runtime: OnnxRuntimeWorker,
    private readonly label: string,
    private readonly maxGraphs: number,
  ) {}

  /** Start a worker for training graphs with `provider` (the engine's, usually). */
  static async start(
    provider: ExecutionProviderConfig,
    options: TrainingProgramOptions = {},
  ): Promise<TrainingProgram> {
    const maxGraphs = options.maxGraphs ?? DEFAULT_MAX_GRAPHS;
    if (!Number.isInteger(maxGraphs) || maxGraphs < 1) {
      throw new TrainingProgramError(`maxGraphs must be a positive integer, got ${maxGraphs}`);
    }
    const runtime = await OnnxRuntimeWorker.start([], provider);
    return new TrainingProgram(runtime, options.label ?? "training", maxGraphs);
  }

  /** The provider the graphs run on (known once the first graph loaded; `auto` may have fallen back). */
  get provider(): ResolvedProvider | undefined {
    return this.runtime.provider;
  }

  /** Graphs recorded so far (one per distinct structure and feed shapes, released ones included). */
  get graphCount(): number {
    return this.recordings;
  }

  /**
   * Keep the trained parameters in the worker (after each optimizer step), replacing the previous
   * set: every graph takes them from there. A parameter's shape is fixed once set.
   */
  async setParameters(parameters: ReadonlyMap<string, Tensor>): Promise<void> {
    this.assertOpen();
    const tensors: Record<string, Tensor> = {};
    for (const [name, t] of parameters) {
      const shape = shapeString(t.shape);
      const known = this.parameterShapes.get(name);
      if (known !== undefined && known !== shape) {
        throw new TrainingProgramError(`parameter ${name} was ${known}, now ${shape}`);
      }
      this.parameterShapes.set(name, shape);
      tensors[name] = t;
    }
    await this.runtime.keep(PARAMETERS_KEY, tensors);
    this.parameterNames = new Set(parameters.keys());
  }

  /**
   * One forward and backward pass at the current parameters. `structure` names what else decides
   * the graph besides the feeds' shapes (e.g. which rows pair up); `record` builds the graph the
   * first time a structure and shapes are seen.
   */
  async step(
    structure: string,
    feeds: Readonly<Record<string, Tensor>>,
    record: () => TrainingGraph | Promise<TrainingGraph>,
  ): Promise<TrainingStepResult> {
    this.assertOpen();
    const key = `${structure}|${shapeKey(feeds)}`;
    let graph = this.graphs.get(key);
    const recorded = graph === undefined;
    if (graph) {
      this.graphs.delete(key);
    } else {
      await this.evictTo(this.maxGraphs - 1);
      graph = await this.load(await record(), `graph_${++this.recordings}`);
    }
    this.graphs.set(key, graph);
    for (const name of graph.inputs) {
      if (!(name in feeds) && !this.parameterNames.has(name)) {
        throw new TrainingProgramError(
          `the graph needs the input ${name}, which is neither fed nor a parameter set with setParameters`,
        );
      }
    }
    const { value: outputs, memory } = await withPeakMemory(() =>
      this.runtime.run(graph.session, feeds, undefined, { key: PARAMETERS_KEY }),
    );
    const loss = outputs[graph.loss];
    const gradients = new Map<string, Float32Tensor>();
    for (const [parameter, output] of graph.gradients) {
      gradients.set(parameter, outputs[output] as Float32Tensor);
      delete outputs[output];
    }
    delete outputs[graph.loss];
    return { loss: Number(loss.data[0]), gradients, outputs, memory, recorded };
  }

  private async load(graph: TrainingGraph, session: string): Promise<LoadedGraph> {
    const outputs = new Set(graph.ops.graph.outputs.map((o) => o.name));
    for (const name of [graph.loss, ...graph.gradients.values()]) {
      if (!outputs.has(name)) throw new TrainingProgramError(`the recorded graph has no output ${name}`);
    }
    await this.runtime.loadSessions([await this.sessionSpec(graph.ops, session)]);
    return {
      session,
      loss: graph.loss,
      gradients: graph.gradients,
      inputs: new Set(graph.ops.graph.inputs.map((i) => i.name)),
    };
  }

  /** Release least recently used graphs until at most `count` remain. */
  private async evictTo(count: number): Promise<void> {
    for (const [key, graph] of this.graphs) {
      if (this.graphs.size <= count) return;
      this.graphs.delete(key);
      await this.runtime.release({ sessions: [graph.session] });
      if (this.folder) await rm(join(this.folder, graph.session), { recursive: true, force: true });
    }
  }

  /** In memory when the frozen weights fit inline, else written to the program's temporary folder. */
  private async sessionSpec(ops: OnnxOps, session: string): Promise<SessionSpec> {
    try {
      return { name: session, model: (await encodeOnnxModel(ops, { graphName: this.label })).model };
    } catch (err) {
      if (!(err instanceof OnnxWriteError && err.message.includes("inline limit"))) throw err;
    }
    this.folder ??= await mkdtemp(join(tmpdir(), "stepwise-training-"));
    const dir = join(this.folder, session);
    await writeOnnxModel(ops, dir, { graphName: this.label });
    return { name: session, path: join(dir, MODEL_FILE) };
  }

  private assertOpen(): void {
    if (this.closed) throw new TrainingProgramError("the program is closed");
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.runtime.close();
    if (this.folder) await rm(this.folder, { recursive: true, force: true });
  }
}
