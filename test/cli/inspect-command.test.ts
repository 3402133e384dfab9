/**
 * `stepwise inspect` on the real SD1.5 and SDXL configs (no weights): the parameter counts of the
 * published models, multiply-accumulates that follow the resolution, a CLIP count derived by hand,
 * the table and JSON outputs, and folders without model_index.json.
 */
import { cp, mkdir, writeFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { CliError } from "../../cli/cli-error.js";
import { formatCount, type InspectReport, inspectCommand, inspectModel } from "../../cli/commands/inspect.js";
import { fixturePath } from "../paths.js";
import { useTempDir } from "../weights/helpers/temp-dir.js";

/** The published models' parameter counts (torch `sum(p.numel())` of each component). */
const SD15 = { unet: 859_520_964, vae: 83_653_863, text_encoder: 123_060_480 };
const SDXL = { unet: 2_567_463_684, vae: 83_653_863, text_encoder: 123_060_480, text_encoder_2: 694_659_840 };

const temp = useTempDir("inspect");

function counts(report: InspectReport): Record<string, number> {
  return Object.fromEntries(report.components.map((c) => [c.name, c.parameters]));
}

function macs(report: InspectReport, component: string, pass = "forward"): number {
  const found = report.components.find((c) => c.name === component)?.passes.find((p) => p.pass === pass);
  if (!found) throw new Error(`no ${component} ${pass} pass in the report`);
  return found.macs;
}

async function runInspect(args: readonly string[]): Promise<string> {
  let text = "";
  const output = { stdout: { write: (t: string) => (text += t) }, stderr: { write: () => true } };
  await inspectCommand(output).parseAsync([...args], { from: "user" });
  return text;
}

describe("stepwise inspect on the real configs", () => {
  it("SD1.5: the published parameter counts, measured at 512 px (64 latents)", async () => {
    const report = await inspectModel(fixturePath("configs", "sd15"));
    expect(report.pipeline).toBe("StableDiffusionPipeline");
    expect(counts(report)).toEqual(SD15);
    expect(report.parameters).toBe(SD15.unet + SD15.vae + SD15.text_encoder);
    expect(report.pixels).toBe(512);
    const unet = report.components.find((c) => c.name === "unet")!;
    expect(unet.passes).toEqual([{ pass: "forward", input: "64x64 latents", macs: expect.any(Number) }]);
  });

  it("SDXL: the published parameter counts of both text encoders, the UNet and the VAE, at 1024 px", async () => {
    const report = await inspectModel(fixturePath("configs", "sdxl"));
    expect(counts(report)).toEqual(SDXL);
    expect(report.pixels).toBe(1024);
  });

  it("CLIP ViT-L/14 text: MACs match the count derived by hand", async () => {
    const report = await inspectModel(fixturePath("configs", "sd15"));
    // 12 layers of 77 tokens, width 768, MLP 3072: q, k, v, out projections, Q K^T and A V, two
    // MLP matrices. Embedding lookups and norms do no multiply-accumulates.
    const [layers, tokens, width, mlp] = [12, 77, 768, 3072];
    const perLayer = 4 * tokens * width * width + 2 * tokens * tokens * width + 2 * tokens * width * mlp;
    expect(macs(report, "text_encoder")).toBe(layers * perLayer);
  });

  it("MACs follow the resolution and the batch; parameters do not", async () => {
    const native = await inspectModel(fixturePath("configs", "sd15"));
    const half = await inspectModel(fixturePath("configs", "sd15"), { pixels: 256, batch: 2 });
    expect(counts(half)).toEqual(SD15);
    // Convolutions scale with pixels (x1/4, x2 for the batch); attention's token-squared terms
    // scale faster, so the UNet ratio lands between 1/2 / 4 and 1/2.
    const ratio = macs(half, "unet") / macs(native, "unet");
    expect(ratio).toBeGreaterThan(0.125);
    expect(ratio).toBeLessThan(0.5);
    // The VAE decoder has one attention, at the latent size: nearly pure convolution, just under 1/2.
    const vae = macs(half, "vae", "decode") / macs(native, "vae", "decode");
    expect(vae).toBeGreaterThan(0.48);
    expect(vae).toBeLessThan(0.5);
    expect(macs(half, "text_encoder")).toBe(2 * macs(native, "text_encoder"));
  });

  it("prints a table by default and the report with --json", async () => {
    const table = await runInspect([fixturePath("configs", "sd15")]);
    expect(table).toContain("512x512 px, batch 1");
    expect(table).toMatch(/unet\s+UNet2DConditionModel\s+859,520,964\s+forward\s+64x64 latents\s+\d/);
    expect(table).toMatch(/vae\s+AutoencoderKL\s+83,653,863\s+encode\s+512x512 px/);
    expect(table).toMatch(/\n\s+decode\s+64x64 latents/);
    expect(table).toMatch(/total\s+1,066,235,307/);
    const json = JSON.parse(await runInspect([fixturePath("configs", "sdxl"), "--json", "--size", "512"]));
    expect(json.pixels).toBe(512);
    expect(counts(json)).toEqual(SDXL);
  });

  it("reads a folder of component configs without model_index.json, and a single config.json", async () => {
    const dir = temp.path("configs-only");
    for (const c of ["unet", "vae", "text_encoder"]) {
      await mkdir(`${dir}/${c}`, { recursive: true });
      await cp(fixturePath("configs", "sd15", c, "config.json"), `${dir}/${c}/config.json`);
    }
    expect(counts(await inspectModel(dir))).toEqual(SD15);
    const single = await inspectModel(fixturePath("configs", "sdxl", "text_encoder_2", "config.json"));
    expect(single.components.map((c) => [c.className, c.parameters])).toEqual([
      ["CLIPTextModelWithProjection", SDXL.text_encoder_2],
    ]);
  });
});

describe("stepwise inspect: errors and formatting", () => {
  it("refuses sizes that are not multiples of the VAE scale, and unknown configs", async () => {
    const dir = temp.path("unknown");
    await mkdir(dir, { recursive: true });
    await writeFile(`${dir}/config.json`, JSON.stringify({ _class_name: "ControlNetModel" }));
    await expect(inspectModel(dir)).rejects.toThrow(CliError);
    await expect(inspectModel(dir)).rejects.toThrow(/ControlNetModel/);
    await expect(runInspect([dir, "--size", "0"])).rejects.toThrow(
      '--size must be a positive integer, got "0"',
    );
    await expect(inspectModel(temp.path("absent"))).rejects.toThrow(/no such file or folder/);
  });

  it("formats counts with SI prefixes and four significant digits", () => {
    expect(formatCount(999)).toBe("999");
    expect(formatCount(6_649_256_448)).toBe("6.649 G");
    expect(formatCount(401_642_176_000)).toBe("401.6 G");
    expect(formatCount(1_257_260_000_000)).toBe("1.257 T");
    expect(formatCount(12_000)).toBe("12 k");
  });
});

describe("stepwise inspect: sizes", () => {
  it("refuses an image size the VAE cannot make latents of", async () => {
    await expect(inspectModel(fixturePath("configs", "sd15"), { pixels: 500 })).rejects.toThrow(
      new CliError("the image size must be a positive multiple of 8 pixels, got 500"),
    );
  });
});
