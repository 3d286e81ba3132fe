// Softmax over the last axis: one workgroup per row, max-subtracted, f32 arithmetic. Backward: dx = y * (g - sum(g * y)).
// x may be f16 (with `shader-f16`): y is then f16, and so are the gradients (dY in y's dtype, dX in x's).
import { rt, Uniforms } from '../engine/runtime.js';
import { ShapeError, Tensor, record } from '../engine/tensor.js';
import { grid, WG_INDEX, flatMain, memoKernel, floatDtype, storageType, enableF16, widen, narrow, type FloatDType } from './util.js';
import { ROW_REDUCE } from './rowwise.js';

const forward = memoKernel(
  (xt: FloatDType, yt: FloatDType) => /* wgsl */ `${enableF16(xt, yt)}
${WG_INDEX}
${ROW_REDUCE}
struct P { rows: u32, L: u32, scale: f32, _0: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<${storageType(xt)}>;
@group(0) @binding(2) var<storage, read_write> Y: array<${storageType(yt)}>;
${flatMain('row', 'u.rows', 'workgroup')}
  let base = row * u.L;
  var m = -3.4e38;
  for (var i = li; i < u.L; i += 64u) { m = max(m, ${widen(xt, 'X[base + i]')} * u.scale); }
  m = row_max(m, li);
  var s = 0.0;
  for (var i = li; i < u.L; i += 64u) { s += exp(${widen(xt, 'X[base + i]')} * u.scale - m); }
  s = row_sum(s, li);
  let inv = 1.0 / s;
  for (var i = li; i < u.L; i += 64u) { Y[base + i] = ${narrow(yt, `exp(${widen(xt, 'X[base + i]')} * u.scale - m) * inv`)}; }
}`,
);

const backward = memoKernel(
  (yt: FloatDType, gt: FloatDType, dxt: FloatDType) => /* wgsl */ `${enableF16(yt, gt, dxt)}
${WG_INDEX}
${ROW_REDUCE}
struct P { rows: u32, L: u32, scale: f32, _0: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> Y: array<${storageType(yt)}>;
@group(0) @binding(2) var<storage, read> G: array<${storageType(gt)}>;
@group(0) @binding(3) var<storage, read_write> DX: array<${storageType(dxt)}>;
${flatMain('row', 'u.rows', 'workgroup')}
  let base = row * u.L;
  var d = 0.0;
  for (var i = li; i < u.L; i += 64u) { d += ${widen(gt, 'G[base + i]')} * ${widen(yt, 'Y[base + i]')}; }
  d = row_sum(d, li);
  for (var i = li; i < u.L; i += 64u) { DX[base + i] = ${narrow(dxt, `u.scale * ${widen(yt, 'Y[base + i]')} * (${widen(gt, 'G[base + i]')} - d)`)}; }
}`,
);

function check(x: Tensor): FloatDType {
  if (x.rank < 1) throw new ShapeError(`softmax: expected a tensor of rank >= 1, got ${x.dtype} [${x.shape}]`);
  const dt = floatDtype('softmax', 'x', x);
  if (x.byteLength > rt().maxBindingBytes) throw new ShapeError(`softmax: input of ${x.byteLength} bytes exceeds the storage binding limit`);
  return dt;
}

/** softmax(x * scale) over the last axis, in x's dtype (f32 or f16). */
export function softmax(x: Tensor, scale = 1): Tensor {
  const dt = check(x);
  const L = x.shape[x.rank - 1];
  const rows = x.size / Math.max(1, L);
  const y = Tensor.empty(x.shape, dt, 'softmax');
  if (x.size)
    rt().dispatch({
      name: 'softmax',
      code: forward(dt, dt),
      uniforms: new Uniforms().u32(rows, L).f32(scale).u32(0).done(),
      bindings: [{ buffer: x.buffer }, { buffer: y.buffer }],
      workgroups: grid(rows),
    });
  return record(y, 'softmax', [x], (g) => [softmaxBackward(y, g, scale)], [y]);
}

/** dX of softmax from its output y and dY (each f32 or f16), in y's dtype. */
export function softmaxBackward(y: Tensor, g: Tensor, scale = 1): Tensor {
  const yt = floatDtype('softmax backward', 'y', y);
  const gt = floatDtype('softmax backward', 'dY', g);
  if (g.size !== y.size) throw new ShapeError(`softmax backward: dY [${g.shape}] does not match y [${y.shape}]`);
  const L = y.shape[y.rank - 1];
  const rows = y.size / Math.max(1, L);
  const dx = Tensor.empty(y.shape, yt, 'softmax_backward');
  if (y.size)
    rt().dispatch({
      name: 'softmax_backward',
      code: backward(yt, gt, yt),
      uniforms: new Uniforms().u32(rows, L).f32(scale).u32(0).done(),
      bindings: [{ buffer: y.buffer }, { buffer: g.buffer }, { buffer: dx.buffer }],
      workgroups: grid(rows),
    });
  return dx;
}
