// Layer helpers shared by the models: each takes the `Params` scoped at the PyTorch module's name, so
// `linear(p.sub('to_q'), x)` reads `<prefix>.to_q.weight` / `.bias` exactly as the checkpoint names them.
import { ShapeError, type Tensor } from '../engine/tensor.js';
import { reshape } from '../kernels/shape.js';
import { linear as linearOp } from '../kernels/matmul.js';
import { layerNorm as layerNormOp } from '../kernels/layernorm.js';
import { needF16, floatOf } from '../kernels/util.js';
import type { Params } from './weights.js';

/** nn.Linear: y = x W^T + b (bias optional, as the checkpoint has it); a 1x1 conv weight [O, C, 1, 1] is used as [O, C]. */
export function linear(p: Params, x: Tensor): Tensor {
  let w = p.get('weight');
  if (w.rank === 4) {
    if (w.shape[2] !== 1 || w.shape[3] !== 1) throw new ShapeError(`${p.prefix}weight: expected a 1x1 conv kernel, got [${w.shape}]`);
    w = reshape(w, [w.shape[0], w.shape[1]]);
  }
  return linearOp(x, w, p.has('bias') ? p.get('bias') : undefined);
}

/** nn.LayerNorm over the last dim. */
export function layerNorm(p: Params, x: Tensor, eps = 1e-5): Tensor {
  return layerNormOp(x, p.get('weight'), p.get('bias'), eps);
}

/**
 * A model call's activation dtype (`activations`, default the input's; f16 needs shader-f16, else a ShapeError
 * naming `model`) and the dtype its result is given in (the input's).
 */
export function activationDtypes(model: string, input: Tensor, activations?: 'f32' | 'f16'): { act: 'f32' | 'f16'; out: 'f32' | 'f16' } {
  const out = floatOf(input);
  const act = activations ?? out;
  if (act === 'f16') needF16(model, 'activations');
  return { act, out };
}
