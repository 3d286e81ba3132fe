// Layer norm and softmax on f16 activations: f16 outputs and gradients (dY and dX in the activation's dtype),
// gamma/beta and their gradients f32, statistics and arithmetic f32. Forward against the float64 reference on
// the f16-rounded inputs, backward against float64 formulas on the f16-rounded x, y and dY; short rows (one
// invocation per row) and long rows (a workgroup per row) for layer norm.
import { beforeAll, describe, expect, it } from 'vitest';
import * as E from '../../engine/index.js';
import { Tensor, grad, rt } from '../../engine/index.js';
import * as R from '../../kernels/core.ref.js';
import { dispatchedBy, expectClose, gpu, rand } from '../helpers/check.js';

beforeAll(async () => {
  await gpu();
});

// Tolerance: the references see the same f16-rounded values the kernels read, and the kernels compute in
// f32, so what remains is the rounding of each output to f16: at most 2^-11 (4.9e-4) of its value, hence of
// max|ref|; 1e-3 leaves a factor 2 for the f32 arithmetic.
const TOL = 1e-3;
const hasF16 = () => rt().features.has('shader-f16');

/** an f16 tensor of seeded data, and the values it holds (f16-rounded) */
async function f16(shape: number[], seed: number, lo = -1, hi = 1) {
  const t = Tensor.from(rand(R.rprod(shape), seed, lo, hi), shape, 'f16');
  return { t, v: (await t.data()) as Float32Array };
}

/** float64 layer norm backward: dx, dgamma, dbeta for x [rows, L], gamma, dY */
function refLayerNormGrad(x: Float32Array, w: Float32Array, g: Float32Array, L: number, eps = 1e-5) {
  const rows = x.length / L;
  const dx = new Float64Array(x.length);
  const dw = new Float64Array(L);
  const db = new Float64Array(L);
  for (let r = 0; r < rows; r++) {
    const o = r * L;
    let mean = 0;
    for (let i = 0; i < L; i++) mean += x[o + i];
    mean /= L;
    let v = 0;
    for (let i = 0; i < L; i++) v += (x[o + i] - mean) ** 2;
    const rstd = 1 / Math.sqrt(v / L + eps);
    let ma = 0;
    let mb = 0;
    for (let i = 0; i < L; i++) {
      const xh = (x[o + i] - mean) * rstd;
      ma += g[o + i] * w[i];
      mb += g[o + i] * w[i] * xh;
      dw[i] += g[o + i] * xh;
      db[i] += g[o + i];
    }
    ma /= L;
    mb /= L;
    for (let i = 0; i < L; i++) dx[o + i] = rstd * (g[o + i] * w[i] - ma - (x[o + i] - mean) * rstd * mb);
  }
  return { dx, dw, db };
}

/** float64 softmax backward from its (f16-rounded) output y and dY: dx = scale * y * (g - sum(g * y)) */
function refSoftmaxGrad(y: Float32Array, g: Float32Array, L: number, scale: number) {
  const dx = new Float64Array(y.length);
  for (let o = 0; o < y.length; o += L) {
    let d = 0;
    for (let i = 0; i < L; i++) d += g[o + i] * y[o + i];
    for (let i = 0; i < L; i++) dx[o + i] = scale * y[o + i] * (g[o + i] - d);
  }
  return dx;
}

