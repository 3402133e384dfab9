/**
 * The AutoencoderKL reference case (diffusers 0.25.1) through the ONNX backend and the reference
 * backend: encode -> moments, posterior mean and clamped log-variance (and the std they imply);
 * decode -> `decoded` from the random latent and `recon` from the posterior mean.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { LOGVAR_MAX, LOGVAR_MIN } from "../../diffusion/models/autoencoder-kl.js";
import { type ResolvedConfig, resolveComponent, runComponent } from "../../diffusion/models/components.js";
import { ReferenceOps } from "../../diffusion/ops/reference.js";
import { float32, type Tensor, toFloat32 } from "../../diffusion/tensor.js";

import {
  FP16_REFERENCE_TOLERANCE,
  ioTensor,
  loadReferenceCase,
  REFERENCE_TOLERANCE,
  type ReferenceCase,
  relativeError,
  runOnnxComponent,
} from "./reference-cases.js";

/** Moments here reach ~3 in magnitude; x100 takes the log-variance well past [-30, 20]. */
const MOMENT_BLOW_UP = 100;

/** diffusers' DiagonalGaussianDistribution: std = exp(0.5 * logvar). */
function posteriorStd(logvar: Tensor): Tensor {
  return float32(
    logvar.shape,
    toFloat32(logvar).data.map((v) => Math.exp(0.5 * v)),
  );
}

describe("vae-tiny (AutoencoderKL)", () => {
  let c: ReferenceCase;
  let encode: ResolvedConfig;
  let decode: ResolvedConfig;

  beforeAll(async () => {
    c = await loadReferenceCase("vae-tiny");
    encode = resolveComponent("vae-encode", c.config);
    decode = resolveComponent("vae-decode", c.config);
  });

  /** Every VAE output of the case, computed by `compute` (encode and two decodes). */
  async function allOutputs(
    compute: (resolved: ResolvedConfig, feeds: Record<string, Tensor>) => Promise<Record<string, Tensor>>,
  ): Promise<Record<string, Tensor>> {
    const encoded = await compute(encode, { image: ioTensor(c, "image") });
    const decoded = await compute(decode, { latent: ioTensor(c, "latent") });
    const recon = await compute(decode, { latent: ioTensor(c, "posterior_mean") });
    return {
      moments: encoded.moments,
      posterior_mean: encoded.posterior_mean,
      posterior_logvar: encoded.posterior_logvar,
      posterior_std: posteriorStd(encoded.posterior_logvar),
      decoded: decoded.decoded,
      recon: recon.decoded,
    };
  }

  function expectAll(outputs: Record<string, Tensor>, tolerance: number): void {
    for (const [key, value] of Object.entries(outputs)) {
      expect(relativeError(value, ioTensor(c, key)), key).toBeLessThanOrEqual(tolerance);
    }
  }

  describe("ONNX backend", () => {
    it("float32: every output within 1e-4 of max |ref|", async () => {
      expectAll(await allOutputs((r, feeds) => runOnnxComponent(r, c.weights, feeds)), REFERENCE_TOLERANCE);
    });

    it("fp16 graph: every output within the fp16 tolerance", async () => {
      const outputs = await allOutputs((r, feeds) =>
        runOnnxComponent(r, c.weights, feeds, { dtype: "float16" }),
      );
      expectAll(outputs, FP16_REFERENCE_TOLERANCE);
    });
  });

  it("reference backend: every output within 1e-4 of max |ref|", async () => {
    const ops = new ReferenceOps(c.weights);
    expectAll(
      await allOutputs(async (r, feeds) => runComponent(ops, r, feeds, { intermediates: true })),
      REFERENCE_TOLERANCE,
    );
  });

  it("the log-variance is clamped to diffusers' range, the mean is not", async () => {
    // Scale quant_conv (the last layer, after every norm) so that the moments run far out of range.
    const weights = new Map(c.weights);
    for (const name of ["quant_conv.weight", "quant_conv.bias"]) {
      const t = toFloat32(c.weights.get(name)!);
      weights.set(
        name,
        float32(
          t.shape,
          t.data.map((v) => v * MOMENT_BLOW_UP),
        ),
      );
    }
    const out = await runOnnxComponent(encode, weights, { image: ioTensor(c, "image") });
    const logvar = toFloat32(out.posterior_logvar).data;
    const moments = toFloat32(out.moments).data;
    const latentChannels = out.posterior_mean.shape[1];
    const plane = logvar.length / latentChannels;
    let clamped = 0;
    for (let i = 0; i < logvar.length; i++) {
      const raw = moments[latentChannels * plane + i];
      expect(logvar[i]).toBe(Math.fround(Math.min(LOGVAR_MAX, Math.max(LOGVAR_MIN, raw))));
      if (raw > LOGVAR_MAX || raw < LOGVAR_MIN) clamped++;
    }
    expect(clamped).toBeGreaterThan(0);
  });
});
