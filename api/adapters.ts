/**
 * How the API turns the LoRAs a request names into slot feeds. The registry-backed implementation
 * (adapter cache + watcher) lives in adapter-cache.ts; this file holds the shared shapes.
 */
import type { LoraFeeds } from "../diffusion/pipelines/pipeline-models.js";
import type { LoadedModel } from "./model-pool.js";

/** A LoRA as a request names it: `name`, pinned to a version or an alias (default `latest`). */
export interface LoraRef {
  readonly name: string;
  readonly version?: number;
  readonly alias?: string;
  readonly weight: number;
}

export interface ResolvedLora {
  readonly name: string;
  readonly version: number;
  readonly weight: number;
  readonly sha256: string;
}

export interface ResolvedLoras {
  /** Identifies the combined feeds, for batching requests that use the same adapters. */
  readonly key: string;
  readonly feeds: LoraFeeds;
  readonly used: readonly ResolvedLora[];
}

export interface AdapterResolver {
  /** Resolve names to versions and decoded feeds for this model; throws the API's 404/422/503 errors. */
  resolve(model: LoadedModel, refs: readonly LoraRef[]): Promise<ResolvedLoras | undefined>;
}
