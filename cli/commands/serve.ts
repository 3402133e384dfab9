/** `stepwise serve`: start the HTTP API (embedded defaults when nothing is configured). */
import { Command, Option } from "commander";
import { ConfigFileError, loadConfig } from "../../api/config.js";
import { startServer } from "../../api/server.js";
import { CliError } from "../cli-error.js";

export function serveCommand(): Command {
  return new Command("serve")
    .description(
      "Start the HTTP API. With no configuration: tiny SD1.5 and SDXL engines built under .stepwise/, on 127.0.0.1:8080",
    )
    .option("-c, --config <file>", "JSON or YAML config file (also STEPWISE_CONFIG)")
    .option("--host <host>", "listen address")
    .option("--port <port>", "listen port", (v) => Number.parseInt(v, 10))
    .option("--registry <url>", "LoRA registry: file:///path, a path, or s3://bucket/prefix")
    .addOption(
      new Option("--provider <provider>", "onnxruntime execution provider").choices(["cpu", "cuda", "auto"]),
    )
    .option("--insecure-no-auth", "allow a non-loopback address without API keys")
    .action(
      async (opts: {
        config?: string;
        host?: string;
        port?: number;
        registry?: string;
        provider?: string;
        insecureNoAuth?: boolean;
      }) => {
        const overrides: Record<string, unknown> = {};
        if (opts.host) overrides.host = opts.host;
        if (opts.port !== undefined) overrides.port = opts.port;
        if (opts.registry) overrides.registry = opts.registry;
        if (opts.provider) overrides.executionProvider = { provider: opts.provider };
        if (opts.insecureNoAuth) overrides.auth = { insecureNoAuth: true };
        let server: Awaited<ReturnType<typeof startServer>>;
        try {
          const config = await loadConfig({ file: opts.config, overrides });
          server = await startServer(config);
        } catch (err) {
          if (err instanceof ConfigFileError || (err as Error).name === "ExecutionProviderError")
            throw new CliError((err as Error).message);
          throw err;
        }
        process.stdout.write(
          [
            `Stepwise is listening on ${server.url}`,
            `  API:        ${server.url}/v1/images/generations`,
            `  Docs:       ${server.url}/docs`,
            `  Playground: ${server.url}/`,
            "",
          ].join("\n"),
        );
        const stop = (signal: string) => {
          server.app.log.info({ signal }, "shutting down: finishing in-flight requests");
          server.close().then(
            () => process.exit(0),
            (err) => {
              server.app.log.error({ err }, "shutdown failed");
              process.exit(1);
            },
          );
        };
        process.once("SIGTERM", () => stop("SIGTERM"));
        process.once("SIGINT", () => stop("SIGINT"));
      },
    );
}
