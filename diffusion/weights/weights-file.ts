/**
 * One way in for weight files whatever their format: safetensors, or a PyTorch checkpoint
 * (`.bin`/`.pt`/`.ckpt`), told apart by their first bytes rather than their names.
 */
import { open } from "node:fs/promises";
import type { DType, Float32Tensor, Tensor } from "../tensor.js";
import { readAt } from "./file-io.js";
import { LEGACY_TORCH_MAGIC, PytorchCheckpoint, startsWith, ZIP_MAGIC } from "./pytorch-checkpoint.js";
import { SafetensorsFile } from "./safetensors.js";

export interface WeightsInfo {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
}

/** What SafetensorsFile and PytorchCheckpoint both offer: names up front, tensors read one by one. */
export interface WeightsReader {
  readonly path: string;
  names(): string[];
  has(name: string): boolean;
  /** Dtype and shape without reading data; undefined when absent. */
  find(name: string): WeightsInfo | undefined;
  read(name: string): Promise<Tensor>;
  readFloat32(name: string): Promise<Float32Tensor>;
  close(): Promise<void>;
}

export async function openWeights(path: string): Promise<WeightsReader> {
  const head = new Uint8Array(LEGACY_TORCH_MAGIC.length);
  const handle = await open(path, "r");
  try {
    await readAt(handle, head, 0);
  } finally {
    await handle.close();
  }
  // Legacy torch files go to PytorchCheckpoint too, which refuses them with advice.
  const isCheckpoint = startsWith(head, ZIP_MAGIC) || startsWith(head, LEGACY_TORCH_MAGIC);
  return isCheckpoint ? PytorchCheckpoint.open(path) : SafetensorsFile.open(path);
}
