/**
 * Test-only zip writer (APPNOTE.TXT 6.3), laid out the way PyTorch's PyTorchStreamWriter (miniz)
 * writes checkpoints, as seen in files from torch 2.13: stored entries whose data is 64-byte
 * aligned by an "FB" extra field of 'Z' padding (caffe2/serialize/inline_container.cc getPadding),
 * sizes and CRC in data descriptors (flags 0x0808), version and date fields 0, and a zip64 end
 * record even for small files. Entries may be sparse holes, so a multi-GB archive costs no disk.
 */
import { open } from "node:fs/promises";
import { crc32, deflateRawSync } from "node:zlib";

export interface ZipInput {
  readonly name: string;
  /** Bytes, or a run of zeros written as a hole (give its `crc`, computing it would read GBs). */
  readonly data: Uint8Array | { readonly zeros: number; readonly crc: number };
  readonly deflate?: boolean;
}

export interface ZipOptions {
  /** Align stored data to this many bytes with an FB extra field (torch: 64; 0 for none). */
  readonly align?: number;
  /**
   * "auto": zip64 fields and end records only where a size or offset needs them; "records": zip64
   * end records always, entry fields where needed (what torch writes); "always": everything zip64.
   */
  readonly zip64?: "auto" | "records" | "always";
  /** Sizes and CRC after the data (general purpose bit 3) instead of in the local header (torch: yes). */
  readonly dataDescriptor?: boolean;
}

/** A piece of the archive: bytes, or zeros left as a hole. */
export type ZipPart = Uint8Array | { readonly hole: number };

const U32_MAX = 0xffffffff;
const TORCH_ALIGNMENT = 64;

