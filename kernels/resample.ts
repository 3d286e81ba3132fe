// Resampling of NCHW images: nearest-neighbour 2x upsampling (the UNet/VAE upsamplers) and bicubic resizing
// with PyTorch's F.interpolate(mode='bicubic', align_corners=False, antialias=False) semantics (the image
// preprocessing in front of CLIP on the SeedSelect loss path).
// Bicubic resizing is separable: one pass along W, one along H, each a small banded matrix stored as a
// CSR table (built once per (in, out) size on the host, taps clamped at the border like PyTorch and merged
// when they hit the same pixel). The backward of a pass is the same kernel with the transposed table: a
// gather per input pixel, no atomics, exact transposition of the forward weights.
// Tensors larger than one storage binding are processed in chunks of rows bound at aligned offsets.
// Images and their gradients are f32 or f16 (shader-f16); the arithmetic and the gradients' sums are f32
// (every load widened, every store narrowed), the bicubic weights f32.
import { rt, Uniforms } from '../engine/runtime.js';
import { ShapeError, Tensor, record } from '../engine/tensor.js';
import { grid, WG_INDEX, flatMain, enableF16, floatDtype, memoKernel, sameFloatDtype, storageType, bindWindow, windowLimit, type FloatDType } from './util.js';

// windows hold at most windowLimit(4) elements: the f32 count, a safe limit for f16 too

function check4(op: string, x: Tensor): FloatDType {
  if (x.rank !== 4) throw new ShapeError(`${op}: expected [N, C, H, W], got [${x.shape}]`);
  return floatDtype(op, 'x', x);
}

// ---------------- nearest 2x ----------------

// One invocation per input pixel; rows are numbered across planes (row r of the chunk maps to output rows
// 2r and 2r + 1), so no plane decomposition is needed.
// The backward sums each 2x2 block in f32 (a gather: no atomics) and stores it in the storage type `dt`.
const NEAREST = memoKernel(
  (backward: boolean, dt: string) => /* wgsl */ `${enableF16(dt)}
${WG_INDEX}
struct P { n: u32, W: u32, inShift: u32, outShift: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<${storageType(dt)}>;
@group(0) @binding(2) var<storage, read_write> Y: array<${storageType(dt)}>;
${flatMain('e', 'u.n')}
  let r = e / u.W;
  let x = e % u.W;
  let W2 = 2u * u.W;
  let big = 2u * r * W2 + 2u * x;
  ${
    backward
      ? `let g = f32(X[u.inShift + big]) + f32(X[u.inShift + big + 1u]) + f32(X[u.inShift + big + W2]) + f32(X[u.inShift + big + W2 + 1u]);
  Y[u.outShift + e] = ${storageType(dt)}(g);`
      : `let v = X[u.inShift + e];
  let o = u.outShift + big;
  Y[o] = v; Y[o + 1u] = v; Y[o + W2] = v; Y[o + W2 + 1u] = v;`
  }
}`,
);

/** small = [rows, W], big = [2 rows, 2 W]: forward writes big from small, backward sums big into small. */
function nearestRaw(src: Tensor, outShape: number[], rows: number, W: number, backward: boolean): Tensor {
  const out = Tensor.empty(outShape, src.dtype, backward ? 'upsample_nearest2x_bwd' : 'upsample_nearest2x');
  if (out.size === 0) return out;
  const r = rt();
  const chunk = Math.floor(windowLimit(4) / (4 * W));
  if (chunk < 1) throw new ShapeError(`upsampleNearest2x: one row of ${W} pixels exceeds the storage binding limit`);
  const code = NEAREST(backward, src.dtype);
  for (let r0 = 0; r0 < rows; r0 += chunk) {
    const rc = Math.min(chunk, rows - r0);
    const small = bindWindow(backward ? out : src, r0 * W, rc * W);
    const big = bindWindow(backward ? src : out, r0 * 4 * W, rc * 4 * W);
    const [inW, outW] = backward ? [big, small] : [small, big];
    r.dispatch({
      name: backward ? 'upsample_nearest2x_bwd' : 'upsample_nearest2x',
      code,
      uniforms: new Uniforms().u32(rc * W, W, inW.shift, outW.shift).done(),
      bindings: [inW.bind, outW.bind],
      workgroups: grid(Math.ceil((rc * W) / 64)),
    });
  }
  return out;
}

