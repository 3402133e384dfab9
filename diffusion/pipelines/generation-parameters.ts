/**
 * AUTOMATIC1111's "parameters" text: how a generation's settings are written into the PNG's text
 * chunk, so other tools (A1111's PNG Info, ComfyUI loaders, civitai) can read them back, and the
 * sampler names its API uses.
 */
import type { SchedulerName } from "../schedulers/index.js";

export const A1111_SAMPLER_NAMES: Readonly<Record<SchedulerName, string>> = {
  ddim: "DDIM",
  euler: "Euler",
  euler_a: "Euler a",
  dpmpp_2m: "DPM++ 2M",
  dpmpp_2m_karras: "DPM++ 2M Karras",
};

/** A1111 sampler name (case-insensitive; newer releases split "Karras" into a scheduler field) -> ours. */
export function schedulerFromA1111(name: string, scheduleType?: string): SchedulerName | undefined {
  const wanted =
    `${name}${scheduleType && scheduleType.toLowerCase() === "karras" && !/karras/i.test(name) ? " Karras" : ""}`.toLowerCase();
  const hit = Object.entries(A1111_SAMPLER_NAMES).find(([, a]) => a.toLowerCase() === wanted);
  return hit?.[0] as SchedulerName | undefined;
}

export interface GenerationParameters {
  readonly prompt: string;
  readonly negativePrompt?: string;
  readonly steps: number;
  readonly scheduler: SchedulerName;
  readonly guidanceScale: number;
  readonly seed: bigint | number;
  readonly width: number;
  readonly height: number;
  readonly modelName?: string;
  readonly modelHash?: string;
  readonly denoisingStrength?: number;
  readonly loras?: ReadonlyArray<{
    readonly name: string;
    readonly version?: number;
    readonly hash?: string;
  }>;
  readonly version?: string;
}

/** A value that contains a comma, colon or quote is quoted, as A1111 does. */
function quote(value: string): string {
  return /[,:"\n]/.test(value) ? JSON.stringify(value) : value;
}

export function formatParameters(p: GenerationParameters): string {
  const fields: Array<[string, string]> = [
    ["Steps", String(p.steps)],
    ["Sampler", A1111_SAMPLER_NAMES[p.scheduler]],
    ["CFG scale", String(p.guidanceScale)],
    ["Seed", String(p.seed)],
    ["Size", `${p.width}x${p.height}`],
  ];
  if (p.modelHash) fields.push(["Model hash", p.modelHash]);
  if (p.modelName) fields.push(["Model", p.modelName]);
  if (p.denoisingStrength !== undefined) fields.push(["Denoising strength", String(p.denoisingStrength)]);
  if (p.loras && p.loras.length > 0) {
    const hashes = p.loras.map(
      (l) => `${l.name}${l.version !== undefined ? `@${l.version}` : ""}: ${l.hash ?? "unknown"}`,
    );
    fields.push(["Lora hashes", JSON.stringify(hashes.join(", "))]);
  }
  if (p.version) fields.push(["Version", p.version]);
  const lines = [p.prompt];
  if (p.negativePrompt) lines.push(`Negative prompt: ${p.negativePrompt}`);
  lines.push(fields.map(([k, v]) => `${k}: ${k === "Lora hashes" ? v : quote(v)}`).join(", "));
  return lines.join("\n");
}

/** Parse A1111 parameters text back into its prompt, negative prompt and key/value fields. */
export function parseParameters(text: string): {
  prompt: string;
  negativePrompt: string;
  fields: Record<string, string>;
} {
  const lines = text.split("\n");
  const last = lines[lines.length - 1];
  const hasFields = /^Steps: /.test(last);
  const body = hasFields ? lines.slice(0, -1) : lines;
  const negIndex = body.findIndex((l) => l.startsWith("Negative prompt: "));
  const prompt = (negIndex >= 0 ? body.slice(0, negIndex) : body).join("\n");
  const negativePrompt =
    negIndex >= 0 ? body.slice(negIndex).join("\n").slice("Negative prompt: ".length) : "";
  const fields: Record<string, string> = {};
  if (hasFields) {
    const re = /\s*([\w ]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)/g;
    for (const m of last.matchAll(re)) {
      const value = m[2].startsWith('"') ? (JSON.parse(m[2]) as string) : m[2].trim();
      fields[m[1].trim()] = value;
    }
  }
  return { prompt, negativePrompt, fields };
}
