/**
 * Test-only pickle emitter, two levels:
 * - `OpcodeWriter` writes opcodes one by one (hostile pickles are written with it, byte by byte);
 * - `Pickler` serialises a small model of Python objects the way CPython's pickle.Pickler does at
 *   protocol 2 (torch.save's default) or 4: same opcodes, same memo (BINPUT after every str,
 *   tuple, dict, list, global and REDUCE result; BINGET on reuse), same SETITEM/SETITEMS batching,
 *   REDUCE then items then BUILD. Python objects' identity is JS object identity; strings are
 *   memoised by value (CPython memoises by identity, which matches for interned and reused strings).
 */

// --- the object model ---------------------------------------------------------------------------------

export type Py = null | boolean | number | bigint | string | Uint8Array | PyNode;

export type PyNode =
  | { readonly kind: "float"; readonly value: number }
  | { readonly kind: "tuple"; readonly items: readonly Py[] }
  | { readonly kind: "list"; readonly items: readonly Py[] }
  | { readonly kind: "dict"; readonly entries: ReadonlyArray<readonly [Py, Py]> }
  | { readonly kind: "global"; readonly module: string; readonly name: string }
  | {
      readonly kind: "reduce";
      readonly func: Py;
      readonly args: Py;
      readonly dictItems?: ReadonlyArray<readonly [Py, Py]>;
      readonly state?: Py;
    }
  | { readonly kind: "persistent"; readonly pid: Py };

export const py = {
  float: (value: number): PyNode => ({ kind: "float", value }),
  tuple: (...items: Py[]): PyNode => ({ kind: "tuple", items }),
  list: (...items: Py[]): PyNode => ({ kind: "list", items }),
  dict: (entries: Array<readonly [Py, Py]>): PyNode => ({ kind: "dict", entries }),
  global: (module: string, name: string): PyNode => ({ kind: "global", module, name }),
  reduce: (func: Py, args: Py, extra: { dictItems?: Array<readonly [Py, Py]>; state?: Py } = {}): PyNode => ({
    kind: "reduce",
    func,
    args,
    ...extra,
  }),
  persistent: (pid: Py): PyNode => ({ kind: "persistent", pid }),
};

// --- opcodes -------------------------------------------------------------------------------------------

export class OpcodeWriter {
  private readonly chunks: number[] = [];

  byte(...values: number[]): this {
    this.chunks.push(...values);
    return this;
  }

  bytes(values: Uint8Array): this {
    for (const v of values) this.chunks.push(v);
    return this;
  }

  u16(v: number): this {
    return this.byte(v & 0xff, (v >>> 8) & 0xff);
  }

  u32(v: number): this {
    return this.byte(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
  }

  u64(v: number | bigint): this {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
    return this.bytes(b);
  }

  proto(p: number): this {
    return this.byte(0x80, p);
  }
  stop(): this {
    return this.byte(0x2e);
  }
  mark(): this {
    return this.byte(0x28);
  }
  none(): this {
    return this.byte(0x4e);
  }
  bool(v: boolean): this {
    return this.byte(v ? 0x88 : 0x89);
  }
  emptyTuple(): this {
    return this.byte(0x29);
  }
  emptyDict(): this {
    return this.byte(0x7d);
  }
  emptyList(): this {
    return this.byte(0x5d);
  }
  tuple(): this {
    return this.byte(0x74);
  }
  tupleN(n: 1 | 2 | 3): this {
    return this.byte(0x84 + n);
  }
  reduce(): this {
    return this.byte(0x52);
  }
  build(): this {
    return this.byte(0x62);
  }
  setitem(): this {
    return this.byte(0x73);
  }
  setitems(): this {
    return this.byte(0x75);
  }
  append(): this {
    return this.byte(0x61);
  }
  appends(): this {
    return this.byte(0x65);
  }
  binpersid(): this {
    return this.byte(0x51);
  }
  memoize(): this {
    return this.byte(0x94);
  }
  binput(i: number): this {
    return i < 256 ? this.byte(0x71, i) : this.byte(0x72).u32(i);
  }
  binget(i: number): this {
    return i < 256 ? this.byte(0x68, i) : this.byte(0x6a).u32(i);
  }
  global(module: string, name: string): this {
    return this.byte(0x63).bytes(utf8(`${module}\n${name}\n`));
  }
  stackGlobal(): this {
    return this.byte(0x93);
  }

  /** As CPython save_long at protocol >= 2. */
  int(v: number | bigint): this {
    const n = BigInt(v);
    if (n >= 0n && n <= 0xffn) return this.byte(0x4b, Number(n));
    if (n >= 0n && n <= 0xffffn) return this.byte(0x4d).u16(Number(n));
    if (n >= -(2n ** 31n) && n < 2n ** 31n) return this.byte(0x4a).u32(Number(BigInt.asUintN(32, n)));
    const bytes = encodeLong(n);
    return bytes.length < 256
      ? this.byte(0x8a, bytes.length).bytes(bytes)
      : this.byte(0x8b).u32(bytes.length).bytes(bytes);
  }

  float(v: number): this {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, v, false);
    return this.byte(0x47).bytes(b);
  }

  /** BINUNICODE (protocol 2) or SHORT_BINUNICODE when short and allowed (protocol 4). */
  unicode(s: string, short = false): this {
    const b = utf8(s);
    if (short && b.length < 256) return this.byte(0x8c, b.length).bytes(b);
    return this.byte(0x58).u32(b.length).bytes(b);
  }

