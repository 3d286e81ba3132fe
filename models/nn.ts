// Layer helpers shared by the models: each takes the `Params` scoped at the PyTorch module's name, so
// `linear(p.sub('to_q'), x)` reads `<prefix>.to_q.weight` / `.bias` exactly as the checkpoint names them.
import type { Tensor } from '../engine/tensor.js';
import { linear as linearOp } from '../kernels/matmul.js';
import { layerNorm as layerNormOp } from '../kernels/layernorm.js';
import type { Params } from './weights.js';

/** nn.Linear: y = x W^T + b (bias optional, as the checkpoint has it). */
export function linear(p: Params, x: Tensor): Tensor {
  return linearOp(x, p.get('weight'), p.has('bias') ? p.get('bias') : undefined);
}

/** nn.LayerNorm over the last dim. */
export function layerNorm(p: Params, x: Tensor, eps = 1e-5): Tensor {
  return layerNormOp(x, p.get('weight'), p.get('bias'), eps);
}
