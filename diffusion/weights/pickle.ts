/**
 * A restricted pickle interpreter: enough of protocols 2 to 5 to rebuild a state dict, and nothing
 * that can run code.
 *
 * Python's unpickler resolves GLOBAL to any importable callable and REDUCE calls it, which is how a
 * checkpoint runs `os.system`. Here every global goes through `PickleEnvironment.resolveGlobal`; a
 * name it does not know is refused on the spot with the module and name, before any argument is
 * even built. The allowed callables are TypeScript functions over plain values (see
 * torch-pickle.ts), so "calling" one only builds data.
 *
 * Opcode names and semantics follow CPython's Lib/pickle.py and Lib/pickletools.py.
 */
import { CheckpointError } from "./checkpoint-error.js";
import {
  describe,
  type PickleContext,
  type PickleEnvironment,
  PickleObject,
  type PickleValue,
  PyDict,
  PyGlobal,
  PyList,
  PySet,
  PyTuple,
  toPyInt,
} from "./pickle-values.js";

export * from "./pickle-values.js";

// --- limits -----------------------------------------------------------------------------------------

/** LONG1/LONG4 longer than this are refused: a state dict's ints (steps, epochs) are a few bytes. */
const MAX_LONG_BYTES = 1024;
/** PROTO above this is a pickle from the future we cannot vouch for. */
const HIGHEST_PROTOCOL = 5;

// --- opcodes ----------------------------------------------------------------------------------------

const Op = {
  MARK: 0x28, // (
  STOP: 0x2e, // .
  POP: 0x30, // 0
  POP_MARK: 0x31, // 1
  DUP: 0x32, // 2
  BINFLOAT: 0x47, // G
  BININT: 0x4a, // J
  BININT1: 0x4b, // K
  BININT2: 0x4d, // M
  NONE: 0x4e, // N
  PERSID: 0x50, // P
  BINPERSID: 0x51, // Q
  REDUCE: 0x52, // R
  BINSTRING: 0x54, // T
  SHORT_BINSTRING: 0x55, // U
  BINUNICODE: 0x58, // X
  EMPTY_LIST: 0x5d, // ]
  APPEND: 0x61, // a
  BUILD: 0x62, // b
  GLOBAL: 0x63, // c
  DICT: 0x64, // d
  APPENDS: 0x65, // e
  BINGET: 0x68, // h
  LONG_BINGET: 0x6a, // j
  LIST: 0x6c, // l
  BINPUT: 0x71, // q
  LONG_BINPUT: 0x72, // r
  SETITEM: 0x73, // s
  TUPLE: 0x74, // t
  SETITEMS: 0x75, // u
  EMPTY_DICT: 0x7d, // }
  EMPTY_TUPLE: 0x29, // )
  PROTO: 0x80,
  NEWOBJ: 0x81,
  TUPLE1: 0x85,
  TUPLE2: 0x86,
  TUPLE3: 0x87,
  NEWTRUE: 0x88,
  NEWFALSE: 0x89,
  LONG1: 0x8a,
  LONG4: 0x8b,
  BINBYTES: 0x42, // B
  SHORT_BINBYTES: 0x43, // C
  SHORT_BINUNICODE: 0x8c,
  BINUNICODE8: 0x8d,
  BINBYTES8: 0x8e,
  EMPTY_SET: 0x8f,
  ADDITEMS: 0x90,
  FROZENSET: 0x91,
  NEWOBJ_EX: 0x92,
  STACK_GLOBAL: 0x93,
  MEMOIZE: 0x94,
  FRAME: 0x95,
  BYTEARRAY8: 0x96,
} as const;

/** Real opcodes that are refused, with the reason given in the error. */
const REFUSED_OPCODES: ReadonlyMap<number, string> = new Map([
  [0x82, "EXT1 (extension registry lookup)"],
  [0x83, "EXT2 (extension registry lookup)"],
  [0x84, "EXT4 (extension registry lookup)"],
  [0x97, "NEXT_BUFFER (out-of-band buffer)"],
  [0x98, "READONLY_BUFFER (out-of-band buffer)"],
  [0x69, "INST (protocol 0 class instantiation)"],
  [0x6f, "OBJ (protocol 1 class instantiation)"],
  [0x49, "INT (protocol 0 text integer)"],
  [0x4c, "LONG (protocol 0 text integer)"],
  [0x46, "FLOAT (protocol 0 text float)"],
  [0x53, "STRING (protocol 0 quoted string)"],
  [0x56, "UNICODE (protocol 0 raw-unicode-escape string)"],
  [0x67, "GET (protocol 0 text memo index)"],
  [0x70, "PUT (protocol 0 text memo index)"],
]);

const utf8 = new TextDecoder("utf-8", { fatal: true });

