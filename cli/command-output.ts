/**
 * Where a command writes. Commands take one of these so that tests can run them in-process and
 * read what they printed; `isTTY` decides whether progress bars are drawn.
 */

export interface TextSink {
  write(text: string): unknown;
  readonly isTTY?: boolean;
}

export interface CommandOutput {
  readonly stdout: TextSink;
  readonly stderr: TextSink;
}

export const processOutput: CommandOutput = { stdout: process.stdout, stderr: process.stderr };

/**
 * A reader that stops early (`stepwise lora show --json | head`) closes the pipe, and the next
 * write fails with EPIPE as an 'error' event that nothing handles: node would crash with a stack
 * trace. The reader has what it wanted, so stop quietly with success, as `cat | head` does.
 * Installed once, for every command, by main.ts.
 */
export function exitQuietlyOnClosedPipe(
  streams: readonly NodeJS.WriteStream[] = [process.stdout, process.stderr],
): void {
  for (const stream of streams) {
    stream.on("error", (error: NodeJS.ErrnoException) => {
      if (error.code !== "EPIPE") throw error;
      process.exit(0);
    });
  }
}
