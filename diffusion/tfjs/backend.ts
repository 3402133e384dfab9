/**
 * Which TensorFlow.js backend runs the trainer, in DESIGN.md's order: `@tensorflow/tfjs-node-gpu`
 * when installed, then `@tensorflow/tfjs-node`, then WebAssembly (`@tensorflow/tfjs-backend-wasm`,
 * its .wasm binaries read from the package's own dist folder, never fetched), then the plain CPU
 * backend (about 30x slower than WebAssembly). The selection records why each earlier candidate was
 * passed over, for the run log.
 *
 * The node packages are optional: they download libtensorflow at install time and are not
 * dependencies of this project, so they are only ever loaded by a dynamic import inside try/catch.
 *
 * Override with `STEPWISE_TFJS_BACKEND=node-gpu|node|wasm|cpu` (or the `prefer` option): then only
 * that backend is tried, and failing to start it is an error rather than a silent fallback.
 *
 * TensorFlow.js keeps one active backend per process (its engine is a global), so selection is a
 * process-wide act: select once at start-up, before creating tensors.
 */
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import { registerTfjsGradients } from "./gradients.js";

export const TFJS_BACKENDS = ["node-gpu", "node", "wasm", "cpu"] as const;
export type TfjsBackendName = (typeof TFJS_BACKENDS)[number];

export const TFJS_BACKEND_ENV = "STEPWISE_TFJS_BACKEND";

interface Candidate {
  readonly name: TfjsBackendName;
  /** The npm package whose import registers the backend. */
  readonly packageName: string;
  /** The name TensorFlow.js registers it under. */
  readonly tfName: string;
}

const CANDIDATES: readonly Candidate[] = [
  { name: "node-gpu", packageName: "@tensorflow/tfjs-node-gpu", tfName: "tensorflow" },
  { name: "node", packageName: "@tensorflow/tfjs-node", tfName: "tensorflow" },
  { name: "wasm", packageName: "@tensorflow/tfjs-backend-wasm", tfName: "wasm" },
  { name: "cpu", packageName: "@tensorflow/tfjs-backend-cpu", tfName: "cpu" },
];

/** Why a candidate was not used. */
export interface TfjsBackendAttempt {
  readonly name: TfjsBackendName;
  readonly packageName: string;
  readonly outcome: "not-installed" | "failed";
  /** The import or initialisation error, in one line. */
  readonly detail: string;
}

export interface TfjsBackendSelection {
  readonly name: TfjsBackendName;
  readonly packageName: string;
  /** The name `tf.getBackend()` reports ("tensorflow", "wasm", "cpu"). */
  readonly tfName: string;
  /** What else is worth logging about it (WebAssembly SIMD, the .wasm folder). */
  readonly detail: string;
  /** The candidates tried before it, in order, and why each was passed over. */
  readonly passedOver: readonly TfjsBackendAttempt[];
  /** Set when an override chose the backend ("STEPWISE_TFJS_BACKEND=wasm", "prefer option"). */
  readonly forcedBy?: string;
}

/** No backend could be started, or the override names one that cannot; carries every attempt. */
export class TfjsBackendError extends Error {
  constructor(
    message: string,
    readonly attempts: readonly TfjsBackendAttempt[],
  ) {
    super(message);
    this.name = "TfjsBackendError";
  }
}

/** Loads a package by name: `import()` by default; tests substitute it to simulate packages. */
export type ModuleImporter = (specifier: string) => Promise<unknown>;

export interface SelectTfjsBackendOptions {
  /** Use only this backend (overrides the environment variable). */
  readonly prefer?: TfjsBackendName;
  /** Where to read STEPWISE_TFJS_BACKEND (default process.env). */
  readonly env?: Readonly<Record<string, string | undefined>>;
  readonly importer?: ModuleImporter;
  /**
   * Register TensorFlow.js gradient functions too (default true; about 1 s once per process, see
   * gradients.ts). Inference-only callers may pass false.
   */
  readonly gradients?: boolean;
}

const defaultImporter: ModuleImporter = (specifier) => import(specifier);

function isBackendName(value: string): value is TfjsBackendName {
  return (TFJS_BACKENDS as readonly string[]).includes(value);
}

function oneLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.split("\n")[0].trim();
}

/** Node's "Cannot find package 'X'" for the candidate itself (a missing dependency of it is a failure). */
function isNotInstalled(err: unknown, packageName: string): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return (
    (code === "ERR_MODULE_NOT_FOUND" || code === "MODULE_NOT_FOUND") &&
    err instanceof Error &&
    err.message.includes(`'${packageName}'`)
  );
}

/** The folder holding the package's .wasm binaries. */
export function wasmBinaryFolder(): string {
  const require = createRequire(import.meta.url);
  return join(dirname(require.resolve("@tensorflow/tfjs-backend-wasm/package.json")), "dist");
}

interface WasmModule {
  setWasmPaths(prefix: string): void;
}

/** Package-specific set-up between the import and `tf.setBackend`. */
function prepare(candidate: Candidate, module: unknown): string {
  if (candidate.name !== "wasm") return "";
  const folder = wasmBinaryFolder();
  // setWasmPaths throws once the backend is initialised; a second selection reuses it as it is.
  if (!tf.findBackend("wasm")) (module as WasmModule).setWasmPaths(`${folder}/`);
  return folder;
}

/**
 * tf.setBackend reports a failed initialisation only as `false`, printing the cause with
 * console.warn; collect those lines (still printing them) so the selection can carry the cause.
 */
