// Layer norm over the last axis with affine gamma/beta: statistics in f32, two-pass (mean, then variance of
// the centred values), one workgroup per row (one invocation per row for short rows). The forward saves mean and rstd per row for the backward.
// x may be f16 (with `shader-f16`): y is then f16, and so are dY and dX; gamma and beta are f32 (as are their
// gradients and the saved statistics), and all arithmetic is f32.
import { rt, Uniforms } from '../engine/runtime.js';
import { ShapeError, Tensor, record, wantsGrad } from '../engine/tensor.js';
import { grid, WG_INDEX, flatMain, memoKernel, floatDtype, storageType, enableF16, widen, narrow, type FloatDType } from './util.js';
import { ROW_REDUCE } from './rowwise.js';

// x and y in dtype xt
const forward = memoKernel(
  (xt: FloatDType) => /* wgsl */ `${enableF16(xt)}
${WG_INDEX}
${ROW_REDUCE}
struct P { rows: u32, L: u32, eps: f32, _0: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<${storageType(xt)}>;
@group(0) @binding(2) var<storage, read> W: array<f32>;
@group(0) @binding(3) var<storage, read> Bv: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<${storageType(xt)}>;
@group(0) @binding(5) var<storage, read_write> S: array<f32>; // [rows, 2]: mean, rstd
${flatMain('row', 'u.rows', 'workgroup')}
  let base = row * u.L;
  let n = f32(u.L);
  var s = 0.0;
  for (var i = li; i < u.L; i += 64u) { s += ${widen(xt, 'X[base + i]')}; }
  let mean = row_sum(s, li) / n;
  var v = 0.0;
  for (var i = li; i < u.L; i += 64u) { let d = ${widen(xt, 'X[base + i]')} - mean; v += d * d; }
  let rstd = inverseSqrt(row_sum(v, li) / n + u.eps);
  for (var i = li; i < u.L; i += 64u) { Y[base + i] = ${narrow(xt, `(${widen(xt, 'X[base + i]')} - mean) * rstd * W[i] + Bv[i]`)}; }
  if (li == 0u) { S[2u * row] = mean; S[2u * row + 1u] = rstd; }
}`,
);

// x and dX in dtype xt, dY in gt
const backwardX = memoKernel(
  (xt: FloatDType, gt: FloatDType) => /* wgsl */ `${enableF16(xt, gt)}
${WG_INDEX}
${ROW_REDUCE}
struct P { rows: u32, L: u32, eps: f32, _0: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<${storageType(xt)}>;
@group(0) @binding(2) var<storage, read> W: array<f32>;
@group(0) @binding(3) var<storage, read> S: array<f32>;
@group(0) @binding(4) var<storage, read> G: array<${storageType(gt)}>;
@group(0) @binding(5) var<storage, read_write> DX: array<${storageType(xt)}>;
${flatMain('row', 'u.rows', 'workgroup')}
  let base = row * u.L;
  let mean = S[2u * row];
  let rstd = S[2u * row + 1u];
  var a = 0.0;
  var b = 0.0;
  for (var i = li; i < u.L; i += 64u) {
    let gw = ${widen(gt, 'G[base + i]')} * W[i];
    a += gw;
    b += gw * (${widen(xt, 'X[base + i]')} - mean) * rstd;
  }
  let n = f32(u.L);
  let ma = row_sum(a, li) / n;
  let mb = row_sum(b, li) / n;
  for (var i = li; i < u.L; i += 64u) {
    let xh = (${widen(xt, 'X[base + i]')} - mean) * rstd;
    DX[base + i] = ${narrow(xt, `rstd * (${widen(gt, 'G[base + i]')} * W[i] - ma - xh * mb)`)};
  }
}`,
);

// Short rows (L <= ROW_PER_INVOCATION_MAX): one invocation per row, no workgroup memory and no barriers.
// A 64-wide workgroup per row of 64 values spends most of its time in the tree reduction's barriers (on
// CPU adapters each barrier switches every invocation of the workgroup); CLIP-sized rows are this case.
const ROW_PER_INVOCATION_MAX = 256;
const forwardRows = memoKernel(
  (xt: FloatDType) => /* wgsl */ `${enableF16(xt)}
${WG_INDEX}
struct P { rows: u32, L: u32, eps: f32, _0: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<${storageType(xt)}>;
@group(0) @binding(2) var<storage, read> W: array<f32>;
@group(0) @binding(3) var<storage, read> Bv: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<${storageType(xt)}>;
@group(0) @binding(5) var<storage, read_write> S: array<f32>;
${flatMain('row', 'u.rows')}
  let base = row * u.L;
  let n = f32(u.L);
  var s = 0.0;
  for (var i = 0u; i < u.L; i++) { s += ${widen(xt, 'X[base + i]')}; }
  let mean = s / n;
  var v = 0.0;
  for (var i = 0u; i < u.L; i++) { let d = ${widen(xt, 'X[base + i]')} - mean; v += d * d; }
  let rstd = inverseSqrt(v / n + u.eps);
  for (var i = 0u; i < u.L; i++) { Y[base + i] = ${narrow(xt, `(${widen(xt, 'X[base + i]')} - mean) * rstd * W[i] + Bv[i]`)}; }
  S[2u * row] = mean;
  S[2u * row + 1u] = rstd;
}`,
);