/** Nearest-neighbour 2x upsampling: [N, C, H, W] -> [N, C, 2H, 2W]. The gradient sums each 2x2 block. */
export function upsampleNearest2x(x: Tensor): Tensor {
  check4('upsampleNearest2x', x);
  const [N, C, H, W] = x.shape;
  const y = nearestRaw(x, [N, C, 2 * H, 2 * W], N * C * H, W, false);
  return record(y, 'upsample_nearest2x', [x], (g) => {
    sameFloatDtype('upsampleNearest2x backward', [y, g], ['y', 'dy']);
    return [nearestRaw(g, [N, C, H, W], N * C * H, W, true)];
  });
}

// ---------------- bicubic ----------------

const A = -0.75;
const cubic1 = (x: number) => ((A + 2) * x - (A + 3)) * x * x + 1;
const cubic2 = (x: number) => ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;

/** Dense-free description of one bicubic pass: for each output index, its (input index, weight) taps. */
export function bicubicTaps(inLen: number, outLen: number): { idx: number; w: number }[][] {
  const scale = inLen / outLen;
  const rows: { idx: number; w: number }[][] = [];
  for (let i = 0; i < outLen; i++) {
    const real = scale * (i + 0.5) - 0.5;
    const i0 = Math.floor(real);
    const t = real - i0;
    const coeffs = [cubic2(t + 1), cubic1(t), cubic1(1 - t), cubic2(2 - t)];
    const taps = new Map<number, number>();
    for (let k = 0; k < 4; k++) {
      const j = Math.min(Math.max(i0 - 1 + k, 0), inLen - 1);
      taps.set(j, (taps.get(j) ?? 0) + coeffs[k]);
    }
    rows.push([...taps].map(([idx, w]) => ({ idx, w })));
  }
  return rows;
}

interface Table {
  idx: Tensor;
  wt: Tensor;
}
const tables = new Map<string, Table>();

/** CSR table (row starts, then columns; weights) of the pass inLen -> outLen, or of its transpose. */
function table(inLen: number, outLen: number, transposed: boolean): Table {
  const key = `${inLen}:${outLen}:${transposed}`;
  let t = tables.get(key);
  if (t && !t.idx.disposed) return t;
  const fwd = bicubicTaps(inLen, outLen);
  let rows = fwd;
  if (transposed) {
    rows = [...Array(inLen)].map(() => []);
    fwd.forEach((taps, i) => taps.forEach(({ idx, w }) => rows[idx].push({ idx: i, w })));
  }
  const nnz = rows.reduce((s, r) => s + r.length, 0);
  const idx = new Int32Array(rows.length + 1 + nnz);
  const wt = new Float32Array(Math.max(1, nnz));
  let e = 0;
  rows.forEach((taps, i) => {
    idx[i] = e;
    for (const { idx: j, w } of taps) {
      idx[rows.length + 1 + e] = j;
      wt[e++] = w;
    }
  });
  idx[rows.length] = e;
  t = { idx: Tensor.from(idx, [idx.length], 'i32').keep(), wt: Tensor.from(wt, [wt.length]).keep() };
  tables.set(key, t);
  return t;
}

// out[o, i, k] = sum_e WT[e] * X[o, COL[e], k] for e in row i; one invocation per output element. X is
// stored as `xdt`, Y as `ydt`; the sum is f32.
const BANDED = memoKernel(
  (xdt: string, ydt: string) => /* wgsl */ `${enableF16(xdt, ydt)}
${WG_INDEX}
struct P { n: u32, Lin: u32, Lout: u32, inner: u32, inShift: u32, outShift: u32, _0: u32, _1: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<${storageType(xdt)}>;
@group(0) @binding(2) var<storage, read> IDX: array<u32>;
@group(0) @binding(3) var<storage, read> WT: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<${storageType(ydt)}>;
${flatMain('e', 'u.n')}
  let k = e % u.inner;
  let t = e / u.inner;
  let i = t % u.Lout;
  let o = t / u.Lout;
  let base = u.inShift + o * u.Lin * u.inner + k;
  let cols = u.Lout + 1u;
  var acc = 0.0;
  for (var q = IDX[i]; q < IDX[i + 1u]; q++) {
    acc = fma(WT[q], f32(X[base + IDX[cols + q] * u.inner]), acc);
  }
  Y[u.outShift + e] = ${storageType(ydt)}(acc);
}`,
);

