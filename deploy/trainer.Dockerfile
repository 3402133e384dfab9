# The Stepwise trainer image: `stepwise train` with everything on onnxruntime's CUDA execution
# provider: SPO's sampling, the SPM, the reference and, by default, the gradients (grad_backend
# onnx: training graphs recorded from the same model definitions, diffusion/autodiff/). Build from
# the repository root:
#
#   docker build -f deploy/trainer.Dockerfile -t stepwise/trainer:0.1.0 .
#
# Why the API image's base (CUDA 12 + cuDNN 9): the gradients no longer need TensorFlow.js, so the
# trainer runs the kernels the servers run, on one CUDA stack. Before, @tensorflow/tfjs-node-gpu
# (libtensorflow 2.9.1, built for CUDA 11.2 and cuDNN 8.1) forced a CUDA 11.2 base on which
# onnxruntime's CUDA provider cannot load, so sampling, most of SPO's compute, ran on the CPU.
#
# TensorFlow.js stays an optional extra (`--grad-backend tfjs`): build with
#   --build-arg WITH_TFJS_NODE_GPU=true
# to add @tensorflow/tfjs-node-gpu at the project's tfjs-core version. On this CUDA 12 base
# libtensorflow finds no CUDA 11.2 libraries and runs its CPU kernels (still far faster than
# WebAssembly, and it has the convolution filter gradient). For TF.js gradients on the GPU, build on
# CUDA 11.2 as well, `--build-arg CUDA_IMAGE=nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04`, and
# sample with `--provider cpu` (onnxruntime's CUDA 12 provider cannot load there).
# Without the extra, TF.js falls back to its WebAssembly backend when asked for.

ARG NODE_IMAGE=node:20.20.2-bookworm-slim
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
# Must equal @tensorflow/tfjs-core in package.json: the backend registers itself with the tfjs-core
# it imports, and a second, different copy would never see it (test/deploy checks the two agree).
ARG TFJS_NODE_GPU_VERSION=4.22.0
ARG WITH_TFJS_NODE_GPU=false

FROM ${NODE_IMAGE} AS node

FROM ${CUDA_IMAGE} AS build
ARG TFJS_NODE_GPU_VERSION
ARG WITH_TFJS_NODE_GPU
# node-gyp's toolchain, for the optional tfjs-node-gpu addon when no prebuilt binary fits.
RUN if [ "${WITH_TFJS_NODE_GPU}" = "true" ]; then \
    apt-get update \
    && apt-get install -y --no-install-recommends python3 make g++ \
    && rm -rf /var/lib/apt/lists/*; \
  fi
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm
WORKDIR /src
# As in api.Dockerfile: dependencies first, the root `prepare` (tsc) once the sources are in.
COPY package.json package-lock.json .npmrc ./
RUN npm ci --ignore-scripts --no-audit --no-fund
# onnxruntime-node's CUDA 12 provider libraries (from NuGet), as in the API image.
RUN npm rebuild --onnxruntime-node-install=cuda12
COPY . .
RUN npm run build && npm prune --omit=dev --no-audit --no-fund
# Not a dependency of the project (it downloads libtensorflow at install time): added to the pruned
# tree only when asked for, leaving package.json and the lockfile as they are. Its install script
# fetches libtensorflow-gpu 2.9.1 and the prebuilt addon from Google's storage.
RUN if [ "${WITH_TFJS_NODE_GPU}" = "true" ]; then \
    npm install --no-save --omit=dev --no-audit --no-fund \
      "@tensorflow/tfjs-node-gpu@${TFJS_NODE_GPU_VERSION}"; \
  fi

FROM ${CUDA_IMAGE} AS runtime
COPY --from=node /usr/local/bin/node /usr/local/bin/node
RUN groupadd --system --gid 10001 stepwise \
  && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/stepwise \
    --shell /usr/sbin/nologin stepwise \
  && mkdir -p /var/lib/stepwise \
  && chown 10001:10001 /var/lib/stepwise
WORKDIR /app
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
USER 10001:10001
ENTRYPOINT ["node", "dist/cli/main.js"]
# `--provider cuda`: fail loudly if the CUDA provider cannot load, instead of training on the CPU.
CMD ["train", "--config", "/config/train.json", "--provider", "cuda"]
