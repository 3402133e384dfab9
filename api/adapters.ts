/**
 * How the API turns the LoRAs a request names into slot feeds. The registry-backed implementation
 * (adapter cache + watcher) lives in adapter-cache.ts; this file holds the shared shapes.
 */
import type { LoraFeeds } from "../diffusion/pipelines/pipeline-models.js";
import type { WeightedLoraRef } from "../registry/names.js";
import type { LoadedModel } from "./model-pool.js";

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
  resolve(model: LoadedModel, refs: readonly WeightedLoraRef[]): Promise<ResolvedLoras | undefined>;
}