  binbytes(b: Uint8Array): this {
    return b.length < 256 ? this.byte(0x43, b.length).bytes(b) : this.byte(0x42).u32(b.length).bytes(b);
  }

  frame(length: number): this {
    return this.byte(0x95).u64(length);
  }

  get length(): number {
    return this.chunks.length;
  }

  toBytes(): Uint8Array {
    return Uint8Array.from(this.chunks);
  }
}

/** Minimal little-endian two's complement, as pickle.encode_long. */
function encodeLong(n: bigint): Uint8Array {
  if (n === 0n) return new Uint8Array(0);
  const out: number[] = [];
  let x = n;
  while (true) {
    out.push(Number(x & 0xffn));
    x >>= 8n;
    const sign = out[out.length - 1] & 0x80;
    if ((x === 0n && !sign) || (x === -1n && sign)) break;
  }
  return Uint8Array.from(out);
}

function utf8(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

// --- the pickler ---------------------------------------------------------------------------------------

/** CPython's pickle BATCHSIZE for SETITEMS/APPENDS. */
const BATCH = 1000;

export class Pickler {
  private readonly out = new OpcodeWriter();
  private readonly memo = new Map<unknown, number>();

  constructor(private readonly protocol: 2 | 4 = 2) {}

  static dumps(value: Py, protocol: 2 | 4 = 2): Uint8Array {
    const p = new Pickler(protocol);
    p.save(value);
    p.out.stop();
    const body = p.out.toBytes();
    const head = new OpcodeWriter().proto(protocol);
    // Protocol 4 wraps small pickles in one frame (CPython's _Framer, frame size >= 4).
    if (protocol === 4 && body.length >= 4) head.frame(body.length);
    const bytes = head.toBytes();
    const all = new Uint8Array(bytes.length + body.length);
    all.set(bytes);
    all.set(body, bytes.length);
    return all;
  }

  private save(value: Py): void {
    if (value === null) this.out.none();
    else if (typeof value === "boolean") this.out.bool(value);
    else if (typeof value === "number" || typeof value === "bigint") this.out.int(value);
    else this.saveMemoisable(value);
  }

  private saveMemoisable(value: string | Uint8Array | PyNode): void {
    // Strings by value, globals by name (CPython memoises the class object), the rest by identity.
    const memoKey =
      typeof value === "string"
        ? `str:${value}`
        : !(value instanceof Uint8Array) && value.kind === "global"
          ? `global:${value.module}.${value.name}`
          : value;
    const known = this.memo.get(memoKey);
    if (known !== undefined) {
      this.out.binget(known);
    } else if (typeof value === "string") {
      this.out.unicode(value, this.protocol >= 4);
      this.remember(memoKey);
    } else if (value instanceof Uint8Array) {
      this.out.binbytes(value);
      this.remember(memoKey);
    } else {
      this.saveNode(value, memoKey);
    }
  }

  private saveNode(value: PyNode, memoKey: unknown): void {
    switch (value.kind) {
      case "float":
        this.out.float(value.value);
        break;
      case "tuple":
        this.saveTuple(value, value.items);
        break;
      case "list":
        this.out.emptyList();
        this.remember(value);
        this.batch(
          value.items.map((v) => [v]),
          () => this.out.append(),
          () => this.out.appends(),
        );
        break;
      case "dict":
        this.out.emptyDict();
        this.remember(value);
        this.saveItems(value.entries);
        break;
      case "global":
        if (this.protocol >= 4) {
          this.save(value.module);
          this.save(value.name);
          this.out.stackGlobal();
        } else {
          this.out.global(value.module, value.name);
        }
        this.remember(memoKey);
        break;
      case "reduce":
        this.save(value.func);
        this.save(value.args);
        this.out.reduce();
        this.remember(value);
        if (value.dictItems) this.saveItems(value.dictItems);
        if (value.state !== undefined) {
          this.save(value.state);
          this.out.build();
        }
        break;
      case "persistent":
        this.save(value.pid);
        this.out.binpersid();
        break;
    }
  }

  private saveTuple(node: PyNode, items: readonly Py[]): void {
    if (items.length === 0) {
      this.out.emptyTuple();
      return;
    }
    if (items.length <= 3) {
      for (const item of items) this.save(item);
      this.out.tupleN(items.length as 1 | 2 | 3);
    } else {
      this.out.mark();
      for (const item of items) this.save(item);
      this.out.tuple();
    }
    this.remember(node);
  }

  private saveItems(entries: ReadonlyArray<readonly [Py, Py]>): void {
    this.batch(
      entries,
      () => this.out.setitem(),
      () => this.out.setitems(),
    );
  }

  private batch(groups: ReadonlyArray<readonly Py[]>, one: () => void, many: () => void): void {
    for (let i = 0; i < groups.length; i += BATCH) {
      const slice = groups.slice(i, i + BATCH);
      if (slice.length === 1) {
        for (const v of slice[0]) this.save(v);
        one();
      } else {
        this.out.mark();
        for (const group of slice) for (const v of group) this.save(v);
        many();
      }
    }
  }

  private remember(key: unknown): void {
    const index = this.memo.size;
    this.memo.set(key, index);
    if (this.protocol >= 4) this.out.memoize();
    else this.out.binput(index);
  }
}
