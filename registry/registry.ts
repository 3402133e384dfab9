/**
 * The LoRA registry over an object store (the filesystem store or S3): immutable numbered
 * versions, aliases moved by compare-and-swap, tombstones, and a cheap change signal. Layout and
 * names: names.ts; the objects' formats: canonical.ts, manifest.ts, aliases.ts, change-index.ts.
 *
 * Publish, in order (a version is visible exactly when its manifest exists):
 *   1. claim the next version number: create `<version>/claim.json` with If-None-Match: *; of
 *      concurrent publishers exactly one gets each number, the others try the next;
 *   2. stream the canonical adapter to `<version>/adapter.safetensors`, hashing it on the way;
 *   3. verify: a HEAD must show the size and ETag the upload produced (the stores check the body's
 *      digests on receipt: the filesystem store's ETag is the sha256 itself, S3 checks Content-MD5
 *      of every part), so the object in place is the one just sent;
 *   4. write `<version>/manifest.json` (If-None-Match: *);
 *   5. move `latest` (and the requested alias) in aliases.json by compare-and-swap;
 *   6. bump index.json (the change signal).
 * A publisher that dies before step 4 leaves a claim (and perhaps a blob) but no version; its
 * number is never reused, so version numbers can have gaps. Nothing waits on a dead claim.
 *
 * Reads check the blob's size and sha256 against the manifest before decoding it; a mismatch is a
 * CorruptObjectError naming the version. Store failures that are not about the content become
 * RegistryUnavailableError.
 */
import { createHash, randomUUID } from "node:crypto";
import { hostname } from "node:os";
import type { LoraAdapter } from "../diffusion/lora/adapter.js";
import {
  type AliasTable,
  afterPublish,
  deleteVersion,
  EMPTY_ALIAS_TABLE,
  parseAliasTable,
  promoteAlias,
  rollbackAlias,
  serializeAliasTable,
} from "./aliases.js";
import { type CanonicalEncoding, canonicalEncoding, decodeCanonical } from "./canonical.js";
import { type CasObject, compareAndSwap, readVersioned } from "./cas.js";
import { type ChangeRecord, changeToken, recordChange } from "./change-index.js";
import {
  CanonicalFormatError,
  CorruptObjectError,
  InvalidRefError,
  LoraNotFoundError,
  RegistryContentionError,
  RegistryError,
  RegistryUnavailableError,
  VersionDeletedError,
} from "./errors.js";
import {
  buildManifest,
  checkPublishInfo,
  type LoraManifest,
  type PublishInfo,
  parseManifest,
} from "./manifest.js";
import {
  aliasesKey,
  assertAliasName,
  assertLoraName,
  assertVersion,
  blobKey,
  claimKey,
  DEFAULT_ALIAS,
  LORAS_PREFIX,
  type LoraRef,
  manifestKey,
  nameRoot,
  parseRegistryKey,
} from "./names.js";
import {
  exists,
  listAll,
  NotFoundError,
  type ObjectStore,
  ObjectStoreError,
  PreconditionFailedError,
} from "./object-store.js";
import { type OpenStoreOptions, openStore } from "./store-url.js";

export type { LoraManifest, PublishInfo } from "./manifest.js";

/**
 * Version numbers a publisher tries past the highest it saw before giving up: each failed try
 * means another publisher claimed that number, so this bounds concurrent publishes of one name.
 */
export const MAX_CLAIM_ATTEMPTS = 64;
/** Reads in flight at once for list / show: enough to hide S3 latency, few enough to be polite. */
export const READ_CONCURRENCY = 8;

export interface RegistryOptions extends OpenStoreOptions {
  /** The clock for createdAt and tombstones (tests). */
  readonly now?: () => Date;
}

export interface PublishOptions {
  /** Also point this alias at the new version (`latest` always follows). */
  readonly alias?: string;
  /** Modules that are 1x1 convolutions in the base model, so exports write them 4-d. */
  readonly conv1x1Modules?: readonly string[];
}

export interface LoraListing {
  readonly name: string;
  /** Published versions that are not deleted, ascending. */
  readonly versions: number[];
  readonly aliases: Record<string, number>;
  /** Tombstones: deleted version -> when (ISO 8601). Replicas that cached one must stop serving it. */
  readonly deleted: Record<string, string>;
}

