# The Stepwise API image: `stepwise serve` with onnxruntime-node's CUDA execution provider
# (CUDA 12 + cuDNN 9). Build from the repository root:
#
#   docker build -f deploy/api.Dockerfile -t stepwise/api:0.1.0 .
#
# The bases are pinned by tag; for byte-for-byte rebuilds pin them by digest as well, e.g.
#   --build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04@sha256:<digest>
# (deploy/README.md, "Pinning base images", says how to read the digest).
#
# The image holds no credentials: API keys and S3 credentials come from the environment at run time
# (a Kubernetes Secret, or deploy/.env for compose). It listens on 127.0.0.1 unless told otherwise:
# set STEPWISE_HOST=0.0.0.0 only together with API keys (STEPWISE_API_KEYS from a Secret), since
# `stepwise serve` refuses a non-loopback address without them, or with --insecure-no-auth on
# purpose (the compose demo does, publishing the port on the host's 127.0.0.1 only).

ARG NODE_IMAGE=node:20.20.2-bookworm-slim
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

# Node.js is the official release binary taken from the official image at a pinned version: no
# distribution package, no download script.
FROM ${NODE_IMAGE} AS node

# Build on the same base as the runtime, so the native packages (onnxruntime-node, sharp) are
# installed for the C library they will run on.
FROM ${CUDA_IMAGE} AS build
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm
WORKDIR /src
# Dependencies first, so this layer and the CUDA provider download below are rebuilt only when the
# lockfile changes. --ignore-scripts because `npm ci` would also run the root `prepare` script
# (tsc), which needs the sources that are copied later.
COPY package.json package-lock.json .npmrc ./
RUN npm ci --ignore-scripts --no-audit --no-fund
# Now the dependencies' install scripts. onnxruntime-node's downloads its CUDA 12 provider
# libraries (from NuGet), which .npmrc skips by default: the flag asks for them.
RUN npm rebuild --onnxruntime-node-install=cuda12
COPY . .
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

FROM ${CUDA_IMAGE} AS runtime
COPY --from=node /usr/local/bin/node /usr/local/bin/node
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 stepwise \
  && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/stepwise \
    --shell /usr/sbin/nologin stepwise \
  && mkdir -p /var/lib/stepwise \
  && chown 10001:10001 /var/lib/stepwise
WORKDIR /app
# Owned by root and only readable by the service user: the server cannot rewrite its own code.
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
# The model Stepwise trained (the first embedded default), found beside package.json.
COPY --from=build /src/world/model/shapes ./world/model/shapes
# dataDir, writable by the service user: with no models configured, the default engines (shapes and
# the tiny random-weight ones) are built here on first start. (The environment overrides the config
# file's `dataDir`.)
ENV STEPWISE_DATA_DIR=/var/lib/stepwise
USER 10001:10001
EXPOSE 8080
# /healthz answers once the models are loaded: the start period covers loading (and, with no models
# configured, building the tiny default engines). Kubernetes ignores this and uses its own probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.STEPWISE_PORT || 8080) + '/healthz', { signal: AbortSignal.timeout(4000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "dist/cli/main.js"]
CMD ["serve"]
