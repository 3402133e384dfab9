/**
 * The scoring side of a server, as a fastify plugin: load the configured preference models (or
 * take a pool the caller built), decorate the instance with `spms` and add POST /v1/score.
 * Closing the server lets queued scoring finish, then stops the SPM workers.
 */
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";
import scoreRoutes from "./routes/score.js";
import { SpmPool } from "./spm-pool.js";

declare module "fastify" {
  interface FastifyInstance {
    spms: SpmPool;
  }
}

/** `configured`: load `spms` from the config (the tiny SPM with the embedded defaults). */
export type ScoringSource = "configured" | SpmPool;

export interface ScoringPluginOptions {
  readonly spms: ScoringSource;
}

async function scoringPlugin(app: FastifyInstance, options: ScoringPluginOptions): Promise<void> {
  const spms =
    options.spms === "configured" ? await SpmPool.load(app.stepwise.config, app.log) : options.spms;
  app.addHook("onClose", async () => {
    await spms.drain();
    await spms.close();
  });
  app.decorate("spms", spms);
  await app.register(scoreRoutes);
}

export default fp(scoringPlugin, { name: "stepwise-scoring", decorators: { fastify: ["stepwise"] } });
