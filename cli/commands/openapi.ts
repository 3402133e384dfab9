/** `stepwise openapi --out FILE`: write the OpenAPI document generated from the route schemas. */
import { mkdir, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { Command } from "commander";
import { openApiDocument, openApiText } from "../../api/openapi-document.js";

export function openapiCommand(): Command {
  return new Command("openapi")
    .description("Write the OpenAPI document (openapi/openapi.json) generated from the route schemas")
    .option("--out <file>", "output file (default: stdout)")
    .action(async (opts: { out?: string }) => {
      const text = openApiText(await openApiDocument());
      if (!opts.out) {
        process.stdout.write(text);
        return;
      }
      await mkdir(dirname(opts.out), { recursive: true });
      await writeFile(opts.out, text);
    });
}