export interface DeletedVersion {
  readonly version: number;
  readonly deletedAt: string;
  readonly manifest: LoraManifest;
}

export interface LoraDetails extends Omit<LoraListing, "versions" | "deleted"> {
  /** Manifests of the published versions that are not deleted, ascending. */
  readonly versions: LoraManifest[];
  /** Earlier targets of each alias, oldest first (what rollback walks back through). */
  readonly history: Record<string, number[]>;
  readonly deleted: DeletedVersion[];
}

export interface PulledLora {
  readonly manifest: LoraManifest;
  readonly adapter: LoraAdapter;
  /** The canonical adapter file, verified against the manifest; the adapter's tensors are views into it. */
  readonly bytes: Uint8Array;
  readonly conv1x1Modules: readonly string[];
}

export interface AliasMove {
  readonly name: string;
  readonly alias: string;
  readonly version: number;
  /** Where the alias pointed before (null: it did not exist). */
  readonly previous: number | null;
  /** False when the alias already pointed there and nothing was written. */
  readonly changed: boolean;
}

export class Registry {
  private readonly now: () => Date;

  constructor(
    readonly store: ObjectStore,
    options: { readonly now?: () => Date } = {},
  ) {
    this.now = options.now ?? (() => new Date());
  }

  /** Opens the registry at `url` (`file:///path`, a path, or `s3://bucket/prefix`). */
  static async open(url: string, options: RegistryOptions = {}): Promise<Registry> {
    return new Registry(openStore(url, options), options);
  }

  get location(): string {
    return this.store.location;
  }

  /** Releases the store's connections (S3); the registry is not used afterwards. */
  close(): void {
    (this.store as { destroy?: () => void }).destroy?.();
  }

  // -------------------------------------------------------------------------------------------
  // Writing

  async publish(
    name: string,
    adapter: LoraAdapter,
    info: PublishInfo,
    options: PublishOptions = {},
  ): Promise<LoraManifest> {
    assertLoraName(name);
    if (options.alias !== undefined) assertAliasName(options.alias);
    const checked = checkPublishInfo(info);
    const encoding = canonicalEncoding(adapter, { conv1x1Modules: options.conv1x1Modules });
    return this.guard("publish", async () => {
      const version = await this.claimVersion(name);
      const file = await this.uploadBlob(name, version, encoding);
      const manifest = buildManifest(name, version, adapter, file, checked, this.now());
      const key = manifestKey(name, version);
      try {
        await this.store.put(key, jsonBytes(manifest), {
          condition: { ifNoneMatch: "*" },
          contentType: "application/json",
        });
      } catch (error) {
        if (!(error instanceof PreconditionFailedError)) throw error;
        throw new CorruptObjectError(
          name,
          version,
          key,
          "a manifest appeared for a version this publisher claimed",
        );
      }
      await compareAndSwap(this.store, this.aliasObject(name), (table) => ({
        write: afterPublish(table ?? EMPTY_ALIAS_TABLE, version, options.alias),
        result: undefined,
      }));
      await this.signal({ op: "publish", name, version, alias: options.alias });
      return manifest;
    });
  }

  /** Points `alias` at `version`. `expected`: the version it must point to now (null: unset). */
  async promote(
    name: string,
    alias: string,
    version: number,
    options: { readonly expected?: number | null } = {},
  ): Promise<AliasMove> {
    assertLoraName(name);
    assertAliasName(alias);
    assertVersion(name, version);
    if (options.expected !== undefined && options.expected !== null) assertVersion(name, options.expected);
    return this.guard("promote", async () => {
      await this.readManifest(name, version); // the target must exist (manifests are never removed)
      let firstSeen: number | null = null;
      const move = await compareAndSwap(this.store, this.aliasObject(name), (stored, attempt) => {
        const table = stored ?? EMPTY_ALIAS_TABLE;
        const current = table.aliases.get(alias) ?? null;
        if (attempt === 1) firstSeen = current;
        // Without an explicit expectation the caller means "from what it is now": a concurrent
        // move of this alias is a conflict; a concurrent change elsewhere in the table is retried.
        const expected = options.expected !== undefined ? options.expected : firstSeen;
        const change = promoteAlias(table, name, alias, version, expected);
        const result: AliasMove = { name, alias, version, previous: current, changed: !change.unchanged };
        return change.unchanged ? { keep: true, result } : { write: change.table, result };
      });
      if (move.changed) await this.signal({ op: "promote", name, version, alias });
      return move;
    });
  }

