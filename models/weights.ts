// Model parameters on the GPU: uploaded tensor by tensor from any TensorReader (a safetensors file, a
// sharded set, a key-mapped single-file checkpoint, an HTTP folder), never holding more than one tensor
// on the host. `Params` scopes names by prefix so model code reads like the module tree it mirrors.
import { Tensor } from '../engine/tensor.js';
import { rt } from '../engine/runtime.js';
import type { TensorReader } from '../weights-tools/safetensors.js';
import { WeightsError } from '../weights-tools/errors.js';

export interface UploadOptions {
  /** keep weights in f16 on the GPU when the device has shader-f16 (matmul/conv weights only) */
  f16?: boolean;
  /** only these names (default: all floating-point tensors) */
  filter?: (name: string) => boolean;
  onProgress?: (done: number, total: number, name: string) => void;
}

export class Params {
  constructor(
    readonly map: Map<string, Tensor>,
    readonly prefix = '',
    readonly source = 'weights',
  ) {}

  /** The tensor at `prefix + name`; throws a WeightsError naming it when missing. */
  get(name: string): Tensor {
    const full = this.prefix + name;
    const t = this.map.get(full);
    if (!t) throw new WeightsError('MISSING_TENSOR', `${this.source}: tensor "${full}" is missing`, { file: this.source, tensor: full });
    return t;
  }
  has(name: string): boolean {
    return this.map.has(this.prefix + name);
  }
  /** Parameters under `prefix.name.` */
  sub(name: string | number): Params {
    return new Params(this.map, `${this.prefix}${name}.`, this.source);
  }
  /** Every tensor (for requiresGrad toggles and disposal). */
  all(): Tensor[] {
    return [...this.map.entries()].filter(([k]) => k.startsWith(this.prefix)).map(([, v]) => v);
  }
  dispose() {
    for (const t of this.map.values()) t.dispose();
    this.map.clear();
  }
}

export async function uploadWeights(reader: TensorReader, opts: UploadOptions = {}): Promise<Params> {
  const map = new Map<string, Tensor>();
  const useF16 = !!opts.f16 && rt().features.has('shader-f16');
  const names = [...reader.tensors.keys()].filter((n) => {
    const dt = reader.tensors.get(n)!.dtype;
    return (dt === 'F32' || dt === 'F16' || dt === 'BF16' || dt === 'F64') && (!opts.filter || opts.filter(n));
  });
  let done = 0;
  for (const name of names) {
    const info = reader.tensors.get(name)!;
    // f16 on the GPU only for matrices/conv kernels (norms, biases and embeddings stay f32)
    const half = useF16 && info.shape.length >= 2 && !/embedding|norm/.test(name);
    const t = half
      ? Tensor.from(await reader.readAsF16Bits(name), info.shape, 'f16')
      : Tensor.from(await reader.readF32(name), info.shape, 'f32');
    t.label = name;
    map.set(name, t.keep());
    opts.onProgress?.(++done, names.length, name);
  }
  return new Params(map, '', reader.name);
}
