/**
 * Hand-made ONNX graphs for engine tests, recorded with the project's ONNX backend: small enough
 * that loading them costs nothing, and with outputs that say exactly what the graph was fed.
 */
import { cp, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { type EngineManifest, MANIFEST_FILE } from "../../diffusion/engine/manifest.js";
import { OnnxOps } from "../../diffusion/onnx/onnx-ops.js";
import { writeOnnxModel } from "../../diffusion/onnx/writer.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import { scratchDir, tinyEngineFolder } from "../helpers/tiny-engines.js";

/** `y = x + x` over a float32 vector: a graph any execution provider can run. */
export async function writeDoublingGraph(dir: string): Promise<string> {
  const ops = new OnnxOps({ params: new MapParamSource(new Map()) });
  const x = ops.input("x", "float32", ["n"]);
  ops.output("y", ops.add(x, x));
  await writeOnnxModel(ops, dir, { graphName: "doubling" });
  return join(dir, "model.onnx");
}

/**
 * A stand-in UNet with the real input names whose timestep input has the given dtype:
 * `out = sample + timestep` (the timestep broadcast over each row), so the output shows the value
 * the session received. `encoder_hidden_states` is declared and unused.
 */
async function writeTimestepEchoUnet(dir: string, timestepDtype: "int64" | "float32"): Promise<void> {
  const ops = new OnnxOps({ params: new MapParamSource(new Map()) });
  const sample = ops.input("sample", "float32", ["batch", 4, "height", "width"]);
  const timestep = ops.input("timestep", timestepDtype, ["batch"]);
  ops.input("encoder_hidden_states", "float32", ["batch", "sequence", 32]);
  const t = timestepDtype === "int64" ? ops.cast(timestep, "compute") : timestep;
  ops.output("out", ops.add(sample, ops.reshape(t, [-1, 1, 1, 1])));
  await writeOnnxModel(ops, dir, { graphName: "unet" });
}

/**
 * A copy of the tiny SD1.5 engine whose UNet is the timestep echo graph. The manifest's UNet entry
 * loses its LoRA slots but keeps listing the converter's float32 timestep: the engine must take the
 * dtype from the session, which is what it runs, not from the manifest.
 */
export async function timestepEchoEngine(timestepDtype: "int64" | "float32"): Promise<string> {
  const folder = join(await scratchDir(`echo-${timestepDtype}`), "engine");
  await cp(await tinyEngineFolder("tiny-sd15"), folder, { recursive: true });
  await writeTimestepEchoUnet(join(folder, "unet"), timestepDtype);
  const manifestPath = join(folder, MANIFEST_FILE);
  const manifest = JSON.parse(await readFile(manifestPath, "utf8")) as EngineManifest;
  const rewritten: EngineManifest = {
    ...manifest,
    graphs: { ...manifest.graphs, unet: { ...manifest.graphs.unet!, loraSlots: [] } },
  };
  await writeFile(manifestPath, `${JSON.stringify(rewritten, null, 2)}\n`);
  return folder;
}