  /** Moves `alias` back to its previous target. `expected`: the version it must point to now. */
  async rollback(
    name: string,
    alias: string,
    options: { readonly expected?: number } = {},
  ): Promise<AliasMove> {
    assertLoraName(name);
    assertAliasName(alias);
    if (options.expected !== undefined) assertVersion(name, options.expected);
    return this.guard("rollback", async () => {
      let firstSeen: number | undefined;
      const move = await compareAndSwap(this.store, this.aliasObject(name), (stored, attempt) => {
        if (stored === undefined) throw new LoraNotFoundError(name, { alias });
        if (attempt === 1) firstSeen = stored.aliases.get(alias);
        const { table, from, to } = rollbackAlias(stored, name, alias, options.expected ?? firstSeen);
        return { write: table, result: { name, alias, version: to, previous: from, changed: true } };
      });
      await this.signal({ op: "rollback", name, version: move.version, alias });
      return move;
    });
  }

  /**
   * Deletes a version: a tombstone in aliases.json (refused while an alias points to it), then the
   * blob is removed. The manifest stays as history (`show` lists it under `deleted`); resolving or
   * pulling the version is refused with VersionDeletedError. Deleting it again does nothing.
   */
  async delete(name: string, version: number): Promise<void> {
    assertLoraName(name);
    assertVersion(name, version);
    await this.guard("delete", async () => {
      await this.readManifest(name, version);
      const changed = await compareAndSwap(this.store, this.aliasObject(name), (stored) => {
        const change = deleteVersion(stored ?? EMPTY_ALIAS_TABLE, name, version, this.now());
        return change.unchanged ? { keep: true, result: false } : { write: change.table, result: true };
      });
      // The tombstone is the change; removing the blob is cleanup that a retry (finding the
      // tombstone already there) finishes. A reader that still finds the blob is refused by it.
      if (changed) await this.signal({ op: "delete", name, version });
      await this.store.delete(blobKey(name, version));
    });
  }

  // -------------------------------------------------------------------------------------------
  // Reading

  /** Every LoRA with at least one published version (deleted ones included), by name. */
  async list(): Promise<LoraListing[]> {
    return this.guard("list", async () => {
      const published = new Map<string, number[]>();
      for await (const object of listAll(this.store, LORAS_PREFIX)) {
        const parsed = parseRegistryKey(object.key);
        if (parsed?.kind !== "manifest") continue;
        const versions = published.get(parsed.name) ?? [];
        versions.push(parsed.version);
        published.set(parsed.name, versions);
      }
      const names = [...published.keys()].sort();
      return mapLimit(names, READ_CONCURRENCY, async (name) => {
        const table = await this.readAliases(name);
        const versions = published
          .get(name)!
          .filter((v) => !table.deleted.has(v))
          .sort((a, b) => a - b);
        return {
          name,
          versions,
          aliases: Object.fromEntries(table.aliases),
          deleted: Object.fromEntries([...table.deleted].map(([v, at]) => [String(v), at])),
        };
      });
    });
  }

  async show(name: string): Promise<LoraDetails> {
    assertLoraName(name);
    return this.guard("show", async () => {
      const versions: number[] = [];
      for await (const object of listAll(this.store, nameRoot(name))) {
        const parsed = parseRegistryKey(object.key);
        if (parsed?.kind === "manifest" && parsed.name === name) versions.push(parsed.version);
      }
      if (versions.length === 0) throw new LoraNotFoundError(name);
      versions.sort((a, b) => a - b);
      const table = await this.readAliases(name);
      const manifests = await mapLimit(versions, READ_CONCURRENCY, (v) => this.readManifest(name, v));
      const deleted: DeletedVersion[] = [];
      for (const manifest of manifests) {
        const deletedAt = table.deleted.get(manifest.version);
        if (deletedAt !== undefined) deleted.push({ version: manifest.version, deletedAt, manifest });
      }
      return {
        name,
        versions: manifests.filter((m) => !table.deleted.has(m.version)),
        aliases: Object.fromEntries(table.aliases),
        history: Object.fromEntries([...table.history].map(([alias, earlier]) => [alias, [...earlier]])),
        deleted,
      };
    });
  }

