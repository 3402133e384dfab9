# The Stepwise trainer image: `stepwise train` with TensorFlow.js on the GPU through
# @tensorflow/tfjs-node-gpu. Build from the repository root:
#
#   docker build -f deploy/trainer.Dockerfile -t stepwise/trainer:0.1.0 .
#
# Why a second base image: @tensorflow/tfjs-node-gpu 4.x runs libtensorflow 2.9.1, which is built
# for CUDA 11.2 and cuDNN 8.1 and does not load on the API image's CUDA 12 / cuDNN 9. So this image
# sits on CUDA 11.2 + cuDNN 8, and onnxruntime-node keeps its bundled CPU build here (its CUDA
# provider needs CUDA 12): sampling runs on the CPU, gradients on the GPU.
# The other way round also works: `stepwise train` on the API image (ONNX sampling on the GPU)
# falls back to TensorFlow.js's WebAssembly or CPU backend for the gradients (much slower).
#
# NVIDIA marks CUDA 11.2 images as end of life and may delete the tag: pin the digest and mirror the
# base into your own registry (deploy/README.md, "Pinning base images").

ARG NODE_IMAGE=node:20.20.2-bookworm-slim
ARG CUDA_IMAGE=nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04
# Must equal @tensorflow/tfjs-core in package.json: the backend registers itself with the tfjs-core
# it imports, and a second, different copy would never see it (test/deploy checks the two agree).
ARG TFJS_NODE_GPU_VERSION=4.22.0

FROM ${NODE_IMAGE} AS node

FROM ${CUDA_IMAGE} AS build
ARG TFJS_NODE_GPU_VERSION
# node-gyp's toolchain: tfjs-node-gpu builds its addon from source when no prebuilt binary fits.
RUN apt-get update \
  && apt-get install -y --no-install-recommends python3 make g++ \
  && rm -rf /var/lib/apt/lists/*
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm
WORKDIR /src
# As in api.Dockerfile: dependencies first, the root `prepare` (tsc) once the sources are in.
COPY package.json package-lock.json .npmrc ./
RUN npm ci --ignore-scripts --no-audit --no-fund
# No CUDA flag: .npmrc keeps onnxruntime-node on its bundled CPU build (see above).
RUN npm rebuild
COPY . .
RUN npm run build && npm prune --omit=dev --no-audit --no-fund
# Not a dependency of the project (it downloads libtensorflow at install time): added to the pruned
# tree only, leaving package.json and the lockfile as they are. Its install script fetches
# libtensorflow-gpu 2.9.1 and the prebuilt addon from Google's storage.
RUN npm install --no-save --omit=dev --no-audit --no-fund \
  "@tensorflow/tfjs-node-gpu@${TFJS_NODE_GPU_VERSION}"

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
# Only tfjs-node-gpu: if libtensorflow cannot start, fail loudly instead of training on WebAssembly
# at a fraction of the speed (diffusion/tfjs/backend.ts reads this).
ENV STEPWISE_TFJS_BACKEND=node-gpu
USER 10001:10001
ENTRYPOINT ["node", "dist/cli/main.js"]
CMD ["train", "--config", "/config/train.json"]
