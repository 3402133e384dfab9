#!/usr/bin/env node
import { CliError } from "./cli-error.js";
import { exitQuietlyOnClosedPipe } from "./command-output.js";
import { relaunchWithMallocTunables } from "./malloc-tunables.js";
import { buildProgram } from "./program.js";

/** Commands that run onnxruntime on large tensors: they run with Stepwise's malloc tunables. */
const COMPUTE_COMMANDS = new Set(["serve", "generate", "score", "train", "train-spm", "world", "component"]);

exitQuietlyOnClosedPipe();
if (!(COMPUTE_COMMANDS.has(process.argv[2] ?? "") && (await relaunchWithMallocTunables()))) {
  try {
    await buildProgram().parseAsync(process.argv);
  } catch (err) {
    if (!(err instanceof CliError)) throw err;
    process.stderr.write(`stepwise: ${err.message}\n`);
    process.exitCode = err.exitCode;
  }
}