  /** The manifest of `name@version`, or of what `name:alias` points to (alias default `latest`). */
  async resolve(ref: LoraRef): Promise<LoraManifest> {
    assertLoraName(ref.name);
    if (ref.version !== undefined && ref.alias !== undefined) {
      throw new InvalidRefError(
        `${ref.name}@${ref.version}:${ref.alias}`,
        "give a version or an alias, not both",
      );
    }
    if (ref.version !== undefined) assertVersion(ref.name, ref.version);
    if (ref.alias !== undefined) assertAliasName(ref.alias);
    return this.guard("resolve", async () => {
      const table = await this.readAliases(ref.name);
      let version = ref.version;
      if (version === undefined) {
        const alias = ref.alias ?? DEFAULT_ALIAS;
        version = table.aliases.get(alias);
        if (version === undefined) throw await this.notFound(ref.name, { alias });
      }
      const deletedAt = table.deleted.get(version);
      if (deletedAt !== undefined) throw new VersionDeletedError(ref.name, version, deletedAt);
      return this.readManifest(ref.name, version);
    });
  }

  /** The adapter of `name@version`, its bytes checked against the manifest's size and sha256. */
  async pull(name: string, version: number): Promise<PulledLora> {
    return this.guard("pull", async () => {
      const manifest = await this.resolve({ name, version });
      const bytes = await this.readBlob(manifest);
      try {
        const { adapter, conv1x1Modules } = decodeCanonical(bytes, blobKey(name, version));
        return { manifest, adapter, bytes, conv1x1Modules };
      } catch (error) {
        if (!(error instanceof CanonicalFormatError)) throw error;
        throw new CorruptObjectError(name, version, blobKey(name, version), error.message);
      }
    });
  }

  /** Changes whenever anything in the registry does (one HEAD of index.json). */
  async changeToken(): Promise<string> {
    return this.guard("changeToken", () => changeToken(this.store));
  }

  // -------------------------------------------------------------------------------------------

  private aliasObject(name: string): CasObject<AliasTable> {
    const key = aliasesKey(name);
    return {
      key,
      parse: (text) => parseAliasTable(text, name, key),
      serialize: (table) => serializeAliasTable(name, table),
    };
  }

  private async readAliases(name: string): Promise<AliasTable> {
    return (
      (await readVersioned(this.store, aliasesKey(name), this.aliasObject(name).parse)).value ??
      EMPTY_ALIAS_TABLE
    );
  }

  private async readManifest(name: string, version: number): Promise<LoraManifest> {
    const key = manifestKey(name, version);
    try {
      const { body } = await this.store.get(key);
      return parseManifest(new TextDecoder().decode(body), name, version, key);
    } catch (error) {
      if (!(error instanceof NotFoundError)) throw error;
      const claimed = await exists(this.store, claimKey(name, version));
      if (claimed) throw new LoraNotFoundError(name, { version }, "its publish never completed");
      throw await this.notFound(name, { version });
    }
  }

  /** The not-found error for a version or alias, saying so when the LoRA itself does not exist. */
  private async notFound(
    name: string,
    what: { version?: number; alias?: string },
  ): Promise<LoraNotFoundError> {
    const page = await this.store.list(nameRoot(name), { maxKeys: 1 });
    return page.objects.length === 0 ? new LoraNotFoundError(name) : new LoraNotFoundError(name, what);
  }

  /** Claims the lowest free version number above every number already used (claimed or not). */
  private async claimVersion(name: string): Promise<number> {
    let highest = 0;
    for await (const object of listAll(this.store, nameRoot(name))) {
      const parsed = parseRegistryKey(object.key);
      if (parsed !== undefined && parsed.kind !== "aliases") highest = Math.max(highest, parsed.version);
    }
    const claim = {
      name,
      claimedAt: this.now().toISOString(),
      host: hostname(),
      pid: process.pid,
      id: randomUUID(),
    };
    for (let version = highest + 1; version <= highest + MAX_CLAIM_ATTEMPTS; version++) {
      try {
        await this.store.put(claimKey(name, version), jsonBytes({ ...claim, version }), {
          condition: { ifNoneMatch: "*" },
          contentType: "application/json",
        });
        return version;
      } catch (error) {
        if (!(error instanceof PreconditionFailedError)) throw error;
      }
    }
    throw new RegistryContentionError(claimKey(name, highest + MAX_CLAIM_ATTEMPTS), MAX_CLAIM_ATTEMPTS);
  }

