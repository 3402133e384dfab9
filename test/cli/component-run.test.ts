/**
 * `stepwise component run`, run in-process on the upstream reference cases: the reference io file
 * is passed as --inputs as it is, and every output written must match the reference within the
 * README's tolerance. Errors name the file and the problem.
 */
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { CliError } from "../../cli/cli-error.js";
import type { CommandOutput } from "../../cli/command-output.js";
import { componentCommand } from "../../cli/commands/component.js";
import { float32, int64, type Tensor, toFloat32 } from "../../diffusion/tensor.js";
import { readSafetensors, writeSafetensors } from "../../diffusion/weights/safetensors.js";
import {
  FP16_REFERENCE_TOLERANCE,
  ioTensor,
  loadReferenceCase,
  REFERENCE_TOLERANCE,
  type ReferenceCaseName,
  relativeError,
} from "../models/reference-cases.js";
import { useTempDir } from "../weights/helpers/temp-dir.js";

const temp = useTempDir("component-run");

function captured(): { output: CommandOutput; stdout: () => string } {
  let text = "";
  return {
    output: { stdout: { write: (t: string) => (text += t) }, stderr: { write: () => true } },
    stdout: () => text,
  };
}

/** Write the case's config.json next to the outputs and run the command; returns the written file. */
async function runCase(
  name: ReferenceCaseName,
  kind: string,
  extra: readonly string[] = [],
  inputs?: string,
): Promise<{ outputs: Map<string, Tensor>; stdout: string }> {
  const c = await loadReferenceCase(name);
  const config = temp.path(`${name}-config.json`);
  await writeFile(config, JSON.stringify(c.config));
  const out = temp.path(`${name}-${kind}-${extra.join("")}.safetensors`);
  const { output, stdout } = captured();
  await componentCommand(output).parseAsync(
    [
      "run",
      "--kind",
      kind,
      "--config",
      config,
      "--weights",
      join(c.dir, "weights.safetensors"),
      "--inputs",
      inputs ?? join(c.dir, "io.safetensors"),
      "--out",
      out,
      ...extra,
    ],
    { from: "user" },
  );
  return { outputs: (await readSafetensors(out)).tensors, stdout: stdout() };
}

async function expectMatches(
  name: ReferenceCaseName,
  outputs: ReadonlyMap<string, Tensor>,
  keys: readonly string[],
  tolerance = REFERENCE_TOLERANCE,
): Promise<void> {
  const c = await loadReferenceCase(name);
  for (const key of keys) {
    expect(outputs.get(key)?.dtype, key).toBe("float32");
    expect(relativeError(outputs.get(key)!, ioTensor(c, key)), key).toBeLessThanOrEqual(tolerance);
  }
}

