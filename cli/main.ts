#!/usr/bin/env node
import { CliError } from "./cli-error.js";
import { exitQuietlyOnClosedPipe } from "./command-output.js";
import { buildProgram } from "./program.js";

exitQuietlyOnClosedPipe();
try {
  await buildProgram().parseAsync(process.argv);
} catch (err) {
  if (!(err instanceof CliError)) throw err;
  process.stderr.write(`stepwise: ${err.message}\n`);
  process.exitCode = err.exitCode;
}
