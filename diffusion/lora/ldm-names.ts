/**
 * UNet module names in the original LDM / SGM layout (`input_blocks`, `middle_block`,
 * `output_blocks`: what kohya's SDXL LoRAs and original checkpoints use) <-> diffusers names.
 *
 * The block mapping is derived from the UNet config by walking the blocks in the order the LDM
 * UNet builds them (as diffusers' convert_from_ckpt and `_maybe_map_sgm_blocks_to_diffusers`, and
 * kohya's sdxl_original_unet, lay them out):
 *   - `input_blocks.0.0` is conv_in; then for each down block i and layer j one input block k
 *     (k = 1, 2, ...) holding `.0` = resnets.j and `.1` = attentions.j, and after the layers of
 *     every block but the last one more input block whose `.0.op` is downsamplers.0.conv. With
 *     layers_per_block L this is block (k-1) // (L+1), layer (k-1) % (L+1).
 *   - `middle_block.0 / .1 / .2` = mid_block resnets.0 / attentions.0 / resnets.1.
 *   - for each up block i and layer j one output block k (k = 0, 1, ...): `.0` = resnets.j,
 *     `.1` = attentions.j, and on the last layer of every block but the last the upsampler at
 *     `.2` (`.1` when the block has no attentions).
 * Inside a block only resnets are renamed (LDM ResBlock: in_layers / emb_layers / out_layers /
 * skip_connection); transformers keep their names (norm, proj_in, transformer_blocks..., proj_out).
 */
import type { UNetConfig } from "../models/unet2d-condition.js";

/** diffusers ResnetBlock2D leaf -> LDM ResBlock leaf (Sequential indices as in openaimodel.py). */
const RESNET_LEAVES: Readonly<Record<string, string>> = {
  norm1: "in_layers.0",
  conv1: "in_layers.2",
  time_emb_proj: "emb_layers.1",
  norm2: "out_layers.0",
  conv2: "out_layers.3",
  conv_shortcut: "skip_connection",
};

/** Modules outside the blocks (time_embed / label_emb are Sequentials with SiLU at index 1). */
const TOP_LEVEL: Readonly<Record<string, string>> = {
  conv_in: "input_blocks.0.0",
  "time_embedding.linear_1": "time_embed.0",
  "time_embedding.linear_2": "time_embed.2",
  "add_embedding.linear_1": "label_emb.0.0",
  "add_embedding.linear_2": "label_emb.0.2",
  conv_norm_out: "out.0",
  conv_out: "out.2",
};

const TOP_LEVEL_FROM_LDM = invert(TOP_LEVEL);
const RESNET_LEAVES_FROM_LDM = invert(RESNET_LEAVES);

function invert(table: Readonly<Record<string, string>>): Readonly<Record<string, string>> {
  return Object.fromEntries(Object.entries(table).map(([k, v]) => [v, k]));
}

interface BlockPair {
  readonly diffusers: string;
  readonly ldm: string;
  readonly resnet: boolean;
}

/** Both directions of the UNet module naming for one config. */
export class UNetLdmNaming {
  private readonly pairs: readonly BlockPair[];

  constructor(config: UNetConfig) {
    this.pairs = blockPairs(config);
  }

  /** diffusers module path (inside the UNet) -> LDM path, or undefined when it has no LDM name. */
  toLdm(path: string): string | undefined {
    return this.translate(path, "diffusers", "ldm");
  }

  /** LDM module path -> diffusers path, or undefined when it names nothing of this config. */
  toDiffusers(path: string): string | undefined {
    return this.translate(path, "ldm", "diffusers");
  }

  private translate(path: string, from: "diffusers" | "ldm", to: "diffusers" | "ldm"): string | undefined {
    const fromTop = from === "diffusers" ? TOP_LEVEL : TOP_LEVEL_FROM_LDM;
    if (fromTop[path] !== undefined) return fromTop[path];
    // Longest matching block prefix (`input_blocks.1.0` must not match `input_blocks.10.0`).
    let best: BlockPair | undefined;
    for (const pair of this.pairs) {
      const prefix = pair[from];
      if ((path === prefix || path.startsWith(`${prefix}.`)) && prefix.length > (best?.[from].length ?? -1)) {
        best = pair;
      }
    }
    if (!best) return undefined;
    const rest = path.slice(best[from].length + 1);
    if (!best.resnet || rest === "") return rest === "" ? best[to] : `${best[to]}.${rest}`;
    const leaves = from === "diffusers" ? RESNET_LEAVES : RESNET_LEAVES_FROM_LDM;
    const leaf = Object.keys(leaves).find((l) => rest === l || rest.startsWith(`${l}.`));
    if (leaf === undefined) return undefined;
    return `${best[to]}.${leaves[leaf]}${rest.slice(leaf.length)}`;
  }
}

function blockPairs(c: UNetConfig): BlockPair[] {
  const pairs: BlockPair[] = [];
  const add = (diffusers: string, ldm: string, resnet = false) => pairs.push({ diffusers, ldm, resnet });
  const blocks = c.downBlockTypes.length;

  let input = 1; // input_blocks.0 is conv_in
  for (let i = 0; i < blocks; i++) {
    const attention = c.downBlockTypes[i] === "CrossAttnDownBlock2D";
    for (let j = 0; j < c.layersPerBlock[i]; j++, input++) {
      add(`down_blocks.${i}.resnets.${j}`, `input_blocks.${input}.0`, true);
      if (attention) add(`down_blocks.${i}.attentions.${j}`, `input_blocks.${input}.1`);
    }
    if (i < blocks - 1) add(`down_blocks.${i}.downsamplers.0.conv`, `input_blocks.${input++}.0.op`);
  }

  add("mid_block.resnets.0", "middle_block.0", true);
  add("mid_block.attentions.0", "middle_block.1");
  add("mid_block.resnets.1", "middle_block.2", true);

  let output = 0;
  for (let i = 0; i < blocks; i++) {
    const attention = c.upBlockTypes[i] === "CrossAttnUpBlock2D";
    const layers = c.layersPerBlock[blocks - 1 - i] + 1;
    for (let j = 0; j < layers; j++, output++) {
      add(`up_blocks.${i}.resnets.${j}`, `output_blocks.${output}.0`, true);
      if (attention) add(`up_blocks.${i}.attentions.${j}`, `output_blocks.${output}.1`);
      if (j === layers - 1 && i < blocks - 1) {
        add(`up_blocks.${i}.upsamplers.0`, `output_blocks.${output}.${attention ? 2 : 1}`);
      }
    }
  }
  return pairs;
}
