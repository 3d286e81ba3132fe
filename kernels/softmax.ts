// Softmax over the last axis: one workgroup per row, max-subtracted, f32. Backward: dx = y * (g - sum(g * y)).
import { rt, Uniforms } from '../engine/runtime.js';
import { ShapeError, Tensor, record } from '../engine/tensor.js';
import { grid, WG_INDEX, flatMain } from './util.js';
import { ROW_REDUCE } from './rowwise.js';

const FORWARD = /* wgsl */ `
${WG_INDEX}
${ROW_REDUCE}
struct P { rows: u32, L: u32, scale: f32, _0: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
${flatMain('row', 'u.rows', 'workgroup')}
  let base = row * u.L;
  var m = -3.4e38;
  for (var i = li; i < u.L; i += 64u) { m = max(m, X[base + i] * u.scale); }
  m = row_max(m, li);
  var s = 0.0;
  for (var i = li; i < u.L; i += 64u) { s += exp(X[base + i] * u.scale - m); }
  s = row_sum(s, li);
  let inv = 1.0 / s;
  for (var i = li; i < u.L; i += 64u) { Y[base + i] = exp(X[base + i] * u.scale - m) * inv; }
}`;

const BACKWARD = /* wgsl */ `
${WG_INDEX}
${ROW_REDUCE}
struct P { rows: u32, L: u32, scale: f32, _0: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> Y: array<f32>;
@group(0) @binding(2) var<storage, read> G: array<f32>;
@group(0) @binding(3) var<storage, read_write> DX: array<f32>;
${flatMain('row', 'u.rows', 'workgroup')}
  let base = row * u.L;
  var d = 0.0;
  for (var i = li; i < u.L; i += 64u) { d += G[base + i] * Y[base + i]; }
  d = row_sum(d, li);
  for (var i = li; i < u.L; i += 64u) { DX[base + i] = u.scale * Y[base + i] * (G[base + i] - d); }
}`;

function check(x: Tensor) {
  if (x.dtype !== 'f32' || x.rank < 1) throw new ShapeError(`softmax: expected an f32 tensor of rank >= 1, got ${x.dtype} [${x.shape}]`);
  if (x.byteLength > rt().maxBindingBytes) throw new ShapeError(`softmax: input of ${x.byteLength} bytes exceeds the storage binding limit`);
}

/** softmax(x * scale) over the last axis. */
export function softmax(x: Tensor, scale = 1): Tensor {
  check(x);
  const L = x.shape[x.rank - 1];
  const rows = x.size / Math.max(1, L);
  const y = Tensor.empty(x.shape, 'f32', 'softmax');
  if (x.size)
    rt().dispatch({
      name: 'softmax',
      code: FORWARD,
      uniforms: new Uniforms().u32(rows, L).f32(scale).u32(0).done(),
      bindings: [{ buffer: x.buffer }, { buffer: y.buffer }],
      workgroups: grid(rows),
    });
  return record(y, 'softmax', [x], (g) => [softmaxBackward(y, g, scale)], [y]);
}

export function softmaxBackward(y: Tensor, g: Tensor, scale = 1): Tensor {
  const L = y.shape[y.rank - 1];
  const rows = y.size / Math.max(1, L);
  const dx = Tensor.empty(y.shape, 'f32', 'softmax_backward');
  if (y.size)
    rt().dispatch({
      name: 'softmax_backward',
      code: BACKWARD,
      uniforms: new Uniforms().u32(rows, L).f32(scale).u32(0).done(),
      bindings: [{ buffer: y.buffer }, { buffer: g.buffer }, { buffer: dx.buffer }],
      workgroups: grid(rows),
    });
  return dx;
}
