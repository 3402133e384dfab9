/**
 * The WebAssembly kernels the project embeds, compiled from their text sources with wabt (a
 * development dependency; nothing compiles WebAssembly at run time).
 *
 *   npm run wasm          rewrite each kernel's embedded module from its .wat
 *
 * test/trainer/adamw-kernel.test.ts compiles the sources again and fails when an embedded module
 * no longer matches its source.
 */
import { readFile, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import wabtInit from "wabt";

export interface WasmKernel {
  /** The text source, relative to the repository root. */
  readonly source: string;
  /** The TypeScript module that embeds the compiled bytes (base64). */
  readonly embedded: string;
  /** The exported constant's name there. */
  readonly constant: string;
}

export const WASM_KERNELS: readonly WasmKernel[] = [
  { source: "trainer/adamw.wat", embedded: "trainer/adamw-wasm.ts", constant: "ADAMW_WASM_BASE64" },
];

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** A kernel's module bytes, compiled from its source (SIMD enabled, no debug names). */
export async function compileKernel(kernel: WasmKernel): Promise<Uint8Array> {
  const wabt = await wabtInit();
  const text = await readFile(ROOT + kernel.source, "utf8");
  const module = wabt.parseWat(kernel.source, text, { simd: true });
  try {
    module.validate();
    return module.toBinary({ canonicalize_lebs: true }).buffer;
  } finally {
    module.destroy();
  }
}

/** The embedded module's TypeScript text for `bytes`. */
export function embeddedSource(kernel: WasmKernel, bytes: Uint8Array): string {
  const base64 = Buffer.from(bytes).toString("base64");
  const lines = base64.match(/.{1,96}/g) ?? [];
  return [
    `// Generated from ${kernel.source} by \`npm run wasm\` (tools/wasm-kernels.ts); do not edit.`,
    `export const ${kernel.constant} =`,
    ...lines.map((l, i) => `  "${l}"${i === lines.length - 1 ? ";" : " +"}`),
    "",
  ].join("\n");
}

async function main(): Promise<void> {
  for (const kernel of WASM_KERNELS) {
    const bytes = await compileKernel(kernel);
    await writeFile(ROOT + kernel.embedded, embeddedSource(kernel, bytes));
    console.log(`${kernel.source} -> ${kernel.embedded} (${bytes.length} bytes)`);
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
