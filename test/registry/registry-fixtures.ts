/**
 * What the registry tests share: adapters with known values (small ones, and one of hundreds of
 * megabytes made cheaply from a few big modules), stores to run the suite on (a fresh filesystem
 * root or a fresh S3 prefix per registry), and the description of a store that a child process
 * can open again.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type LoraAdapter,
  type LoraModuleWeights,
  loraAdapter,
  loraModule,
} from "../../diffusion/lora/adapter.js";
import { type Float32Tensor, float32 } from "../../diffusion/tensor.js";
import { FsStore } from "../../registry/fs-store.js";
import { listAll, type ObjectStore } from "../../registry/object-store.js";
import { S3Store } from "../../registry/s3-store.js";
import type { S3TestTarget } from "../setup/s3-target.js";

/** A store a child process can open: a filesystem root, or an S3 prefix with its endpoint. */
export type StoreSpec =
  | { readonly kind: "fs"; readonly root: string }
  | { readonly kind: "s3"; readonly target: S3TestTarget; readonly prefix: string };

export function openSpec(spec: StoreSpec): ObjectStore {
  if (spec.kind === "fs") return new FsStore(spec.root);
  const { target } = spec;
  return new S3Store({
    bucket: target.bucket,
    prefix: spec.prefix,
    endpoint: target.endpoint,
    region: target.region,
    forcePathStyle: true,
    credentials: { accessKeyId: target.accessKeyId, secretAccessKey: target.secretAccessKey },
  });
}

/** Hands out fresh, empty stores of one kind and removes what they hold at the end. */
export interface StoreFactory {
  readonly kind: "fs" | "s3";
  /** A new empty store location. */
  fresh(): Promise<StoreSpec>;
  cleanup(): Promise<void>;
}

export function fsStoreFactory(): StoreFactory {
  const roots: string[] = [];
  return {
    kind: "fs",
    async fresh() {
      const root = await mkdtemp(join(tmpdir(), "stepwise-registry-"));
      roots.push(root);
      return { kind: "fs", root };
    },
    async cleanup() {
      await Promise.all(roots.map((root) => rm(root, { recursive: true, force: true })));
    },
  };
}

export function s3StoreFactory(target: S3TestTarget): StoreFactory {
  const runPrefix = `registry-${Date.now()}-${randomBytes(4).toString("hex")}`;
  let count = 0;
  return {
    kind: "s3",
    async fresh() {
      count += 1;
      return { kind: "s3", target, prefix: `${runPrefix}/${count}` };
    },
    async cleanup() {
      // Free the memstore-backed radosgw for the other suites of this run.
      const store = openSpec({ kind: "s3", target, prefix: runPrefix }) as S3Store;
      try {
        for await (const object of listAll(store, "")) await store.delete(object.key);
      } finally {
        store.destroy();
      }
    },
  };
}

/** A [rows, cols] tensor of small distinct values from a seed (exact in float32). */
export function patterned(rows: number, cols: number, seed: number): Float32Tensor {
  const data = new Float32Array(rows * cols);
  for (let i = 0; i < data.length; i++) data[i] = (((i * 7 + seed * 13) % 31) - 15) / 16;
  return float32([rows, cols], data);
}

/** Modules shaped like attention projections of a tiny UNet, seeded so that adapters differ. */
export function smallAdapter(
  seed = 1,
  options: { rank?: number; alpha?: number; modules?: number } = {},
): LoraAdapter {
  const rank = options.rank ?? 4;
  const entries: [string, LoraModuleWeights][] = [];
  for (let i = 0; i < (options.modules ?? 3); i++) {
    const block = Math.floor(i / 3);
    const module = `unet.down_blocks.1.attentions.0.transformer_blocks.${block}.attn1.to_${["q", "k", "v"][i % 3]}`;
    entries.push([
      module,
      loraModule(
        module,
        patterned(rank, 16, seed + i),
        patterned(24, rank, seed + 2 * i + 1),
        options.alpha ?? rank,
      ),
    ]);
  }
  return loraAdapter(entries);
}

/**
 * An adapter of about `bytes` bytes in `modules` big modules, filled by a cheap integer hash (a
 * few hundred milliseconds for 400 MB; every value a finite float).
 */
export function bigAdapter(bytes: number, modules = 4, rank = 128): LoraAdapter {
  const features = Math.floor(bytes / (modules * 2 * rank * Float32Array.BYTES_PER_ELEMENT));
  const entries: [string, LoraModuleWeights][] = [];
  for (let m = 0; m < modules; m++) {
    const module = `unet.big_blocks.${m}.proj`;
    const fill = (rows: number, cols: number, salt: number) => {
      const data = new Float32Array(rows * cols);
      for (let i = 0; i < data.length; i++) data[i] = (Math.imul(i ^ salt, 0x9e3779b1) >>> 16) / 65536 - 0.5;
      return float32([rows, cols], data);
    };
    entries.push([
      module,
      loraModule(module, fill(rank, features, 2 * m), fill(features, rank, 2 * m + 1), rank),
    ]);
  }
  return loraAdapter(entries);
}

/** Whether two adapters hold the same modules, in the same order, with bit-identical tensors and alphas. */
export function sameAdapter(a: LoraAdapter, b: LoraAdapter): boolean {
  const names = [...a.modules.keys()];
  if (names.join("\n") !== [...b.modules.keys()].join("\n")) return false;
  return names.every((name) => {
    const x = a.modules.get(name)!;
    const y = b.modules.get(name)!;
    return (
      x.alpha === y.alpha &&
      x.down.shape.join() === y.down.shape.join() &&
      x.up.shape.join() === y.up.shape.join() &&
      Buffer.from(x.down.data.buffer, x.down.data.byteOffset, x.down.data.byteLength).equals(
        Buffer.from(y.down.data.buffer, y.down.data.byteOffset, y.down.data.byteLength),
      ) &&
      Buffer.from(x.up.data.buffer, x.up.data.byteOffset, x.up.data.byteLength).equals(
        Buffer.from(y.up.data.buffer, y.up.data.byteOffset, y.up.data.byteLength),
      )
    );
  });
}