/** Apply a CSR table along the middle axis of x viewed as [outer, Lin, inner]; the result is stored as `dt`. */
function bandedRaw(x: Tensor, outShape: number[], outer: number, Lin: number, Lout: number, inner: number, t: Table, name: string, dt: FloatDType): Tensor {
  const out = Tensor.empty(outShape, dt, name);
  if (out.size === 0) return out;
  const r = rt();
  const chunk = Math.floor(windowLimit(4) / (Math.max(Lin, Lout) * inner));
  if (chunk < 1) throw new ShapeError(`${name}: one image plane exceeds the storage binding limit`);
  for (let o0 = 0; o0 < outer; o0 += chunk) {
    const oc = Math.min(chunk, outer - o0);
    const xw = bindWindow(x, o0 * Lin * inner, oc * Lin * inner);
    const yw = bindWindow(out, o0 * Lout * inner, oc * Lout * inner);
    const n = oc * Lout * inner;
    r.dispatch({
      name,
      code: BANDED(x.dtype, dt),
      uniforms: new Uniforms().u32(n, Lin, Lout, inner, xw.shift, yw.shift, 0, 0).done(),
      bindings: [xw.bind, { buffer: t.idx.buffer }, { buffer: t.wt.buffer }, yw.bind],
      workgroups: grid(Math.ceil(n / 64)),
    });
  }
  return out;
}

/**
 * One bicubic pass along axis 2 (H) or 3 (W) of an NCHW tensor, its result stored as `dt` (x's dtype, or
 * f32 for the intermediate between the two passes of an f16 image). The gradient has x's dtype.
 */
function bicubicAxis(x: Tensor, axis: 2 | 3, outLen: number, dt: FloatDType): Tensor {
  const [N, C, H, W] = x.shape;
  const inLen = x.shape[axis];
  const outer = axis === 2 ? N * C : N * C * H;
  const inner = axis === 2 ? W : 1;
  const outShape = axis === 2 ? [N, C, outLen, W] : [N, C, H, outLen];
  const y = bandedRaw(x, outShape, outer, inLen, outLen, inner, table(inLen, outLen, false), 'resize_bicubic', dt);
  const xdt = x.dtype as FloatDType;
  return record(y, 'resize_bicubic', [x], (g) => {
    sameFloatDtype('resizeBicubic backward', [y, g], ['y', 'dy']);
    return [bandedRaw(g, [...x.shape], outer, outLen, inLen, inner, table(inLen, outLen, true), 'resize_bicubic_bwd', xdt)];
  });
}

/**
 * Bicubic resize of [N, C, H, W] to [N, C, outH, outW], as PyTorch's F.interpolate(mode='bicubic',
 * align_corners=False) without antialiasing: source = (dst + 0.5) * in/out - 0.5, cubic convolution with
 * A = -0.75, taps clamped to the border. Separable passes (the cheaper order first); exact gradient.
 * x may be f16 (shader-f16): the result and the gradient are f16, the intermediate between the two passes
 * stays f32 (one rounding, at the end; likewise for its gradient).
 */
export function resizeBicubic(x: Tensor, outH: number, outW: number): Tensor {
  const dt = check4('resizeBicubic', x);
  for (const v of [outH, outW]) if (!Number.isInteger(v) || v < 1) throw new ShapeError(`resizeBicubic: invalid output size ${outH}x${outW}`);
  const [, , H, W] = x.shape;
  if (H < 1 || W < 1) throw new ShapeError(`resizeBicubic: empty input [${x.shape}]`);
  if (outH === H && outW === W) return bicubicAxis(x, 3, W, dt); // identity weights, but a fresh tensor
  if (outH === H) return bicubicAxis(x, 3, outW, dt);
  if (outW === W) return bicubicAxis(x, 2, outH, dt);
  return H * outW <= outH * W ? bicubicAxis(bicubicAxis(x, 3, outW, 'f32'), 2, outH, dt) : bicubicAxis(bicubicAxis(x, 2, outH, 'f32'), 3, outW, dt);
}
