/**
 * The TensorFlow.js backend the tfjs suites run on: WebAssembly, chosen explicitly so that the
 * suites test the backend the trainer uses on CI machines whatever else is installed. Suites that
 * take no gradient skip registering the gradient functions (seconds under vitest's transform).
 */
import { selectTfjsBackend, type TfjsBackendSelection } from "../../diffusion/tfjs/backend.js";

export function useWasmBackend(options: { gradients: boolean }): Promise<TfjsBackendSelection> {
  return selectTfjsBackend({ prefer: "wasm", gradients: options.gradients });
}