async function setBackendCapturingWarnings(tfName: string): Promise<{ ok: boolean; warnings: string[] }> {
  const warnings: string[] = [];
  const original = console.warn;
  console.warn = (...args: unknown[]) => {
    warnings.push(args.map(String).join(" "));
    original(...args);
  };
  try {
    const ok = await tf.setBackend(tfName);
    return { ok, warnings };
  } finally {
    console.warn = original;
  }
}

/** One candidate: import, set up, activate and run one op. Returns the attempt on failure. */
async function tryCandidate(
  candidate: Candidate,
  importer: ModuleImporter,
): Promise<{ detail: string } | TfjsBackendAttempt> {
  const failed = (outcome: TfjsBackendAttempt["outcome"], detail: string): TfjsBackendAttempt => ({
    name: candidate.name,
    packageName: candidate.packageName,
    outcome,
    detail,
  });
  let module: unknown;
  try {
    module = await importer(candidate.packageName);
  } catch (err) {
    if (isNotInstalled(err, candidate.packageName)) return failed("not-installed", "not installed");
    return failed("failed", `failed to load: ${oneLine(err)}`);
  }
  try {
    const folder = prepare(candidate, module);
    if (!tf.findBackendFactory(candidate.tfName)) {
      return failed(
        "failed",
        `loaded, but no "${candidate.tfName}" backend was registered with this @tensorflow/tfjs-core ${tf.version_core}`,
      );
    }
    const { ok, warnings } = await setBackendCapturingWarnings(candidate.tfName);
    if (!ok) {
      const cause = warnings.find((w) => !w.startsWith("Initialization of backend")) ?? "no cause given";
      return failed("failed", `failed to initialise: ${oneLine(cause)}`);
    }
    // A backend can initialise and still fail on first use (a GPU build without its CUDA libraries).
    const two = tf.tidy(() => tf.add(tf.scalar(1), tf.scalar(1)).dataSync()[0]);
    if (two !== 2) return failed("failed", `initialised, but computed 1 + 1 = ${two}`);
    const simd = candidate.name === "wasm" && tf.env().getBool("WASM_HAS_SIMD_SUPPORT");
    const detail =
      candidate.name === "wasm"
        ? `${simd ? "SIMD" : "no SIMD"}, binaries from ${folder}`
        : candidate.packageName;
    return { detail };
  } catch (err) {
    return failed("failed", `failed to initialise: ${oneLine(err)}`);
  }
}

function requestedBackend(
  options: SelectTfjsBackendOptions,
): { name: TfjsBackendName; by: string } | undefined {
  if (options.prefer) return { name: options.prefer, by: "prefer option" };
  const value = (options.env ?? process.env)[TFJS_BACKEND_ENV]?.trim();
  if (!value) return undefined;
  if (!isBackendName(value)) {
    throw new TfjsBackendError(
      `${TFJS_BACKEND_ENV}="${value}" is not a TensorFlow.js backend (expected one of ${TFJS_BACKENDS.join(", ")})`,
      [],
    );
  }
  return { name: value, by: `${TFJS_BACKEND_ENV}=${value}` };
}

let active: TfjsBackendSelection | undefined;

/**
 * Activate the first TensorFlow.js backend that starts, in DESIGN.md's order (or the one the
 * override names), and say why the earlier ones were not used.
 */
export async function selectTfjsBackend(
  options: SelectTfjsBackendOptions = {},
): Promise<TfjsBackendSelection> {
  const importer = options.importer ?? defaultImporter;
  const forced = requestedBackend(options);
  const candidates = forced ? CANDIDATES.filter((c) => c.name === forced.name) : CANDIDATES;
  const passedOver: TfjsBackendAttempt[] = [];
  for (const candidate of candidates) {
    const result = await tryCandidate(candidate, importer);
    if ("outcome" in result) {
      passedOver.push(result);
      continue;
    }
    if (options.gradients !== false) await registerTfjsGradients();
    active = {
      name: candidate.name,
      packageName: candidate.packageName,
      tfName: candidate.tfName,
      detail: result.detail,
      passedOver,
      ...(forced ? { forcedBy: forced.by } : {}),
    };
    return active;
  }
  const tried = passedOver.map((a) => `${a.name}: ${a.detail}`).join("; ");
  throw new TfjsBackendError(
    forced
      ? `the TensorFlow.js backend ${forced.name} asked for by ${forced.by} could not be started (${tried})`
      : `no TensorFlow.js backend could be started (${tried})`,
    passedOver,
  );
}

/**
 * The backend selected in this process, or a selection with `options` when none is active (or
 * something else switched TensorFlow.js to another backend since).
 */
export async function ensureTfjsBackend(
  options: SelectTfjsBackendOptions = {},
): Promise<TfjsBackendSelection> {
  if (active && tf.getBackend() === active.tfName) return active;
  return selectTfjsBackend(options);
}

/** One line for the run log: "tfjs backend wasm (SIMD, ...); passed over node-gpu: not installed, ...". */
export function describeTfjsBackend(selection: TfjsBackendSelection): string {
  const head = `tfjs backend ${selection.name} (${selection.detail})`;
  const forced = selection.forcedBy ? `, forced by ${selection.forcedBy}` : "";
  const over = selection.passedOver.map((a) => `${a.name}: ${a.detail}`).join("; ");
  return over ? `${head}${forced}; passed over ${over}` : `${head}${forced}`;
}
