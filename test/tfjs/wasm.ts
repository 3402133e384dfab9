/**
 * The TensorFlow.js backend the tfjs suites run on: WebAssembly, chosen explicitly so that the
 * suites test the backend the trainer uses on CI machines whatever else is installed.
 */
import { selectTfjsBackend, type TfjsBackendSelection } from "../../diffusion/tfjs/backend.js";

export function useWasmBackend(): Promise<TfjsBackendSelection> {
  return selectTfjsBackend({ prefer: "wasm" });
}
