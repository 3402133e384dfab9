/** What the API uses of the LoRA registry (registry/registry.ts implements it). */
import type { LoraAdapter } from "../diffusion/lora/adapter.js";
import type { LoraManifest } from "../registry/manifest.js";
import type { AdapterManifest } from "./adapter-cache.js";

export interface LoraRegistryApi {
  list(): Promise<
    Array<{
      name: string;
      versions: number[];
      aliases: Record<string, number>;
      deleted: Record<string, string>;
    }>
  >;
  show(name: string): Promise<{ name: string; versions: LoraManifest[]; aliases: Record<string, number> }>;
  resolve(ref: { name: string; version?: number; alias?: string }): Promise<AdapterManifest>;
  pull(name: string, version: number): Promise<{ manifest: AdapterManifest; adapter: LoraAdapter }>;
  publish(
    name: string,
    adapter: LoraAdapter,
    info: {
      base: { family: "sd15" | "sd2" | "sdxl"; modelHash?: string };
      sourceFormat: string;
      metadata?: Record<string, unknown>;
    },
    options?: { alias?: string },
  ): Promise<LoraManifest>;
  promote(
    name: string,
    alias: string,
    version: number,
    options?: { expected?: number | null },
  ): Promise<unknown>;
  changeToken(): Promise<string>;
}