  private async uploadBlob(
    name: string,
    version: number,
    encoding: CanonicalEncoding,
  ): Promise<{ sha256: string; bytes: number }> {
    const key = blobKey(name, version);
    // Hashed inline as the chunks go out: a worker thread was tried and measured slower on 2
    // cores (the store's own MD5 and radosgw already keep both busy).
    const hash = createHash("sha256");
    let sent = 0;
    async function* hashed(): AsyncGenerator<Uint8Array> {
      for (const chunk of encoding.chunks()) {
        hash.update(chunk);
        sent += chunk.byteLength;
        yield chunk;
      }
    }
    const put = await this.store.putStream(key, hashed(), { contentType: "application/octet-stream" });
    if (sent !== encoding.size || put.size !== encoding.size) {
      throw new CorruptObjectError(
        name,
        version,
        key,
        `the upload took ${put.size} of ${encoding.size} bytes`,
      );
    }
    const stored = await this.store.head(key);
    if (stored.size !== encoding.size || stored.etag !== put.etag) {
      throw new CorruptObjectError(
        name,
        version,
        key,
        `after the upload it holds ${stored.size} bytes with ETag ${stored.etag}; ` +
          `the upload sent ${encoding.size} bytes and got ETag ${put.etag}`,
      );
    }
    return { sha256: hash.digest("hex"), bytes: encoding.size };
  }

  /** Streams the blob into one buffer of the manifest's size, hashing it as it arrives. */
  private async readBlob(manifest: LoraManifest): Promise<Uint8Array> {
    const { name, version } = manifest;
    const key = blobKey(name, version);
    const corrupt = (detail: string) => new CorruptObjectError(name, version, key, detail);
    let stream: Awaited<ReturnType<ObjectStore["getStream"]>>;
    try {
      stream = await this.store.getStream(key);
    } catch (error) {
      if (!(error instanceof NotFoundError)) throw error;
      // Deleted between our resolve and this read, or lost behind the registry's back.
      const deletedAt = (await this.readAliases(name)).deleted.get(version);
      if (deletedAt !== undefined) throw new VersionDeletedError(name, version, deletedAt);
      throw corrupt("the adapter file is missing");
    }
    if (stream.info.size !== manifest.bytes) {
      stream.body.destroy();
      throw corrupt(`${stream.info.size} bytes, the manifest says ${manifest.bytes}`);
    }
    const bytes = new Uint8Array(manifest.bytes);
    const hash = createHash("sha256");
    let at = 0;
    try {
      for await (const chunk of stream.body as AsyncIterable<Uint8Array>) {
        if (at + chunk.byteLength > bytes.byteLength)
          throw corrupt(`more than the manifest's ${manifest.bytes} bytes`);
        bytes.set(chunk, at);
        hash.update(chunk);
        at += chunk.byteLength;
      }
    } finally {
      stream.body.destroy(); // a no-op once read to the end; frees the connection otherwise
    }
    if (at !== bytes.byteLength) throw corrupt(`${at} bytes read, the manifest says ${manifest.bytes}`);
    const sha256 = hash.digest("hex");
    if (sha256 !== manifest.sha256) throw corrupt(`sha256 ${sha256}, the manifest says ${manifest.sha256}`);
    return bytes;
  }

  private async signal(change: ChangeRecord): Promise<void> {
    await recordChange(this.store, change, this.now);
  }

  /** Passes registry errors on; any other store failure is the registry being unavailable. */
  private async guard<T>(operation: string, action: () => Promise<T>): Promise<T> {
    try {
      return await action();
    } catch (error) {
      if (error instanceof RegistryError || !(error instanceof ObjectStoreError)) throw error;
      throw new RegistryUnavailableError(this.location, operation, error);
    }
  }
}

function jsonBytes(value: unknown): Uint8Array {
  return new TextEncoder().encode(`${JSON.stringify(value, null, 2)}\n`);
}

/** `fn` over `items` with at most `limit` calls in flight; results in input order. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await fn(items[index]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}
