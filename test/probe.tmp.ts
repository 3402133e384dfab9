import { request } from "node:http";
import { buildApp } from "../api/app.js";
import { resolveConfig } from "../api/config.js";
import { Metrics } from "../api/metrics.js";
import { ModelPool } from "../api/model-pool.js";

const app = await buildApp(
  {
    config: resolveConfig({ logLevel: "silent" }),
    pool: ModelPool.empty(),
    metrics: new Metrics(),
    shutdownSignal: new AbortController().signal,
  },
  { logger: false, registry: { list: async () => [], changeToken: async () => "1" } as never },
);
await app.listen({ port: 0, host: "127.0.0.1" });
const port = (app.server.address() as { port: number }).port;
const get = (path: string, headers: Record<string, string> = {}) =>
  new Promise<void>((res) => {
    const r = request({ host: "127.0.0.1", port, path, headers }, (resp) => {
      let b = "";
      resp.on("data", (c) => (b += c));
      resp.on("end", () => {
        console.log(resp.statusCode, JSON.stringify(resp.headers), b.slice(0, 300));
        res();
      });
    });
    r.on("error", (e) => {
      console.log("err", e.message);
      res();
    });
    r.end();
  });
await get(`/v1/loras/${"a".repeat(200)}`);
await get(`/v1/models`, { "x-big": "a".repeat(20000) });
await get(`/v1/models?${"a=b&".repeat(30000)}`);
await get(`/v1/models`, { host: "evil.example:8080" });
await app.close();