// --- the machine ------------------------------------------------------------------------------------

/**
 * Run a pickle and return the object it builds. `source` names it in errors (e.g.
 * "archive/data.pkl"), `file` is the file it came from.
 */
export function unpickle(
  bytes: Uint8Array,
  env: PickleEnvironment,
  source: string,
  file: string,
): PickleValue {
  return new Unpickler(bytes, env, source, file).run();
}

class Unpickler implements PickleContext {
  private position = 0;
  private stack: PickleValue[] = [];
  private readonly metastack: PickleValue[][] = [];
  private readonly memo = new Map<number, PickleValue>();
  private readonly view: DataView;
  /** Offset of the opcode being run, for messages. */
  private opcodeAt = 0;

  constructor(
    private readonly bytes: Uint8Array,
    private readonly env: PickleEnvironment,
    readonly source: string,
    readonly file: string,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  error(code: CheckpointError["code"], message: string): CheckpointError {
    return new CheckpointError(code, `${message} in ${this.source} at byte ${this.opcodeAt}`, this.file);
  }

  run(): PickleValue {
    while (true) {
      this.opcodeAt = this.position;
      const op = this.u8();
      if (op === Op.STOP) return this.finish();
      this.step(op);
    }
  }

  private finish(): PickleValue {
    if (this.metastack.length > 0) throw this.error("bad-pickle", "STOP inside an unclosed MARK");
    if (this.stack.length !== 1)
      throw this.error("bad-pickle", `STOP with ${this.stack.length} values on the stack`);
    if (this.position !== this.bytes.byteLength) {
      throw this.error("bad-pickle", `${this.bytes.byteLength - this.position} bytes after STOP`);
    }
    return this.stack[0];
  }

  private step(op: number): void {
    switch (op) {
      case Op.PROTO: {
        const protocol = this.u8();
        if (protocol > HIGHEST_PROTOCOL)
          throw this.error("bad-pickle", `unsupported pickle protocol ${protocol}`);
        return;
      }
      case Op.FRAME:
        this.take(8); // a framing hint only: the frame's opcodes follow inline
        return;
      case Op.MARK:
        this.metastack.push(this.stack);
        this.stack = [];
        return;
      case Op.POP:
        if (this.stack.length > 0) this.stack.pop();
        else this.popMark();
        return;
      case Op.POP_MARK:
        this.popMark();
        return;
      case Op.DUP:
        this.push(this.top());
        return;

      case Op.NONE:
        this.push(null);
        return;
      case Op.NEWTRUE:
        this.push(true);
        return;
      case Op.NEWFALSE:
        this.push(false);
        return;
      case Op.BININT:
        this.push(this.view.getInt32(this.advance(4), true));
        return;
      case Op.BININT1:
        this.push(this.u8());
        return;
      case Op.BININT2:
        this.push(this.view.getUint16(this.advance(2), true));
        return;
      case Op.LONG1:
        this.push(this.long(this.u8()));
        return;
      case Op.LONG4: {
        const n = this.view.getInt32(this.advance(4), true);
        if (n < 0) throw this.error("bad-pickle", `LONG4 with negative length ${n}`);
        this.push(this.long(n));
        return;
      }
      case Op.BINFLOAT:
        this.push(this.view.getFloat64(this.advance(8), false));
        return;

      case Op.SHORT_BINUNICODE:
        this.push(this.text(this.u8()));
        return;
      case Op.BINUNICODE:
        this.push(this.text(this.view.getUint32(this.advance(4), true)));
        return;
      case Op.BINUNICODE8:
        this.push(this.text(this.u64()));
        return;
      // Python 2 str: torch.load decodes these as UTF-8 by default, so do we.
      case Op.SHORT_BINSTRING:
        this.push(this.text(this.u8()));
        return;
      case Op.BINSTRING: {
        const n = this.view.getInt32(this.advance(4), true);
        if (n < 0) throw this.error("bad-pickle", `BINSTRING with negative length ${n}`);
        this.push(this.text(n));
        return;
      }
      case Op.SHORT_BINBYTES:
        this.push(this.take(this.u8()).slice());
        return;
      case Op.BINBYTES:
        this.push(this.take(this.view.getUint32(this.advance(4), true)).slice());
        return;
      case Op.BINBYTES8:
      case Op.BYTEARRAY8:
        this.push(this.take(this.u64()).slice());
        return;

      case Op.EMPTY_LIST:
        this.push(new PyList());
        return;
      case Op.EMPTY_TUPLE:
        this.push(new PyTuple([]));
        return;
      case Op.EMPTY_DICT:
        this.push(new PyDict());
        return;
      case Op.EMPTY_SET:
        this.push(new PySet([], false));
        return;
      case Op.TUPLE1:
        this.push(new PyTuple(this.popN(1)));
        return;
      case Op.TUPLE2:
        this.push(new PyTuple(this.popN(2)));
        return;
      case Op.TUPLE3:
        this.push(new PyTuple(this.popN(3)));
        return;
      case Op.TUPLE:
        this.push(new PyTuple(this.popMark()));
        return;
      case Op.LIST:
        this.push(new PyList(this.popMark()));
        return;
      case Op.DICT: {
        const dict = new PyDict();
        this.setItems(dict, this.popMark());
        this.push(dict);
        return;
      }
      case Op.FROZENSET:
        this.push(new PySet(this.popMark(), true));
        return;
      case Op.APPEND: {
        const item = this.pop();
        this.list(this.top(), "APPEND").items.push(item);
        return;
      }
      case Op.APPENDS: {
        const items = this.popMark();
        const list = this.list(this.top(), "APPENDS").items;
        for (const item of items) list.push(item); // no spread: a hostile MARK may hold millions
        return;
      }
      case Op.SETITEM: {
        const value = this.pop();
        const key = this.pop();
        this.dict(this.top(), "SETITEM").set(key, value);
        return;
      }
      case Op.SETITEMS: {
        const items = this.popMark();
        this.setItems(this.dict(this.top(), "SETITEMS"), items);
        return;
      }
      case Op.ADDITEMS: {
        const items = this.popMark();
        const set = this.top();
        if (!(set instanceof PySet) || set.frozen) throw this.error("bad-pickle", "ADDITEMS on a non-set");
        for (const item of items) set.items.push(item);
        return;
      }

      case Op.BINPUT:
        this.put(this.u8());
        return;
      case Op.LONG_BINPUT:
        this.put(this.view.getUint32(this.advance(4), true));
        return;
      case Op.MEMOIZE:
        this.put(this.memo.size);
        return;
      case Op.BINGET:
        this.push(this.get(this.u8()));
        return;
      case Op.LONG_BINGET:
        this.push(this.get(this.view.getUint32(this.advance(4), true)));
        return;

      case Op.GLOBAL: {
        const module = this.line();
        const name = this.line();
        this.push(this.resolve(module, name));
        return;
      }
      case Op.STACK_GLOBAL: {
        const name = this.pop();
        const module = this.pop();
        if (typeof module !== "string" || typeof name !== "string") {
          throw this.error("bad-pickle", "STACK_GLOBAL needs two strings");
        }
        this.push(this.resolve(module, name));
        return;
      }
      case Op.REDUCE: {
        const args = this.tuple(this.pop(), "REDUCE arguments");
        this.push(this.invoke(this.pop(), args.items, "REDUCE"));
        return;
      }
      case Op.NEWOBJ: {
        const args = this.tuple(this.pop(), "NEWOBJ arguments");
        this.push(this.invoke(this.pop(), args.items, "NEWOBJ"));
        return;
      }
      case Op.NEWOBJ_EX: {
        const kwargs = this.pop();
        const args = this.tuple(this.pop(), "NEWOBJ_EX arguments");
        if (!(kwargs instanceof PyDict) || kwargs.size > 0) {
          throw this.error("bad-pickle", "NEWOBJ_EX with keyword arguments is not supported");
        }
        this.push(this.invoke(this.pop(), args.items, "NEWOBJ_EX"));
        return;
      }
      case Op.BUILD: {
        const state = this.pop();
        this.build(this.top(), state);
        return;
      }
      case Op.BINPERSID:
        this.push(this.env.persistentLoad(this.pop(), this));
        return;
      case Op.PERSID:
        this.push(this.env.persistentLoad(this.line(), this));
        return;
    }
    const refused = REFUSED_OPCODES.get(op);
    if (refused) throw this.error("refused-opcode", `refusing opcode ${refused}`);
    throw this.error("unknown-opcode", `unknown opcode 0x${op.toString(16).padStart(2, "0")}`);
  }

  // --- operations -----------------------------------------------------------------------------------

  private resolve(module: string, name: string): PyGlobal {
    const global = this.env.resolveGlobal(module, name);
    if (!global) throw this.error("refused-global", `refusing pickle global ${module}.${name}`);
    return global;
  }

  private invoke(callable: PickleValue, args: readonly PickleValue[], opcode: string): PickleValue {
    if (!(callable instanceof PyGlobal)) {
      throw this.error("bad-pickle", `${opcode} on ${describe(callable)}, which is not an allowed callable`);
    }
    if (!callable.call) throw this.error("bad-pickle", `${callable.qualifiedName} is not callable`);
    return callable.call(args, this);
  }

  private build(target: PickleValue, state: PickleValue): void {
    if (target instanceof PickleObject) {
      target.setState(state, this);
      return;
    }
    if (!(target instanceof PyDict)) throw this.error("bad-pickle", `BUILD on ${describe(target)}`);
    // An OrderedDict subclass instance's __dict__ (a state dict's `_metadata`), possibly as
    // (dict_state, slot_state) the way object.__reduce_ex__ writes it.
    const parts = state instanceof PyTuple ? state.items : [state];
    for (const part of parts) {
      if (part === null) continue;
      if (!(part instanceof PyDict)) throw this.error("bad-pickle", `BUILD state is ${describe(part)}`);
      for (const [key, value] of part.entries) {
        if (typeof key !== "string")
          throw this.error("bad-pickle", "BUILD state has a non-string attribute name");
        target.attributes.set(key, value);
      }
    }
  }

  private setItems(dict: PyDict, items: PickleValue[]): void {
    if (items.length % 2 !== 0) throw this.error("bad-pickle", "odd number of items for a dict");
    for (let i = 0; i < items.length; i += 2) dict.set(items[i], items[i + 1]);
  }

  private put(index: number): void {
    this.memo.set(index, this.top());
  }

  private get(index: number): PickleValue {
    const value = this.memo.get(index);
    if (value === undefined) throw this.error("bad-pickle", `memo index ${index} was never stored`);
    return value;
  }

  // --- stack ----------------------------------------------------------------------------------------

  private push(value: PickleValue): void {
    this.stack.push(value);
  }

  private pop(): PickleValue {
    if (this.stack.length === 0) throw this.error("bad-pickle", "stack underflow");
    return this.stack.pop() as PickleValue;
  }

  private top(): PickleValue {
    if (this.stack.length === 0) throw this.error("bad-pickle", "stack underflow");
    return this.stack[this.stack.length - 1];
  }

  private popN(n: number): PickleValue[] {
    if (this.stack.length < n) throw this.error("bad-pickle", "stack underflow");
    return this.stack.splice(this.stack.length - n, n);
  }

  private popMark(): PickleValue[] {
    const items = this.stack;
    const previous = this.metastack.pop();
    if (!previous) throw this.error("bad-pickle", "no MARK to pop to");
    this.stack = previous;
    return items;
  }

  private list(value: PickleValue, opcode: string): PyList {
    if (!(value instanceof PyList)) throw this.error("bad-pickle", `${opcode} on ${describe(value)}`);
    return value;
  }

  private dict(value: PickleValue, opcode: string): PyDict {
    if (!(value instanceof PyDict)) throw this.error("bad-pickle", `${opcode} on ${describe(value)}`);
    return value;
  }

  private tuple(value: PickleValue, what: string): PyTuple {
    if (!(value instanceof PyTuple))
      throw this.error("bad-pickle", `${what} are ${describe(value)}, not a tuple`);
    return value;
  }

  // --- reading arguments ----------------------------------------------------------------------------

  /** Claim `n` bytes; returns their start. Every length read from the pickle is checked here first. */
  private advance(n: number): number {
    if (n > this.bytes.byteLength - this.position) {
      throw this.error(
        "truncated-pickle",
        `opcode needs ${n} bytes but only ${this.bytes.byteLength - this.position} remain`,
      );
    }
    const at = this.position;
    this.position += n;
    return at;
  }

  private take(n: number): Uint8Array {
    const at = this.advance(n);
    return this.bytes.subarray(at, at + n);
  }

  private u8(): number {
    return this.bytes[this.advance(1)];
  }

  private u64(): number {
    const n = this.view.getBigUint64(this.advance(8), true);
    // Larger than the pickle itself can only be a lie; let advance() report it as truncation.
    return n > BigInt(this.bytes.byteLength) ? this.bytes.byteLength + 1 : Number(n);
  }

  private text(n: number): string {
    try {
      return utf8.decode(this.take(n));
    } catch (err) {
      if (err instanceof CheckpointError) throw err;
      throw this.error("bad-pickle", "string is not valid UTF-8");
    }
  }

  /** A newline-terminated argument (GLOBAL, PERSID). */
  private line(): string {
    const end = this.bytes.indexOf(0x0a, this.position);
    if (end < 0) throw this.error("truncated-pickle", "text argument has no terminating newline");
    return this.text(end - this.position + 1).slice(0, -1);
  }

  /** Little-endian two's complement, as LONG1/LONG4 store it. */
  private long(n: number): number | bigint {
    if (n > MAX_LONG_BYTES) throw this.error("bad-pickle", `integer of ${n} bytes exceeds ${MAX_LONG_BYTES}`);
    const bytes = this.take(n);
    let value = 0n;
    for (let i = n - 1; i >= 0; i--) value = (value << 8n) | BigInt(bytes[i]);
    if (n > 0 && bytes[n - 1] & 0x80) value -= 1n << BigInt(8 * n);
    return toPyInt(value);
  }
}
