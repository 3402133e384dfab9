/** The CLIP tokenizer of SD1.5 / SDXL text encoders. */
export { type BatchEncoding, ClipTokenizer, type EncodeOptions, type Encoding } from "./clip-tokenizer.js";
export { TokenizerLoadError } from "./errors.js";
export {
  type AddedToken,
  CLIP_CONTEXT_LENGTH,
  type ClipTokenizerFolder,
  readClipTokenizerFolder,
} from "./folder.js";