describe("stepwise component run on the reference cases", () => {
  it("unet (SD1.5 layout, onnx): out and time_embedding_out", async () => {
    const { outputs, stdout } = await runCase("unet-tiny-sd15", "unet");
    expect([...outputs.keys()].sort()).toEqual(["out", "time_embedding_out"]);
    await expectMatches("unet-tiny-sd15", outputs, ["out", "time_embedding_out"]);
    expect(stdout).toContain("out [2, 4, 32, 32]");
  });

  it("unet (SDXL layout, onnx, fp16 graph): out, time and added embeddings", async () => {
    const { outputs } = await runCase("unet-tiny-sdxl", "unet", ["--dtype", "fp16"]);
    const keys = ["out", "time_embedding_out", "add_embedding_out"];
    await expectMatches("unet-tiny-sdxl", outputs, keys, FP16_REFERENCE_TOLERANCE);
  });

  it("vae-encode and vae-decode (onnx)", async () => {
    const encoded = await runCase("vae-tiny", "vae-encode");
    await expectMatches("vae-tiny", encoded.outputs, ["moments", "posterior_mean", "posterior_logvar"]);
    const decoded = await runCase("vae-tiny", "vae-decode");
    expect([...decoded.outputs.keys()]).toEqual(["decoded"]);
    await expectMatches("vae-tiny", decoded.outputs, ["decoded"]);
  });

  it("clip-text with projection (onnx) and without (reference backend): every hidden state", async () => {
    const hidden = ["last_hidden_state", "hidden_states_penultimate", "all_hidden_states", "pooler_output"];
    const projected = await runCase("clip-text-tiny-proj-gelu", "clip-text");
    await expectMatches("clip-text-tiny-proj-gelu", projected.outputs, [...hidden, "text_embeds"]);
    const plain = await runCase("clip-text-tiny", "clip-text", ["--backend", "reference"]);
    expect(plain.outputs.has("text_embeds")).toBe(false);
    await expectMatches("clip-text-tiny", plain.outputs, hidden);
  });

  it("a config without `architectures` takes the projection from the weights", async () => {
    const c = await loadReferenceCase("clip-text-tiny-proj-gelu");
    const { architectures: _, ...withoutArchitectures } = c.config;
    const config = temp.path("proj-no-architectures.json");
    await writeFile(config, JSON.stringify(withoutArchitectures));
    const out = temp.path("proj-no-architectures.safetensors");
    await componentCommand(captured().output).parseAsync(
      [
        "run",
        "--kind",
        "clip-text",
        "--config",
        config,
        "--weights",
        join(c.dir, "weights.safetensors"),
      ].concat(["--inputs", join(c.dir, "io.safetensors"), "--out", out]),
      { from: "user" },
    );
    await expectMatches("clip-text-tiny-proj-gelu", (await readSafetensors(out)).tensors, ["text_embeds"]);
  });

  it("one int64 timestep for the whole batch is repeated over it, as diffusers does", async () => {
    const c = await loadReferenceCase("unet-tiny-sd15");
    const path = temp.path("scalar-timestep.safetensors");
    await writeSafetensors(path, {
      sample: ioTensor(c, "sample"),
      timestep: int64([], [999]),
      encoder_hidden_states: ioTensor(c, "encoder_hidden_states"),
    });
    const out = (await runCase("unet-tiny-sd15", "unet", [], path)).outputs.get("out")!;
    const ref = ioTensor(c, "out");
    const row = (t: Tensor, i: number) => {
      const size = t.size / t.shape[0];
      return float32(t.shape.slice(1), toFloat32(t).data.subarray(i * size, (i + 1) * size));
    };
    // Upstream ran row 0 at t = 999 and row 1 at t = 10.
    expect(relativeError(row(out, 0), row(ref, 0))).toBeLessThanOrEqual(REFERENCE_TOLERANCE);
    expect(relativeError(row(out, 1), row(ref, 1))).toBeGreaterThan(0.01);
  });

  describe("errors name the file and the problem", () => {
    async function inputsWith(name: string, tensors: Record<string, Tensor>): Promise<string> {
      const path = temp.path(name);
      await writeSafetensors(path, tensors);
      return path;
    }

    it("a missing input tensor", async () => {
      const c = await loadReferenceCase("unet-tiny-sd15");
      const path = await inputsWith("no-timestep.safetensors", {
        sample: ioTensor(c, "sample"),
        encoder_hidden_states: ioTensor(c, "encoder_hidden_states"),
      });
      await expect(runCase("unet-tiny-sd15", "unet", [], path)).rejects.toThrow(
        new CliError(
          `${path}: missing input tensor timestep (a unet takes sample, timestep, encoder_hidden_states)`,
        ),
      );
    });

    it("a wrong channel count, and batches that disagree", async () => {
      const c = await loadReferenceCase("unet-tiny-sd15");
      const threeChannels = await inputsWith("three-channels.safetensors", {
        sample: float32([2, 3, 32, 32]),
        timestep: ioTensor(c, "timestep"),
        encoder_hidden_states: ioTensor(c, "encoder_hidden_states"),
      });
      await expect(runCase("unet-tiny-sd15", "unet", [], threeChannels)).rejects.toThrow(
        `${threeChannels}: input sample has shape [2, 3, 32, 32], expected [batch, 4, height, width] (dimension 1 must be 4)`,
      );
      const batches = await inputsWith("batches.safetensors", {
        sample: ioTensor(c, "sample"),
        timestep: ioTensor(c, "timestep"),
        encoder_hidden_states: float32([3, 77, 32]),
      });
      await expect(runCase("unet-tiny-sd15", "unet", [], batches)).rejects.toThrow(
        "input encoder_hidden_states has batch 3 (dimension 0), but sample has 2",
      );
    });

    it("float ids, and a weights file that lacks what the config needs", async () => {
      const ids = await inputsWith("float-ids.safetensors", { input_ids: float32([1, 77]) });
      await expect(runCase("clip-text-tiny", "clip-text", [], ids)).rejects.toThrow(
        `${ids}: input input_ids is float32, expected integers`,
      );
      // The SD1.5 UNet's weights under the SDXL config: missing and mis-shaped keys, listed.
      const sdxl = await loadReferenceCase("unet-tiny-sdxl");
      const config = temp.path("sdxl-config.json");
      await writeFile(config, JSON.stringify(sdxl.config));
      const sd15 = await loadReferenceCase("unet-tiny-sd15");
      const run = componentCommand(captured().output).parseAsync(
        [
          "run",
          "--kind",
          "unet",
          "--config",
          config,
          "--weights",
          join(sd15.dir, "weights.safetensors"),
        ].concat(["--inputs", join(sdxl.dir, "io.safetensors"), "--out", temp.path("never.safetensors")]),
        { from: "user" },
      );
      await expect(run).rejects.toThrow(CliError);
      await expect(run).rejects.toThrow(
        /the checkpoint does not match its config\n {2}\d+ missing: add_embedding/,
      );
      await expect(run).rejects.toThrow(/\d+ mis-shaped: .*\(expected \[\d+, 64\], found \[\d+, 32\]\)/);
      await expect(readFile(temp.path("never.safetensors"))).rejects.toThrow(/ENOENT/);
    });

    it("bad options: an unknown kind, fp16 on the reference backend, a missing file", async () => {
      await expect(runCase("vae-tiny", "vae")).rejects.toThrow(
        new CliError(
          '--kind must be one of unet, vae-encode, vae-decode, clip-text, clip, spm, spm-preprocess, got "vae"',
        ),
      );
      await expect(
        runCase("vae-tiny", "vae-decode", ["--backend", "reference", "--dtype", "fp16"]),
      ).rejects.toThrow("--dtype fp16 needs --backend onnx");
      const absent = temp.path("absent.safetensors");
      await expect(runCase("vae-tiny", "vae-decode", [], absent)).rejects.toThrow(
        new CliError(`--inputs ${absent}: no such file`),
      );
    });
  });
});
