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
