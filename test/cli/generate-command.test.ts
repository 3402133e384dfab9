/**
 * `stepwise generate`, run in-process through commander on the tiny SD1.5 engine: files and their
 * names, parameters in the PNG, pixels equal to the library's for the same request, LoRA files in
 * two formats combined, image-to-image, the progress bar only on a terminal, and user errors.
 */
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { CommanderError } from "commander";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CliError } from "../../cli/cli-error.js";
import { generateCommand, outputPaths } from "../../cli/commands/generate.js";
import { parseLoraSpec } from "../../cli/lora-option.js";
import type { TextSink } from "../../cli/progress.js";
import type { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import { unetLoraFeeds } from "../../diffusion/lora/feeds.js";
import { exportLora } from "../../diffusion/lora/formats/index.js";
import { exportPeftLora } from "../../diffusion/lora/formats/peft.js";
import { parseParameters } from "../../diffusion/pipelines/generation-parameters.js";
import { readPngText, toRgbBytes } from "../../diffusion/pipelines/image-io.js";
import { type GenerationRequest, generateOne } from "../../diffusion/pipelines/text-to-image.js";
import type { Float32Tensor } from "../../diffusion/tensor.js";
import { writeSafetensors } from "../../diffusion/weights/safetensors.js";
import { Registry } from "../../registry/registry.js";
import { openTinyEngine, scratchDir, TEST_THREADS, tinyEngineFolder } from "../helpers/tiny-engines.js";
import { randomUnetAdapter } from "../pipelines/lora-fixtures.js";

interface Captured {
  stdout: string;
  stderr: string;
}

function sink(captured: Captured, key: keyof Captured, isTTY: boolean): TextSink {
  return {
    isTTY,
    write: (text: string) => {
      captured[key] += text;
      return true;
    },
  };
}

/** Run `stepwise generate` with `args` (the model, threads and provider added); stderr a terminal or not. */
async function runGenerate(args: string[], options: { tty?: boolean } = {}): Promise<Captured> {
  const captured: Captured = { stdout: "", stderr: "" };
  const command = generateCommand({
    stdout: sink(captured, "stdout", false),
    stderr: sink(captured, "stderr", options.tty === true),
  }).exitOverride();
  await command.parseAsync(
    [
      "--model",
      await tinyEngineFolder("tiny-sd15"),
      "--provider",
      "cpu",
      "--threads",
      String(TEST_THREADS),
      ...args,
    ],
    { from: "user" },
  );
  return captured;
}

async function rgbOf(file: string): Promise<Buffer> {
  return sharp(file).removeAlpha().raw().toBuffer();
}

function rgbOfPixels(pixels: Float32Tensor): Buffer {
  return Buffer.from(toRgbBytes(pixels).data);
}

async function parametersOf(file: string) {
  return parseParameters(readPngText(await readFile(file)).parameters);
}

describe("stepwise generate", () => {
  let engine: DiffusionEngine;
  let dir: string;
  const prompt = "a photo of a cat";
  const request: GenerationRequest = { prompt, steps: 2, guidanceScale: 5, seed: 5, width: 64, height: 64 };
  const common = ["--prompt", prompt, "--steps", "2", "--cfg", "5", "--seed", "5", "--size", "64x64"];

  beforeAll(async () => {
    engine = await openTinyEngine("tiny-sd15");
    dir = await scratchDir("generate-command");
  });
  afterAll(async () => {
    await engine.close();
  });

  it("writes n images as FILE-1, FILE-2 with their own seeds, the library's pixels, and no bar off a terminal", async () => {
    const out = join(dir, "cat.png");
    const captured = await runGenerate([...common, "--n", "2", "--out", out]);
    const files = outputPaths(out, 2);
    expect(files).toEqual([join(dir, "cat-1.png"), join(dir, "cat-2.png")]);
    expect(captured.stdout).toBe(`${files.join("\n")}\n`);
    expect(captured.stderr).toBe("");
    const library = await generateOne(engine, { ...request, n: 2 });
    for (const [i, file] of files.entries()) {
      expect((await rgbOf(file)).equals(rgbOfPixels(library.images[i].pixels)), file).toBe(true);
      const parameters = await parametersOf(file);
      expect(parameters.prompt).toBe(prompt);
      expect(parameters.fields).toMatchObject({
        Steps: "2",
        Sampler: "DDIM",
        "CFG scale": "5",
        Seed: String(5 + i),
        Size: "64x64",
        Model: basename(await tinyEngineFolder("tiny-sd15")),
        "Model hash": engine.manifest.source.modelHash.slice(0, 10),
        Version: "stepwise 0.1.0",
      });
    }
  });

  it("combines LoRA files of two formats with their weights, as the library does, with a bar on a terminal", async () => {
    const slots = engine.manifest.graphs.unet!.loraSlots;
    const a = randomUnetAdapter(slots, 21);
    const b = randomUnetAdapter(slots, 22);
    const diffusersFile = join(dir, "style-a.safetensors");
    const exportedA = exportLora(a, "diffusers");
    await writeSafetensors(diffusersFile, exportedA.tensors, exportedA.metadata);
    // PEFT's save_pretrained layout: a folder with the tensors and adapter_config.json.
    const peftDir = join(dir, "peft-b");
    await mkdir(peftDir);
    const exportedB = exportPeftLora(b, { component: "unet" });
    await writeSafetensors(join(peftDir, "adapter_model.safetensors"), exportedB.tensors, exportedB.metadata);
    await writeFile(join(peftDir, "adapter_config.json"), JSON.stringify(exportedB.adapterConfig));

    const out = join(dir, "lora.png");
    const captured = await runGenerate(
      [
        ...common,
        "--lora",
        `${diffusersFile}:0.5`,
        "--lora",
        join(peftDir, "adapter_model.safetensors"),
        "--out",
        out,
      ],
      { tty: true },
    );
    const feeds = unetLoraFeeds([
      { adapter: a, weight: 0.5 },
      { adapter: b, weight: 1 },
    ]);
    const library = await generateOne(engine, { ...request, lora: { key: "a+b", feeds } });
    expect((await rgbOf(out)).equals(rgbOfPixels(library.images[0].pixels))).toBe(true);
    const plain = await generateOne(engine, request);
    expect((await rgbOf(out)).equals(rgbOfPixels(plain.images[0].pixels))).toBe(false);
    expect((await parametersOf(out)).fields["Lora hashes"]).toMatch(
      /^style-a: [0-9a-f]{12}, adapter_model: [0-9a-f]{12}$/,
    );
    expect(captured.stderr).toMatch(/generating \[.*\] 2\/2 steps/);
  });

  it("image-to-image with strength 0 writes the init image back; .jpg writes a JPEG (and an unused negative prompt is flagged)", async () => {
    const init = join(dir, "init.png");
    const gradient = Buffer.alloc(64 * 64 * 3, 0).map((_, i) => (i * 7) % 256);
    await sharp(gradient, { raw: { width: 64, height: 64, channels: 3 } })
      .png()
      .toFile(init);
    const out = join(dir, "same.png");
    await runGenerate([...common, "--init-image", init, "--strength", "0", "--out", out]);
    expect((await rgbOf(out)).equals(await rgbOf(init))).toBe(true);
    expect((await parametersOf(out)).fields["Denoising strength"]).toBe("0");

    const jpeg = join(dir, "cat.jpg");
    const captured = await runGenerate([
      ...common,
      "--steps",
      "1",
      "--cfg",
      "1",
      "--negative-prompt",
      "x",
      "--out",
      jpeg,
    ]);
    expect(captured.stderr).toContain("--negative-prompt has no effect with --cfg 1 or less");
    const meta = await sharp(jpeg).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(["jpeg", 64, 64]);
  });

  it("names the option at fault in user errors", async () => {
    const failure = (args: string[]) => runGenerate([...common, ...args]).catch((e: unknown) => e);
    const cases: Array<[string[], RegExp]> = [
      [
        ["--out", join(dir, "x.gif")],
        /--out .*x\.gif: unknown image extension \(use \.png, \.jpg, \.jpeg, \.webp\)/,
      ],
      [
        ["--lora", "spo-cats:0.8", "--registry", join(dir, "empty-registry"), "--out", join(dir, "x.png")],
        /--lora spo-cats: no such file, and LoRA "spo-cats" does not exist in the registry/,
      ],
      [["--strength", "0.5", "--out", join(dir, "x.png")], /--strength needs --init-image/],
      [["--size", "60x64", "--out", join(dir, "x.png")], /--size: width: must be divisible by 8, got 60/],
      [["--out", join(dir, "missing", "x.png")], /folder .*missing does not exist/],
    ];
    for (const [args, message] of cases) {
      const error = await failure(args);
      expect(error, args.join(" ")).toBeInstanceOf(CliError);
      expect((error as Error).message).toMatch(message);
    }
  });

  it("takes registry names (name, name@version, name:alias) as --lora, as the files they hold", async () => {
    const slots = engine.manifest.graphs.unet!.loraSlots;
    const registryDir = join(dir, "registry");
    const registry = await Registry.open(registryDir);
    const a = randomUnetAdapter(slots, 31);
    const b = randomUnetAdapter(slots, 32);
    await registry.publish("cats", a, { base: { family: "sd15" }, sourceFormat: "test" });
    await registry.publish("cats", b, { base: { family: "sd15" }, sourceFormat: "test" }, { alias: "prod" });
    await registry.promote("cats", "prod", 1, { expected: 2 });
    await registry.publish("xl", a, { base: { family: "sdxl" }, sourceFormat: "test" });
    registry.close();

    const library = async (adapter: typeof a, weight: number) =>
      rgbOfPixels(
        (
          await generateOne(engine, {
            ...request,
            lora: { key: `${weight}`, feeds: unetLoraFeeds([{ adapter, weight }]) },
          })
        ).images[0].pixels,
      );
    for (const [value, adapter, weight] of [
      ["cats:prod:0.5", a, 0.5],
      ["cats@2", b, 1],
      ["cats", b, 1],
    ] as const) {
      const out = join(dir, `registry-${value.replace(/[^a-z0-9]/g, "-")}.png`);
      await runGenerate([...common, "--lora", value, "--registry", registryDir, "--out", out]);
      expect((await rgbOf(out)).equals(await library(adapter, weight)), value).toBe(true);
    }
    const wrongFamily = await runGenerate([
      ...common,
      "--lora",
      "xl",
      "--registry",
      registryDir,
      "--out",
      join(dir, "x.png"),
    ]).catch((e: unknown) => e);
    expect(wrongFamily).toBeInstanceOf(CliError);
    expect((wrongFamily as Error).message).toMatch(/--lora xl: xl@1 was made for sdxl, the engine is sd15/);
  });

  it("refuses a LoRA that does not fit the engine's slots, naming the file", async () => {
    const slots = engine.manifest.graphs.unet!.loraSlots.map((s) => ({ ...s, inFeatures: s.inFeatures * 2 }));
    const file = join(dir, "wrong-base.safetensors");
    const exported = exportLora(randomUnetAdapter(slots, 3), "diffusers");
    await writeSafetensors(file, exported.tensors, exported.metadata);
    const error = await runGenerate([...common, "--lora", file, "--out", join(dir, "x.png")]).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(CliError);
    expect((error as Error).message).toContain(`--lora ${file}: `);
    expect((error as Error).message).toMatch(/shape does not fit the slot/);
  });

  it("lets commander refuse values outside the documented choices and formats", async () => {
    for (const args of [
      ["--scheduler", "heun"],
      ["--steps", "0"],
      ["--size", "64"],
      ["--generator", "numpy"],
    ]) {
      const error = await runGenerate([...common, ...args, "--out", join(dir, "x.png")]).catch(
        (e: unknown) => e,
      );
      expect(error, args.join(" ")).toBeInstanceOf(CommanderError);
      expect((error as CommanderError).code).toBe("commander.invalidArgument");
    }
  });

  it("parses --lora weights after the last colon only when they are numbers", () => {
    expect(parseLoraSpec("a.safetensors")).toEqual({ path: "a.safetensors", weight: 1 });
    expect(parseLoraSpec("dir/a.safetensors:0.7")).toEqual({ path: "dir/a.safetensors", weight: 0.7 });
    expect(parseLoraSpec("a.safetensors:-1e-1")).toEqual({ path: "a.safetensors", weight: -0.1 });
    expect(parseLoraSpec("C:/loras/a.safetensors")).toEqual({ path: "C:/loras/a.safetensors", weight: 1 });
  });
});
