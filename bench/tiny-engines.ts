/**
 * tiny-sd15 / tiny-sdxl engine folders for the benchmarks, made exactly as a user's would be (the
 * zoo's diffusers folder, then the converter), cached under .stepwise/bench/models/.
 */
import { rm } from "node:fs/promises";
import { convertDiffusers } from "../diffusion/convert/convert.js";
import type { LoraTargetSetName } from "../diffusion/lora/targets.js";
import { writeZooModel, type ZooModelName } from "../diffusion/zoo/zoo.js";
import { cachedModel, cacheKey, type Log, REPO_ROOT, repoFile } from "./model-cache.js";
import { sourceDigest } from "./source-digest.js";

/** The engine folder of a zoo model converted with the given LoRA targets. */
export async function tinyEngine(name: ZooModelName, targets: LoraTargetSetName, log: Log): Promise<string> {
  const digest = await sourceDigest(REPO_ROOT, [
    repoFile("diffusion", "zoo", "zoo.ts"),
    repoFile("diffusion", "convert", "convert.ts"),
  ]);
  const { dir, built } = await cachedModel(
    `${name}-${targets}`,
    cacheKey(digest, targets),
    log,
    async (tmp) => {
      const diffusers = `${tmp}-diffusers`;
      await rm(diffusers, { recursive: true, force: true });
      try {
        await writeZooModel(name, diffusers);
        await convertDiffusers({ from: diffusers, out: tmp, loraTargets: targets });
      } finally {
        await rm(diffusers, { recursive: true, force: true });
      }
    },
  );
  if (built) log(`built the ${name} engine (LoRA targets ${targets})`);
  return dir;
}
