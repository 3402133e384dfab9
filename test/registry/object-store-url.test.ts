/** Registry URLs: which store `openStore` opens, and which S3 settings it takes from where. */
import { describe, expect, it } from "vitest";
import { FsStore } from "../../registry/fs-store.js";
import { S3Store } from "../../registry/s3-store.js";
import {
  DEFAULT_REGISTRY_URL,
  InvalidStoreUrlError,
  openStore,
  parseStoreUrl,
  registryUrlFromEnv,
} from "../../registry/store-url.js";

/** The settings an S3Store was built with (private fields), to check what openStore passed on. */
function s3Settings(store: unknown): Record<string, unknown> {
  expect(store).toBeInstanceOf(S3Store);
  const s3 = store as {
    client: { config: { forcePathStyle?: boolean } };
    sha256Checksums: boolean;
    maxAttempts: number;
  };
  return {
    forcePathStyle: s3.client.config.forcePathStyle,
    sha256: s3.sha256Checksums,
    maxAttempts: s3.maxAttempts,
  };
}

describe("parseStoreUrl", () => {
  it("reads file: URLs and plain paths, relative ones against the working directory", () => {
    expect(parseStoreUrl("file:///srv/registry")).toEqual({ kind: "fs", root: "/srv/registry" });
    expect(parseStoreUrl("file:///srv/with%20space")).toEqual({ kind: "fs", root: "/srv/with space" });
    expect(parseStoreUrl("/srv/registry")).toEqual({ kind: "fs", root: "/srv/registry" });
    expect(parseStoreUrl("reg/here", "/home/me")).toEqual({ kind: "fs", root: "/home/me/reg/here" });
    expect(parseStoreUrl(DEFAULT_REGISTRY_URL, "/work")).toEqual({
      kind: "fs",
      root: "/work/.stepwise/registry",
    });
  });

  it("reads s3://bucket/prefix, with or without a prefix and trailing slashes", () => {
    expect(parseStoreUrl("s3://my-bucket/loras/prod/")).toEqual({
      kind: "s3",
      bucket: "my-bucket",
      prefix: "loras/prod",
    });
    expect(parseStoreUrl("s3://my-bucket")).toEqual({ kind: "s3", bucket: "my-bucket", prefix: "" });
    expect(parseStoreUrl("S3://my.bucket/")).toEqual({ kind: "s3", bucket: "my.bucket", prefix: "" });
  });

  it("refuses what it cannot open, saying why", () => {
    const cases: [string, RegExp][] = [
      ["", /empty/],
      ["s3://", /bucket name/],
      ["s3://Upper_Case/x", /bucket name/],
      ["s3://bucket/x?versionId=1", /no query/],
      ["http://example.com/registry", /unknown scheme "http:"/],
      ["file://remote-host/share", /host must be "localhost"/],
    ];
    for (const [url, reason] of cases) {
      const error = (() => {
        try {
          parseStoreUrl(url);
        } catch (caught) {
          return caught;
        }
      })();
      expect(error, url).toBeInstanceOf(InvalidStoreUrlError);
      expect(String(error), url).toMatch(reason);
    }
  });
});

describe("openStore", () => {
  it("opens a filesystem store for paths and file: URLs", () => {
    const store = openStore("file:///tmp/stepwise-registry");
    expect(store).toBeInstanceOf(FsStore);
    expect(store.location).toBe("file:///tmp/stepwise-registry");
    expect((openStore("registry", { cwd: "/tmp" }) as FsStore).root).toBe("/tmp/registry");
  });

  it("opens an S3 store with path-style addressing by default when an endpoint is set", () => {
    const env = { STEPWISE_S3_ENDPOINT: "http://127.0.0.1:7480", AWS_REGION: "eu-west-1" };
    const store = openStore("s3://bucket/prefix", { env });
    expect(store.location).toBe("s3://bucket/prefix");
    expect(s3Settings(store)).toEqual({ forcePathStyle: true, sha256: true, maxAttempts: 5 });
    // Without an endpoint it is AWS, which wants virtual-hosted addressing.
    expect(s3Settings(openStore("s3://bucket", { env: {} }))).toMatchObject({ forcePathStyle: false });
  });

  it("takes S3 settings from the environment, and options over the environment", () => {
    const env = {
      STEPWISE_S3_ENDPOINT: "http://127.0.0.1:7480",
      STEPWISE_S3_FORCE_PATH_STYLE: "false",
      STEPWISE_S3_SHA256_CHECKSUMS: "0",
      STEPWISE_S3_MAX_ATTEMPTS: "9",
    };
    expect(s3Settings(openStore("s3://bucket", { env }))).toEqual({
      forcePathStyle: false,
      sha256: false,
      maxAttempts: 9,
    });
    const overridden = openStore("s3://bucket", { env, s3: { forcePathStyle: true, maxAttempts: 2 } });
    expect(s3Settings(overridden)).toEqual({ forcePathStyle: true, sha256: false, maxAttempts: 2 });
  });

  it("names the environment variable that holds a bad value", () => {
    expect(() => openStore("s3://bucket", { env: { STEPWISE_S3_FORCE_PATH_STYLE: "maybe" } })).toThrow(
      /STEPWISE_S3_FORCE_PATH_STYLE=maybe is not true or false/,
    );
    expect(() => openStore("s3://bucket", { env: { STEPWISE_S3_MAX_ATTEMPTS: "0" } })).toThrow(
      /STEPWISE_S3_MAX_ATTEMPTS=0 is not a positive integer/,
    );
  });
});

describe("registryUrlFromEnv", () => {
  it("uses STEPWISE_REGISTRY, else the default folder", () => {
    expect(registryUrlFromEnv({})).toBe(".stepwise/registry");
    expect(registryUrlFromEnv({ STEPWISE_REGISTRY: "s3://b/p" })).toBe("s3://b/p");
  });
});
