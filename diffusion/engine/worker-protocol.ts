/**
 * Messages between the main thread and the onnxruntime worker. Tensors travel as a dtype, a shape
 * and an ArrayBuffer that is transferred, not copied.
 */
import type { DType } from "../tensor.js";
import type { ResolvedProvider } from "./execution-provider.js";

export interface WireTensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly buffer: ArrayBuffer;
}

/**
 * A session to load: a model file (onnxruntime finds `model.onnx_data` beside it), or model bytes
 * recorded in memory (training graphs of small models; weights inline).
 */
export type SessionSpec =
  | { readonly name: string; readonly path: string }
  | { readonly name: string; readonly model: Uint8Array };

export interface ValueInfo {
  readonly name: string;
  readonly dtype: string;
  readonly shape: ReadonlyArray<number | string>;
}

export interface SessionInfo {
  readonly inputs: readonly ValueInfo[];
  readonly outputs: readonly ValueInfo[];
}

export type WorkerRequest =
  | {
      readonly type: "load";
      readonly id: number;
      readonly sessions: readonly SessionSpec[];
      readonly provider: "cpu" | "cuda" | "auto";
      readonly deviceId: number;
      readonly intraOpThreads: number;
    }
  | {
      readonly type: "run";
      readonly id: number;
      readonly session: string;
      readonly feeds: Readonly<Record<string, WireTensor>>;
      readonly outputs?: readonly string[];
      /** Feeds taken from the resident tensors of the same name (see "keep"). */
      readonly resident?: readonly string[];
    }
  /**
   * Keep tensors in the worker under their names, replacing any of the same name, so that runs
   * feed them without a copy from the main thread each time (parameters between optimizer steps).
   */
  | { readonly type: "keep"; readonly id: number; readonly tensors: Readonly<Record<string, WireTensor>> }
  /** Forget the named resident tensors and release the named sessions. */
  | {
      readonly type: "release";
      readonly id: number;
      readonly tensors?: readonly string[];
      readonly sessions?: readonly string[];
    }
  | { readonly type: "close"; readonly id: number };

export type WorkerResponse =
  | {
      readonly type: "loaded";
      readonly id: number;
      readonly provider: ResolvedProvider;
      readonly sessions: Readonly<Record<string, SessionInfo>>;
    }
  | { readonly type: "result"; readonly id: number; readonly outputs: Readonly<Record<string, WireTensor>> }
  | { readonly type: "closed"; readonly id: number }
  | { readonly type: "done"; readonly id: number }
  | { readonly type: "error"; readonly id: number; readonly message: string; readonly kind?: string };
