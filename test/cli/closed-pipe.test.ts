/**
 * `stepwise lora show --json | head`: the reader closes the pipe before the command writes. The
 * command must stop quietly (exit 0, nothing on stderr), not crash on an unhandled EPIPE. Runs the
 * real entry point (cli/main.ts) in a child process, its stdout a pipe closed at once.
 */
import { spawn } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { Registry } from "../../registry/registry.js";
import { scratchDir } from "../helpers/tiny-engines.js";
import { randomUnetAdapter } from "../pipelines/lora-fixtures.js";

const ROOT = join(fileURLToPath(import.meta.url), "..", "..", "..");
/** Loading the CLI through tsx takes a few seconds on 2 busy cores. */
const CLI_TIMEOUT_MS = 60_000;

describe("a command whose reader closed the pipe", () => {
  it(
    "lora show --json | head: exits 0 without an EPIPE stack trace",
    async () => {
      const registryDir = join(await scratchDir("closed-pipe"), "registry");
      const registry = await Registry.open(registryDir);
      const slots = [
        {
          module: "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
          inFeatures: 32,
          outFeatures: 32,
        },
      ];
      for (const seed of [1, 2, 3]) {
        await registry.publish("style", randomUnetAdapter(slots, seed), {
          base: { family: "sd15" },
          sourceFormat: "test",
        });
      }
      registry.close();
      const child = spawn(
        process.execPath,
        ["--import", "tsx", "cli/main.ts", "lora", "show", "style", "--json", "--registry", registryDir],
        { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] },
      );
      child.stdout.destroy(); // `head` that has read all it wants, before the first write
      let stderr = "";
      child.stderr.on("data", (chunk: Buffer) => {
        stderr += chunk.toString();
      });
      const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
      expect(stderr).toBe("");
      expect(code).toBe(0);
    },
    CLI_TIMEOUT_MS,
  );
});