class Bytes {
  private readonly b: number[] = [];
  u16(v: number): this {
    this.b.push(v & 0xff, (v >>> 8) & 0xff);
    return this;
  }
  u32(v: number): this {
    this.b.push(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
    return this;
  }
  u64(v: number): this {
    return this.u32(v % 2 ** 32).u32(Math.floor(v / 2 ** 32));
  }
  raw(bytes: Uint8Array | number[]): this {
    for (const x of bytes) this.b.push(x);
    return this;
  }
  get length(): number {
    return this.b.length;
  }
  done(): Uint8Array {
    return Uint8Array.from(this.b);
  }
}

/** Lay out an archive as parts (bytes and holes). */
export function buildZip(inputs: readonly ZipInput[], options: ZipOptions = {}): ZipPart[] {
  const align = options.align ?? TORCH_ALIGNMENT;
  const parts: ZipPart[] = [];
  const central = new Bytes();
  let offset = 0;
  for (const input of inputs) {
    const name = new TextEncoder().encode(input.name);
    const isHole = !(input.data instanceof Uint8Array);
    const raw = input.data instanceof Uint8Array ? input.data : undefined;
    const size = raw ? raw.length : (input.data as { zeros: number }).zeros;
    const crc = raw ? crc32(raw) : (input.data as { crc: number }).crc;
    const payload = raw && input.deflate ? new Uint8Array(deflateRawSync(raw)) : raw;
    const compressedSize = payload ? payload.length : size;
    const method = input.deflate && !isHole ? 8 : 0;
    const zip64 = options.zip64 === "always" || size >= U32_MAX || offset >= U32_MAX;
    const descriptor = options.dataDescriptor ?? false;

    const zip64Local = new Bytes();
    if (zip64) zip64Local.u16(0x0001).u16(16).u64(size).u64(compressedSize);
    const headerFixed = 30 + name.length + zip64Local.length;
    let padding = 0;
    if (align > 0 && method === 0) {
      const start = offset + headerFixed + 4; // the FB field's own 4-byte header
      padding = (align - (start % align)) % align;
    }
    const local = new Bytes()
      .u32(0x04034b50)
      .u16(zip64 ? 45 : 0)
      .u16(0x0800 | (descriptor ? 0x0008 : 0))
      .u16(method)
      .u16(0)
      .u16(0)
      .u32(descriptor ? 0 : crc)
      .u32(zip64 ? U32_MAX : descriptor ? 0 : compressedSize)
      .u32(zip64 ? U32_MAX : descriptor ? 0 : size)
      .u16(name.length)
      .u16(zip64Local.length + (align > 0 && method === 0 ? 4 + padding : 0))
      .raw(name)
      .raw(zip64Local.done());
    if (align > 0 && method === 0) local.u16(0x4246).u16(padding).raw(new Array(padding).fill(0x5a));
    parts.push(local.done());
    parts.push(payload ?? { hole: size });
    const localOffset = offset;
    offset += local.length + compressedSize;
    if (descriptor) {
      const dd = new Bytes().u32(0x08074b50).u32(crc);
      if (zip64) dd.u64(compressedSize).u64(size);
      else dd.u32(compressedSize).u32(size);
      parts.push(dd.done());
      offset += dd.length;
    }

    const zip64Central = new Bytes();
    if (zip64) zip64Central.u16(0x0001).u16(24).u64(size).u64(compressedSize).u64(localOffset);
    central
      .u32(0x02014b50)
      .u16(zip64 ? 45 : 0)
      .u16(zip64 ? 45 : 0)
      .u16(0x0800 | (descriptor ? 0x0008 : 0))
      .u16(method)
      .u16(0)
      .u16(0)
      .u32(crc)
      .u32(zip64 ? U32_MAX : compressedSize)
      .u32(zip64 ? U32_MAX : size)
      .u16(name.length)
      .u16(zip64Central.length)
      .u16(0)
      .u16(0)
      .u16(0)
      .u32(0)
      .u32(zip64 ? U32_MAX : localOffset)
      .raw(name)
      .raw(zip64Central.done());
  }
  const centralOffset = offset;
  const centralBytes = central.done();
  parts.push(centralBytes);
  offset += centralBytes.length;
  const end = new Bytes();
  const needs64 = options.zip64 === "always" || centralOffset >= U32_MAX || inputs.length >= 0xffff;
  if (needs64 || options.zip64 === "records") {
    end
      .u32(0x06064b50)
      .u64(44)
      .u16(0x031e)
      .u16(45)
      .u32(0)
      .u32(0)
      .u64(inputs.length)
      .u64(inputs.length)
      .u64(centralBytes.length)
      .u64(centralOffset)
      .u32(0x07064b50)
      .u32(0)
      .u64(offset)
      .u32(1);
  }
  end
    .u32(0x06054b50)
    .u16(0)
    .u16(0)
    .u16(needs64 ? 0xffff : inputs.length)
    .u16(needs64 ? 0xffff : inputs.length)
    .u32(needs64 ? U32_MAX : centralBytes.length)
    .u32(needs64 ? U32_MAX : centralOffset)
    .u16(0);
  parts.push(end.done());
  return parts;
}

/** Concatenate parts in memory (holes become zeros: only for small archives). */
export function zipBytes(parts: readonly ZipPart[]): Uint8Array {
  const size = parts.reduce((n, p) => n + (p instanceof Uint8Array ? p.length : p.hole), 0);
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    if (p instanceof Uint8Array) out.set(p, at);
    at += p instanceof Uint8Array ? p.length : p.hole;
  }
  return out;
}

/** Write parts to a file, leaving holes unwritten (sparse). */
export async function writeZipFile(path: string, parts: readonly ZipPart[]): Promise<number> {
  const handle = await open(path, "w");
  let at = 0;
  try {
    for (const p of parts) {
      if (p instanceof Uint8Array) await handle.write(p, 0, p.length, at);
      at += p instanceof Uint8Array ? p.length : p.hole;
    }
    await handle.truncate(at);
  } finally {
    await handle.close();
  }
  return at;
}
