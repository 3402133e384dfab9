/**
 * Reads a model's metadata_props without loading the model. onnxruntime-node 1.30 exposes only
 * input and output metadata, not metadata_props, so the engine reads them here: the top-level
 * ModelProto fields are walked on disk and the graph (which holds inline weights, up to 2 GB) is
 * skipped by its length prefix.
 */
import { open } from "node:fs/promises";
import { onnx } from "./proto.js";

/** metadata_props is field 14 of ModelProto (onnx.proto). */
const METADATA_PROPS_FIELD = 14;
/** A tag plus a length prefix are at most 2 varints of 10 bytes. */
const HEADER_BYTES = 20;

export class OnnxMetadataError extends Error {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
    this.name = "OnnxMetadataError";
  }
}

/** A protobuf varint at `at`: [value, bytes used]. Arithmetic, not bit ops, so lengths may pass 2^31. */
function varint(bytes: Uint8Array, at: number, file: string): [number, number] {
  let value = 0;
  for (let i = 0; i < 10 && at + i < bytes.length; i++) {
    const b = bytes[at + i];
    value += (b & 0x7f) * 2 ** (7 * i);
    if (b < 0x80) return [value, i + 1];
  }
  throw new OnnxMetadataError(file, `truncated or invalid varint at byte ${at}`);
}

export async function readOnnxMetadata(path: string): Promise<Record<string, string>> {
  const file = await open(path, "r");
  try {
    const size = (await file.stat()).size;
    const metadata: Record<string, string> = {};
    const head = new Uint8Array(HEADER_BYTES);
    let pos = 0;
    while (pos < size) {
      const { bytesRead } = await file.read(head, 0, HEADER_BYTES, pos);
      const view = head.subarray(0, bytesRead);
      const [tag, tagBytes] = varint(view, 0, path);
      const field = Math.floor(tag / 8);
      switch (tag % 8) {
        case 0: // varint (ir_version, model_version)
          pos += tagBytes + varint(view, tagBytes, path)[1];
          break;
        case 1: // 64-bit
          pos += tagBytes + 8;
          break;
        case 5: // 32-bit
          pos += tagBytes + 4;
          break;
        case 2: {
          const [length, lengthBytes] = varint(view, tagBytes, path);
          const start = pos + tagBytes + lengthBytes;
          if (field === METADATA_PROPS_FIELD) {
            const entry = new Uint8Array(length);
            await file.read(entry, 0, length, start);
            const { key, value } = onnx.StringStringEntryProto.decode(entry);
            metadata[key] = value;
          }
          pos = start + length;
          break;
        }
        default:
          throw new OnnxMetadataError(path, `unexpected protobuf wire type ${tag % 8} at byte ${pos}`);
      }
    }
    if (pos !== size)
      throw new OnnxMetadataError(path, `the last field runs past the end of the file (${size} bytes)`);
    return metadata;
  } finally {
    await file.close();
  }
}
