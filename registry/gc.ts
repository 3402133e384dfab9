/**
 * `stepwise lora gc`: storage that failed or interrupted writes left behind.
 *
 *   - Orphaned blobs: `<version>/adapter.safetensors` with no manifest (a publisher died between its
 *     upload and its manifest, registry.ts step 4) and older than the grace period. A publish in
 *     progress has a blob and no manifest too: the grace period is what tells the two apart, so it
 *     must be longer than any publish takes. Each orphan is checked again just before it is removed.
 *   - Blobs of deleted versions (a delete that stopped after its tombstone): removed at once.
 *   - Incomplete uploads older than the grace period: S3 multipart uploads (invisible to listings,
 *     billed until aborted) and the filesystem store's staging files.
 * Never touched: manifests, claims (they keep version numbers from being reused), aliases, the
 * change index, and every blob that has a manifest and no tombstone (a complete version).
 */
import { blobKey, LORAS_PREFIX, manifestKey, parseRegistryKey } from "./names.js";
import { exists, type IncompleteUpload, listAll, type ObjectInfo } from "./object-store.js";
import type { Registry } from "./registry.js";

/** Longer than any publish takes: a blob without a manifest this old belongs to a dead publisher. */
export const DEFAULT_GC_GRACE_MS = 24 * 60 * 60 * 1000;

export interface GcOptions {
  /** Only orphans and uploads older than this are collected (default DEFAULT_GC_GRACE_MS). */
  readonly graceMs?: number;
  /** Report what would be removed, remove nothing. */
  readonly dryRun?: boolean;
  readonly now?: () => Date;
}

export interface CollectedBlob {
  readonly key: string;
  readonly bytes: number;
  readonly lastModified: Date;
  readonly reason: "no manifest" | "deleted version";
}

export interface GcReport {
  readonly dryRun: boolean;
  /** Removed (or, in a dry run, to be removed). */
  readonly blobs: readonly CollectedBlob[];
  /** Aborted (or, in a dry run, to be aborted). */
  readonly uploads: readonly IncompleteUpload[];
  /** Blobs without a manifest still inside the grace period: publishes that may be in progress. */
  readonly young: readonly string[];
}

export async function collectGarbage(registry: Registry, options: GcOptions = {}): Promise<GcReport> {
  const store = registry.store;
  const graceMs = options.graceMs ?? DEFAULT_GC_GRACE_MS;
  const cutoff = new Date((options.now?.() ?? new Date()).getTime() - graceMs);
  const dryRun = options.dryRun === true;

  const blobs = new Map<string, { name: string; version: number; object: ObjectInfo }>();
  const manifests = new Set<string>();
  for await (const object of listAll(store, LORAS_PREFIX)) {
    const parsed = parseRegistryKey(object.key);
    if (parsed === undefined || parsed.kind === "aliases") continue;
    const id = `${parsed.name}@${parsed.version}`;
    if (parsed.kind === "blob") blobs.set(id, { name: parsed.name, version: parsed.version, object });
    if (parsed.kind === "manifest") manifests.add(id);
  }
  const tombstones = new Set<string>();
  for (const listing of await registry.list()) {
    for (const version of Object.keys(listing.deleted)) tombstones.add(`${listing.name}@${version}`);
  }

  const collected: CollectedBlob[] = [];
  const young: string[] = [];
  for (const [id, { name, version, object }] of blobs) {
    const deleted = tombstones.has(id);
    if (manifests.has(id) && !deleted) continue; // a complete version
    if (!deleted && object.lastModified >= cutoff) {
      young.push(object.key);
      continue;
    }
    // The manifest may have landed since the listing: then the blob is a version's, not an orphan's.
    if (!deleted && (await exists(store, manifestKey(name, version)))) continue;
    collected.push({
      key: blobKey(name, version),
      bytes: object.size,
      lastModified: object.lastModified,
      reason: deleted ? "deleted version" : "no manifest",
    });
    if (!dryRun) await store.delete(object.key);
  }

  const uploads = await store.listIncompleteUploads(cutoff);
  if (!dryRun) for (const upload of uploads) await store.abortIncompleteUpload(upload);
  return { dryRun, blobs: collected, uploads, young };
}
