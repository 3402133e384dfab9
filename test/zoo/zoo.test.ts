/**
 * The model zoo: complete diffusers-layout folders, the same bytes for the same name and seed
 * (pinned, since the server's embedded default and every test model come from here), weights that
 * follow the reference cases' recipe, and the `stepwise zoo` command.
 */
import { existsSync } from "node:fs";
import { cp, mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { beforeAll, describe, expect, it } from "vitest";
import { CliError } from "../../cli/cli-error.js";
import { zooCommand } from "../../cli/commands/zoo.js";
import { toFloat32 } from "../../diffusion/tensor.js";
import { readSafetensors } from "../../diffusion/weights/safetensors.js";
import { BIAS_SCALE, NORM_WEIGHT_JITTER } from "../../diffusion/zoo/random-weights.js";
import { writeRandomCheckpoint, writeZooModel, ZooError } from "../../diffusion/zoo/zoo.js";
import { useTempDir } from "../weights/helpers/temp-dir.js";
import { hashFolder, listFiles } from "./folder-hash.js";

/**
 * sha256 of the folders (see folder-hash.ts) at seed 0. A change here changes every tiny model and
 * the server's embedded default: update these only for an intended change of the zoo.
 */
const PINNED_HASHES = {
  "tiny-sd15": "bd787f9ae92422d72db4cfada425c3260bb98e99838ef7ed751cf7d82fc9761c",
  "tiny-sdxl": "782a49e0b8e2e88e7f5567cdee77fef5a35d92c1cabbc5974b8df0515e3cd661",
} as const;

const TOKENIZER_FILES = ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"];

const temp = useTempDir("zoo");

function captured() {
  let text = "";
  return {
    output: { stdout: { write: (t: string) => (text += t) }, stderr: { write: () => true } },
    stdout: () => text,
  };
}

describe("writeZooModel", () => {
  // Paths are made in the hook: the temporary folder exists only once the suite runs.
  const seed0 = { "tiny-sd15": "", "tiny-sdxl": "" };
  beforeAll(async () => {
    for (const name of ["tiny-sd15", "tiny-sdxl"] as const) {
      seed0[name] = temp.path(`${name}-seed0`);
      await writeZooModel(name, seed0[name], 0);
    }
  });

  it("tiny-sd15: a complete StableDiffusionPipeline folder", async () => {
    const dir = seed0["tiny-sd15"];
    expect(await listFiles(dir)).toEqual([
      "model_index.json",
      "scheduler/scheduler_config.json",
      "text_encoder/config.json",
      "text_encoder/model.safetensors",
      ...TOKENIZER_FILES.map((f) => `tokenizer/${f}`),
      "unet/config.json",
      "unet/diffusion_pytorch_model.safetensors",
      "vae/config.json",
      "vae/diffusion_pytorch_model.safetensors",
    ]);
    const index = JSON.parse(await readFile(`${dir}/model_index.json`, "utf8"));
    expect(index._class_name).toBe("StableDiffusionPipeline");
  });

  it("tiny-sdxl: adds the second text encoder and tokenizer, with the projection", async () => {
    const dir = seed0["tiny-sdxl"];
    const files = await listFiles(dir);
    expect(files).toContain("text_encoder_2/model.safetensors");
    expect(files.filter((f) => f.startsWith("tokenizer_2/"))).toEqual(
      TOKENIZER_FILES.map((f) => `tokenizer_2/${f}`),
    );
    const weights = (await readSafetensors(`${dir}/text_encoder_2/model.safetensors`)).tensors;
    expect(weights.get("text_projection.weight")?.shape).toEqual([32, 32]);
    const config = JSON.parse(await readFile(`${dir}/text_encoder_2/config.json`, "utf8"));
    expect(config.architectures).toEqual(["CLIPTextModelWithProjection"]);
  });

  it("the same seed gives the same bytes, on any run and machine (pinned)", async () => {
    for (const [name, dir] of Object.entries(seed0)) {
      expect(await hashFolder(dir), name).toBe(PINNED_HASHES[name as keyof typeof PINNED_HASHES]);
    }
  });

  it("another seed changes the weights and nothing else", async () => {
    const other = temp.path("sd15-seed1");
    await writeZooModel("tiny-sd15", other, 1);
    const files = await listFiles(other);
    expect(files).toEqual(await listFiles(seed0["tiny-sd15"]));
    for (const file of files) {
      const same = (await readFile(`${seed0["tiny-sd15"]}/${file}`)).equals(
        await readFile(`${other}/${file}`),
      );
      expect(same, file).toBe(!file.endsWith(".safetensors"));
    }
  });

  it("weights follow the reference recipe: randn/sqrt(fan_in), norms 1 + 0.1 randn, biases 0.05 randn", async () => {
    const dir = temp.path("recipe");
    await writeZooModel("tiny-sd15", dir, 3);
    const weights = (await readSafetensors(`${dir}/unet/diffusion_pytorch_model.safetensors`)).tensors;
    const std = (name: string, offset = 0) => {
      const d = toFloat32(weights.get(name)!).data;
      return Math.sqrt(d.reduce((s, v) => s + (v - offset) ** 2, 0) / d.length);
    };
    // conv_in [32, 4, 3, 3]: fan_in 36. Thousands of samples: within 10% of the target.
    expect(std("conv_in.weight") * Math.sqrt(36)).toBeCloseTo(1, 0);
    expect(Math.abs(std("conv_in.weight") * Math.sqrt(36) - 1)).toBeLessThan(0.1);
    // The up-path resnet convs (1152-element rows): large enough for a tight check.
    expect(Math.abs(std("up_blocks.0.resnets.0.conv1.weight") * Math.sqrt(128 * 9) - 1)).toBeLessThan(0.02);
    expect(Math.abs(std("conv_norm_out.weight", 1) / NORM_WEIGHT_JITTER - 1)).toBeLessThan(0.35);
    expect(Math.abs(std("up_blocks.0.resnets.0.conv1.bias") / BIAS_SCALE - 1)).toBeLessThan(0.25);
  });

  it("refuses an existing folder, even an empty one, and leaves no temporary folder", async () => {
    const dir = temp.path("exists");
    await mkdir(dir);
    await expect(writeZooModel("tiny-sd15", dir)).rejects.toThrow(
      new ZooError(`${dir} already exists; choose another folder or remove it`),
    );
    expect(await readdir(dir)).toEqual([]);
    expect((await readdir(temp.path(""))).filter((f) => f.includes(".tmp-"))).toEqual([]);
  });
});

describe("writeRandomCheckpoint", () => {
  /** A zoo folder's configs only: what a diffusers folder holds besides its weights. */
  let made = 0;
  async function configsOf(name: "tiny-sd15" | "tiny-sdxl"): Promise<string> {
    made++;
    const full = temp.path(`${name}-for-configs-${made}`);
    await writeZooModel(name, full, 0);
    const configs = temp.path(`${name}-configs-${made}`);
    await cp(full, configs, { recursive: true, filter: (src) => !src.endsWith(".safetensors") });
    return configs;
  }

  it("draws the zoo's weights from the zoo's configs: the same bytes as writeZooModel (pinned)", async () => {
    for (const name of ["tiny-sd15", "tiny-sdxl"] as const) {
      const out = temp.path(`${name}-random`);
      await writeRandomCheckpoint(await configsOf(name), out, 0);
      expect(await hashFolder(out), name).toBe(PINNED_HASHES[name]);
    }
  });

  it("keeps files it does not know, skips components without a config, and names a bad index", async () => {
    const configs = await configsOf("tiny-sd15");
    await writeFile(`${configs}/README.md`, "kept\n");
    await rm(`${configs}/vae/config.json`);
    const out = temp.path("partial");
    await writeRandomCheckpoint(configs, out, 0);
    const files = await listFiles(out);
    expect(files).toContain("README.md");
    expect(files).toContain("unet/diffusion_pytorch_model.safetensors");
    expect(files.filter((f) => f.startsWith("vae/"))).toEqual([]);

    const broken = temp.path("broken");
    await mkdir(broken);
    await writeFile(`${broken}/model_index.json`, "{");
    await expect(writeRandomCheckpoint(broken, temp.path("never"))).rejects.toThrow(
      /broken\/model_index.json: cannot read the pipeline index/,
    );
    await writeFile(
      `${broken}/model_index.json`,
      JSON.stringify({ unet: ["diffusers", "UNet2DConditionModel"] }),
    );
    await expect(writeRandomCheckpoint(broken, temp.path("never"))).rejects.toThrow(
      /names no component with a config.json/,
    );
    await mkdir(`${broken}/unet`);
    await writeFile(`${broken}/unet/config.json`, "not json");
    await expect(writeRandomCheckpoint(broken, temp.path("never"))).rejects.toThrow(
      /broken\/unet\/config.json: cannot read the component config/,
    );
    expect(existsSync(temp.path("never"))).toBe(false);
    expect((await readdir(temp.path(""))).filter((f) => f.includes(".tmp-"))).toEqual([]);
  });
});

describe("stepwise zoo", () => {
  it("writes the pinned bytes (a second writer at seed 0), and says what it wrote", async () => {
    const dir = temp.path("cli-sd15");
    const { output, stdout } = captured();
    await zooCommand(output).parseAsync(["tiny-sd15", "--out", dir, "--seed", "0"], { from: "user" });
    expect(await hashFolder(dir)).toBe(PINNED_HASHES["tiny-sd15"]);
    expect(stdout()).toMatch(
      new RegExp(
        `^wrote tiny-sd15 \\(seed 0\\) to ${dir}: ${(await listFiles(dir)).length} files, \\d+ bytes\\n$`,
      ),
    );
  });

  it("errors: an unknown model, a bad seed, an existing folder", async () => {
    const run = (args: string[]) => zooCommand(captured().output).parseAsync(args, { from: "user" });
    await expect(run(["tiny-sd3", "--out", temp.path("x")])).rejects.toThrow(
      new CliError('unknown zoo model "tiny-sd3" (available: tiny-sd15, tiny-sdxl, tiny-spm)'),
    );
    await expect(run(["tiny-sd15", "--out", temp.path("x"), "--seed", "1.5"])).rejects.toThrow(
      new CliError('--seed must be an integer, got "1.5"'),
    );
    await expect(run(["tiny-sd15", "--out", temp.path("x"), "--seed", String(2n ** 64n)])).rejects.toThrow(
      CliError,
    );
    await mkdir(temp.path("taken"));
    await expect(run(["tiny-sd15", "--out", temp.path("taken")])).rejects.toThrow(
      new CliError(`${temp.path("taken")} already exists; choose another folder or remove it`),
    );
  });
});
