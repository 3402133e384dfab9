/**
 * Messages between the main thread and the onnxruntime worker. Tensors travel as a dtype, a shape
 * and an ArrayBuffer that is transferred, not copied.
 *
 * Resident feeds (LoRA factors) are sent once under a key and kept in the worker; later runs name
 * the key. The main thread decides what is resident (onnx-runtime.ts): it sends `feeds` when the
 * worker does not hold the key, and `drop`s what it evicts, in the same ordered stream of messages.
 */
import type { DType } from "../tensor.js";
import type { ResolvedProvider } from "./execution-provider.js";

export interface WireTensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly buffer: ArrayBuffer;
}

export interface SessionSpec {
  readonly name: string;
  readonly path: string;
}

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
      /** Feeds kept between runs, added to `feeds`: `feeds` present to (re)load them under `key`. */
      readonly resident?: {
        readonly key: string;
        readonly feeds?: Readonly<Record<string, WireTensor>>;
      };
      /** Resident keys to forget before this run. */
      readonly drop?: readonly string[];
    }
  | { readonly type: "release"; readonly id: number; readonly keys: readonly string[] }
  | { readonly type: "close"; readonly id: number };

export type WorkerResponse =
  | {
      readonly type: "loaded";
      readonly id: number;
      readonly provider: ResolvedProvider;
      readonly sessions: Readonly<Record<string, SessionInfo>>;
    }
  | { readonly type: "result"; readonly id: number; readonly outputs: Readonly<Record<string, WireTensor>> }
  | { readonly type: "released"; readonly id: number }
  | { readonly type: "closed"; readonly id: number }
  | { readonly type: "error"; readonly id: number; readonly message: string; readonly kind?: string };