describe('layer norm on f16 activations', () => {
  // L <= 256: one invocation per row; longer: a workgroup per row
  const SHAPES = [
    [1, 7],
    [3, 33],
    [77, 64],
    [130, 256],
    [2, 257],
    [2, 1000],
  ];
  it('forward: f16 y on short and long rows', async (ctx) => {
    if (!hasF16()) return ctx.skip();
    for (const s of SHAPES) {
      const L = s[1];
      const x = await f16(s, 11, -2, 2);
      const w = rand(L, 12, 0.5, 1.5);
      const b = rand(L, 13);
      const [wt, bt] = [Tensor.from(w, [L]), Tensor.from(b, [L])];
      const y = E.layerNorm(x.t, wt, bt);
      expect(y.dtype).toBe('f16');
      const got = await y.data();
      [x.t, wt, bt, y].forEach((t) => t.dispose());
      expectClose(got, R.rlayerNorm(R.rt64(x.v, s), R.rt64(w, [L]), R.rt64(b, [L])).data, TOL, `layerNorm f16 [${s}]`);
    }
  });

  it('backward: dX f16, dgamma and dbeta f32, on short and long rows', async (ctx) => {
    if (!hasF16()) return ctx.skip();
    for (const s of [
      [5, 33],
      [130, 256],
      [3, 300],
    ]) {
      const L = s[1];
      const x = await f16(s, 1, -2, 2);
      const g = await f16(s, 4);
      const w = rand(L, 2, 0.5, 1.5);
      const [wt, bt] = [Tensor.from(w, [L]).requireGrad(), Tensor.from(rand(L, 3), [L]).requireGrad()];
      x.t.requireGrad();
      let gs: Tensor[] = [];
      // each gradient comes out of the rule in its tensor's dtype: no casts by the engine
      const used = await dispatchedBy(() => {
        const y = E.layerNorm(x.t, wt, bt);
        gs = grad(y, [x.t, wt, bt], g.t);
        y.dispose();
      });
      expect(used).not.toContain('cast');
      expect(gs.map((t) => t.dtype)).toEqual(['f16', 'f32', 'f32']);
      const ref = refLayerNormGrad(x.v, w, g.v, L);
      expectClose(await gs[0].data(), ref.dx, TOL, `layerNorm f16 [${s}]: dx`);
      // f32 sums of products of the same values: only the f32 arithmetic differs
      expectClose(await gs[1].data(), ref.dw, 1e-5, `layerNorm f16 [${s}]: dgamma`);
      expectClose(await gs[2].data(), ref.db, 1e-5, `layerNorm f16 [${s}]: dbeta`);
      [x.t, g.t, wt, bt, ...gs].forEach((t) => t.dispose());
    }
  });

  it('gamma and beta must be f32', async (ctx) => {
    if (!hasF16()) return ctx.skip();
    const x = Tensor.from(rand(6, 1), [2, 3], 'f16');
    expect(() => E.layerNorm(x, Tensor.from(rand(3, 2), [3], 'f16'), Tensor.from(rand(3, 3), [3]))).toThrow(/weight and bias must be f32/);
    expect(() => E.layerNorm(Tensor.from([1, 2, 3], [3], 'i32'), Tensor.from(rand(3, 2), [3]), Tensor.from(rand(3, 3), [3]))).toThrow(/must be f32 or f16/);
  });
});

describe('softmax on f16 activations', () => {
  it('forward: f16 y on odd rows', async (ctx) => {
    if (!hasF16()) return ctx.skip();
    for (const s of [[1], [7], [3, 77], [2, 1000], [5, 33]]) {
      const x = await f16(s, 11, -4, 4);
      const y = E.softmax(x.t, 0.7);
      expect(y.dtype).toBe('f16');
      const got = await y.data();
      [x.t, y].forEach((t) => t.dispose());
      expectClose(got, R.rsoftmax(R.rt64(x.v, s), 0.7).data, TOL, `softmax f16 [${s}]`);
    }
  });

  it('backward: dX f16 from the f16 y and dY', async (ctx) => {
    if (!hasF16()) return ctx.skip();
    for (const s of [
      [3, 77],
      [2, 1000],
    ]) {
      const L = s[1];
      const x = (await f16(s, 4, -3, 3)).t.requireGrad();
      const g = await f16(s, 5);
      let dx: Tensor | null = null;
      let yv: Float32Array | null = null;
      const used = await dispatchedBy(async () => {
        const y = E.softmax(x, 0.5);
        yv = (await y.data()) as Float32Array;
        [dx] = grad(y, [x], g.t);
        y.dispose();
      });
      expect(used).not.toContain('cast');
      expect(dx!.dtype).toBe('f16');
      expectClose(await dx!.data(), refSoftmaxGrad(yv!, g.v, L, 0.5), TOL, `softmax f16 [${s}]: dx`);
      [x, g.t, dx!].forEach((t) => t.dispose());
    }
  });

  it('the input must be a float tensor', () => {
    expect(() => E.softmax(Tensor.from([1, 2, 3], [3], 'i32'))).toThrow(/must be f32 or f16/);
  });
});
