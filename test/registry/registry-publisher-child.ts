/**
 * A publisher in its own process, for the crash test in registry.test.ts: it publishes a big
 * adapter whose upload is slowed down, reports on stdout once the upload is under way, and waits
 * to be killed with SIGKILL mid-upload.
 *
 *   node --import tsx registry-publisher-child.ts <store spec JSON> <name> <megabytes>
 *
 * Prints `{"uploading":true,"version":N}` (one JSON line) after the first chunks of version N's
 * blob have gone to the store; left alone, the upload would take minutes.
 */
import { setTimeout as sleep } from "node:timers/promises";
import type { ObjectStore, PutOptions, StreamSource } from "../../registry/object-store.js";
import { Registry } from "../../registry/registry.js";
import { bigAdapter, openSpec, type StoreSpec } from "./registry-fixtures.js";

/** Chunks that go out at full speed before the upload slows down (and is reported). */
const FAST_CHUNKS = 3;
/** Per later chunk (8 MiB): a 64 MB upload then takes minutes, far longer than the test waits. */
const SLOW_CHUNK_DELAY_MS = 30_000;

const [specJson, name, megabytes] = process.argv.slice(2);
const spec = JSON.parse(specJson) as StoreSpec;
const store = openSpec(spec);

/** The store, with the adapter blob's upload slowed down and reported. */
const slowed: ObjectStore = Object.assign(Object.create(store) as ObjectStore, {
  putStream(key: string, source: StreamSource, options?: PutOptions) {
    if (!key.endsWith("/adapter.safetensors") || !(Symbol.asyncIterator in source)) {
      return store.putStream(key, source, options);
    }
    const version = Number(key.split("/").at(-2));
    async function* slow(): AsyncGenerator<Uint8Array> {
      let sent = 0;
      for await (const chunk of source as AsyncIterable<Uint8Array>) {
        yield chunk;
        sent += 1;
        if (sent === FAST_CHUNKS) process.stdout.write(`${JSON.stringify({ uploading: true, version })}\n`);
        if (sent >= FAST_CHUNKS) await sleep(SLOW_CHUNK_DELAY_MS);
      }
    }
    return store.putStream(key, slow(), options);
  },
});

const registry = new Registry(slowed);
await registry.publish(name, bigAdapter(Number(megabytes) * 1e6, 2, 64), {
  base: { family: "sd15" },
  sourceFormat: "diffusers",
});
process.stdout.write(`${JSON.stringify({ published: true })}\n`);
