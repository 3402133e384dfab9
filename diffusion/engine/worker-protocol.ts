/**
 * Messages between the main thread and the onnxruntime worker. Tensors travel as a dtype, a shape
 * and an ArrayBuffer that is transferred, not copied.
 *
 * Resident feeds are groups of tensors sent once under a key and kept in the worker; later runs name
 * the key. A group is loaded lazily with the first run that needs it (an adapter's LoRA factors) or
 * explicitly with `keep` (trained parameters, replaced after each optimizer step). The main thread
 * decides what is resident (onnx-runtime.ts): it sends `feeds` when the worker does not hold the key,
 * and `drop`s what it evicts, in the same ordered stream of messages.
 */
import type { DType } from "../tensor.js";
import type { ResolvedProvider } from "./execution-provider.js";
import type { GraphCacheSetting } from "./optimized-graph-cache.js";

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

/**
 * How a session was opened: from the optimised-graph cache ("hit"), from its source with the cache
 * entry written ("written"), from its source with no cache ("off": not a file, not the CPU, or
 * turned off) or with a cache that could not be used ("unavailable", `warning` says why).
 */
export interface SessionOpen {
  readonly cache: "hit" | "written" | "off" | "unavailable";
  /** Wall time of the session's creation, cache work included. */
  readonly ms: number;
  /** The cache entry's folder, on "hit" and "written". */
  readonly entry?: string;
  /** Why the cache was not used, or why an entry was rebuilt. */
  readonly warning?: string;
}

export type WorkerRequest =
  | {
      readonly type: "load";
      readonly id: number;
      readonly sessions: readonly SessionSpec[];
      readonly provider: "cpu" | "cuda" | "auto";
      readonly deviceId: number;
      readonly intraOpThreads: number;
      /** false: onnxruntime's threads do not spin-wait (execution-provider.ts, `spinning`). */
      readonly spinning?: boolean;
      readonly graphCache: GraphCacheSetting;
    }
  | {
      readonly type: "run";
      readonly id: number;
      readonly session: string;
      readonly feeds: Readonly<Record<string, WireTensor>>;
      readonly outputs?: readonly string[];
      /**
       * A group of feeds kept between runs and added to `feeds` (those the session takes): `feeds`
       * present to (re)load the group under `key` first.
       */
      readonly resident?: {
        readonly key: string;
        readonly feeds?: Readonly<Record<string, WireTensor>>;
      };
      /** Resident groups to forget before this run. */
      readonly drop?: readonly string[];
    }
  /** Keep a group of feeds under `key`, replacing the group of that key (parameters after an optimizer step). */
  | {
      readonly type: "keep";
      readonly id: number;
      readonly key: string;
      readonly feeds: Readonly<Record<string, WireTensor>>;
    }
  /** Forget resident groups and release sessions, by name. */
  | {
      readonly type: "release";
      readonly id: number;
      readonly keys?: readonly string[];
      readonly sessions?: readonly string[];
    }
  | { readonly type: "close"; readonly id: number };

export type WorkerResponse =
  | {
      readonly type: "loaded";
      readonly id: number;
      readonly provider: ResolvedProvider;
      readonly sessions: Readonly<Record<string, SessionInfo>>;
      readonly opens: Readonly<Record<string, SessionOpen>>;
    }
  | { readonly type: "result"; readonly id: number; readonly outputs: Readonly<Record<string, WireTensor>> }
  | { readonly type: "closed"; readonly id: number }
  | { readonly type: "done"; readonly id: number }
  | { readonly type: "error"; readonly id: number; readonly message: string; readonly kind?: string };