const backwardXRows = memoKernel(
  (xt: FloatDType, gt: FloatDType) => /* wgsl */ `${enableF16(xt, gt)}
${WG_INDEX}
struct P { rows: u32, L: u32, eps: f32, _0: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<${storageType(xt)}>;
@group(0) @binding(2) var<storage, read> W: array<f32>;
@group(0) @binding(3) var<storage, read> S: array<f32>;
@group(0) @binding(4) var<storage, read> G: array<${storageType(gt)}>;
@group(0) @binding(5) var<storage, read_write> DX: array<${storageType(xt)}>;
${flatMain('row', 'u.rows')}
  let base = row * u.L;
  let mean = S[2u * row];
  let rstd = S[2u * row + 1u];
  var a = 0.0;
  var b = 0.0;
  for (var i = 0u; i < u.L; i++) {
    let gw = ${widen(gt, 'G[base + i]')} * W[i];
    a += gw;
    b += gw * (${widen(xt, 'X[base + i]')} - mean) * rstd;
  }
  let n = f32(u.L);
  let ma = a / n;
  let mb = b / n;
  for (var i = 0u; i < u.L; i++) {
    let xh = (${widen(xt, 'X[base + i]')} - mean) * rstd;
    DX[base + i] = ${narrow(xt, `rstd * (${widen(gt, 'G[base + i]')} * W[i] - ma - xh * mb)`)};
  }
}`,
);

// gamma/beta gradients (f32): one invocation per column, summing over rows
const backwardW = memoKernel(
  (xt: FloatDType, gt: FloatDType) => /* wgsl */ `${enableF16(xt, gt)}
struct P { rows: u32, L: u32, eps: f32, _0: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<${storageType(xt)}>;
@group(0) @binding(2) var<storage, read> S: array<f32>;
@group(0) @binding(3) var<storage, read> G: array<${storageType(gt)}>;
@group(0) @binding(4) var<storage, read_write> DW: array<f32>; // [2, L]: dgamma, dbeta
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let c = gid.x;
  if (c >= u.L) { return; }
  var dw = 0.0;
  var db = 0.0;
  for (var r = 0u; r < u.rows; r++) {
    let g = ${widen(gt, 'G[r * u.L + c]')};
    dw += g * (${widen(xt, 'X[r * u.L + c]')} - S[2u * r]) * S[2u * r + 1u];
    db += g;
  }
  DW[c] = dw;
  DW[u.L + c] = db;
}`,
);

/** Layer norm of x (f32 or f16; y in x's dtype) over its last axis, with f32 weight (gamma) and bias (beta). */
export function layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps = 1e-5): Tensor {
  const L = x.shape[x.rank - 1];
  const xt = floatDtype('layerNorm', 'input', x);
  if (weight.size !== L || bias.size !== L)
    throw new ShapeError(`layerNorm: input [${x.shape}] needs weight and bias of size ${L}, got [${weight.shape}] and [${bias.shape}]`);
  if (weight.dtype !== 'f32' || bias.dtype !== 'f32')
    throw new ShapeError(`layerNorm: weight and bias must be f32, got ${weight.dtype} and ${bias.dtype}`);
  if (x.byteLength > rt().maxBindingBytes) throw new ShapeError(`layerNorm: input of ${x.byteLength} bytes exceeds the storage binding limit`);
  const rows = x.size / L;
  const y = Tensor.empty(x.shape, xt, 'layer_norm');
  const stats = Tensor.empty([rows, 2], 'f32', 'layer_norm_stats');
  const uni = () => new Uniforms().u32(rows, L).f32(eps).u32(0).done();
  const short = L <= ROW_PER_INVOCATION_MAX;
  const wg = () => (short ? grid(Math.ceil(rows / 64)) : grid(rows));
  rt().dispatch({
    name: 'layer_norm',
    code: short ? forwardRows(xt) : forward(xt),
    uniforms: uni(),
    bindings: [x, weight, bias, y, stats].map((t) => ({ buffer: t.buffer })),
    workgroups: wg(),
  });
  return record(
    y,
    'layer_norm',
    [x, weight, bias],
    (g) => {
      const gt = floatDtype('layerNorm backward', 'dY', g);
      let dx: Tensor | null = null;
      if (wantsGrad(x)) {
        dx = Tensor.empty(x.shape, xt, 'layer_norm_backward');
        rt().dispatch({
          name: 'layer_norm_backward',
          code: short ? backwardXRows(xt, gt) : backwardX(xt, gt),
          uniforms: uni(),
          bindings: [x, weight, stats, g, dx].map((t) => ({ buffer: t.buffer })),
          workgroups: wg(),
        });
      }
      if (!wantsGrad(weight) && !wantsGrad(bias)) return [dx, null, null];
      const dw = Tensor.empty([2, L], 'f32', 'layer_norm_backward_w');
      rt().dispatch({
        name: 'layer_norm_backward_w',
        code: backwardW(xt, gt),
        uniforms: uni(),
        bindings: [x, stats, g, dw].map((t) => ({ buffer: t.buffer })),
        workgroups: [Math.ceil(L / 64)],
      });
      const gw = Tensor.empty([L], 'f32');
      const gb = Tensor.empty([L], 'f32');
      rt().copy(dw.buffer, 0, gw.buffer, 0, L * 4);
      rt().copy(dw.buffer, L * 4, gb.buffer, 0, L * 4);
      return [dx, gw, gb];
    },
    [stats],
  );
}
