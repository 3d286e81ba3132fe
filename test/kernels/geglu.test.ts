// GEGLU (hidden * gelu(gate) over the two halves of the last axis) against a float64 reference, its
// gradient against finite differences, the split path for inputs larger than one storage binding, and f16
// storage of x, y, dy and dx on every path.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { geglu, grad, noGrad, rt, Tensor, tidy } from '../../engine/index.js';
import { erf, rprod, rt64, type RT } from '../../kernels/core.ref.js';
import { setGegluChunk } from '../../kernels/geglu.js';
import { checkGrad, expectClose, gpu, rand, f16Rounded, splitRun } from '../helpers/check.js';

beforeAll(async () => {
  await gpu();
});
afterAll(() => setGegluChunk(null));

/** float64 GEGLU: x [..., 2D] -> x[..., :D] * gelu(x[..., D:]) */
function rgeglu(x: RT): RT {
  const D = x.shape[x.shape.length - 1] / 2;
  const rows = x.data.length / (2 * D);
  const data = new Float64Array(rows * D);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < D; c++) {
      const h = x.data[r * 2 * D + c];
      const g = x.data[r * 2 * D + D + c];
      data[r * D + c] = h * 0.5 * g * (1 + erf(g / Math.SQRT2));
    }
  return { shape: [...x.shape.slice(0, -1), D], data };
}

const SHAPES = [[2], [14], [66], [3, 154], [2, 7, 2000], [2, 5, 64], [1, 33, 2560]];

// vec4 outputs per invocation: the adapter's preset, and 1 (one per invocation) with 3 (ragged loops)
describe.each([null, 1, 3])('geglu (chunk %s)', (k) => {
  beforeAll(() => setGegluChunk(k));
  it('forward on odd shapes', async () => {
    for (const s of SHAPES) {
      const xd = rand(rprod(s), 3, -5, 5);
      const got = await tidy(() => geglu(Tensor.from(xd, s))).data();
      expectClose(got, rgeglu(rt64(xd, s)).data, 2e-6, `geglu [${s}]`);
    }
  });
  it('left tail stays accurate (no cancellation in 1 + erf)', async () => {
    // reference: gelu(g) = 0.5 * g * erfc(-g / sqrt 2), erfc by its continued fraction (no cancellation either)
    const erfc = (z: number) => {
      let f = 0;
      for (let n = 60; n >= 1; n--) f = n / 2 / (z + f);
      return Math.exp(-z * z) / Math.sqrt(Math.PI) / (z + f);
    };
    const gates = [-3, -6, -7, -8, -10];
    const xd = new Float32Array([...gates.map(() => 1), ...gates]);
    const got = await tidy(() => geglu(Tensor.from(xd, [1, 2 * gates.length]))).data();
    gates.forEach((g, i) => {
      const ref = 0.5 * g * erfc(-Math.fround(g) / Math.SQRT2);
      if (!(Math.abs(got[i] - ref) <= 1e-5 * Math.abs(ref))) throw new Error(`geglu tail at gate ${g}: ${got[i]} vs ${ref}`);
    });
  });
  for (const s of [[3, 14], [2, 3, 16], [77, 6]])
    it(`backward vs finite differences [${s}]`, async () => {
      await checkGrad('geglu', [{ data: rand(rprod(s), 6, -3, 3), shape: s }], geglu, rgeglu, { samples: 60 });
    });
  it('splits rows beyond one storage binding', async () => {
    for (const s of [[40, 24], [130, 30]]) {
      const n = rprod(s);
      const xd = rand(n, 8, -3, 3);
      const gd = rand(n / 2, 9);
      const outShape = [s[0], s[1] / 2];
      const run = () =>
        tidy(() => {
          const x = Tensor.from(xd, s).requireGrad();
          const y = geglu(x);
          return [y, ...grad(y, [x], Tensor.from(gd, outShape))];
        });
      // windows of 64 rows (vec4 path) or 64 rows (scalar path)
      const { want, got } = await splitRun(8192, run);
      expectClose(got[0], want[0], 0, `geglu split [${s}] y`);
      expectClose(got[1], want[1], 0, `geglu split [${s}] dx`);
      expectClose(want[0], rgeglu(rt64(xd, s)).data, 2e-6, `geglu [${s}] vs reference`);
    }
  });
});

// ---- f16 storage ----
// x rounded to f16 first and the reference sees the rounded values, so what remains is the rounding of the
// f16 outputs (at most half an ulp, 2^-11 = 4.9e-4 of the element's own magnitude, so at most 4.9e-4 of
// max|ref|) and the f32 arithmetic (2e-6 above).
const F16_TOL = 6e-4;

/** y and dx with x and dy stored as `dt` */
function runGeglu(s: number[], dt: 'f32' | 'f16', xd: Float32Array, gd: Float32Array) {
  return tidy(() => {
    const x = Tensor.from(xd, s, dt).requireGrad();
    const y = geglu(x);
    return [y, ...grad(y, [x], Tensor.from(gd, y.shape, dt))];
  });
}

describe.each([null, 1, 3])('geglu f16 (chunk %s)', (k) => {
  beforeAll(() => setGegluChunk(k));
  it('forward on odd shapes', async (ctx) => {
    if (!rt().features.has('shader-f16')) ctx.skip();
    for (const s of SHAPES) {
      const xd = f16Rounded(rand(rprod(s), 3, -5, 5));
      const y = tidy(() => geglu(Tensor.from(xd, s, 'f16')));
      expect(y.dtype).toBe('f16');
      const got = await y.data();
      y.dispose();
      expectClose(got, rgeglu(rt64(xd, s)).data, F16_TOL, `geglu f16 [${s}]`);
    }
  });
  // against the f32 GPU path (validated above against finite differences) on the same f16-rounded x and dy:
  // the same f32 arithmetic, the f16 one rounds its outputs
  it('backward on odd shapes: dx in f16', async (ctx) => {
    if (!rt().features.has('shader-f16')) ctx.skip();
    for (const s of SHAPES) {
      const n = rprod(s);
      const xd = f16Rounded(rand(n, 6, -3, 3));
      const gd = f16Rounded(rand(n / 2, 7));
      const h = runGeglu(s, 'f16', xd, gd);
      const f = runGeglu(s, 'f32', xd, gd);
      expect(h.map((t) => t.dtype)).toEqual(['f16', 'f16']);
      const [got, want] = [await Promise.all(h.map((t) => t.data())), await Promise.all(f.map((t) => t.data()))];
      [...h, ...f].forEach((t) => t.dispose());
      expectClose(got[0], want[0], F16_TOL, `geglu f16 [${s}] y`);
      expectClose(got[1], want[1], F16_TOL, `geglu f16 [${s}] dx`);
    }
  });
  it('splits rows beyond one storage binding (f16: 128-element alignment steps)', async (ctx) => {
    if (!rt().features.has('shader-f16')) ctx.skip();
    for (const [s, limit, windows] of [
      [[40, 24], 1536, 2], // vec4 path: 32-row steps of 48 bytes
      [[129, 30], 7680, 2], // scalar path: 128-row steps; the last window's y and dy hold 15 f16 (odd)
    ] as [number[], number, number][]) {
      const n = rprod(s);
      const xd = f16Rounded(rand(n, 8, -3, 3));
      const gd = f16Rounded(rand(n / 2, 9));
      const { want, got, names } = await splitRun(limit, () => runGeglu(s, 'f16', xd, gd));
      expect(names.filter((m) => m === 'geglu').length).toBe(windows);
      expect(names.filter((m) => m === 'geglu_backward').length).toBe(windows);
      expectClose(got[0], want[0], 0, `geglu f16 split [${s}] y`);
      expectClose(got[1], want[1], 0, `geglu f16 split [${s}] dx`);
      expectClose(want[0], rgeglu(rt64(xd, s)).data, F16_TOL, `geglu f16 [${s}] vs reference`);
    }
  });
});

describe('geglu dtypes', () => {
  // grad() casts a gradient to its tensor's dtype, so the rule itself is called here
  it('the backward rule returns dx in x\'s dtype and refuses dy of another dtype than y\'s', (ctx) => {
    if (!rt().features.has('shader-f16')) ctx.skip();
    for (const dt of ['f32', 'f16'] as const)
      for (const s of [[3, 14], [2, 16]])
        tidy(() => {
          const x = Tensor.from(rand(rprod(s), 1), s, dt).requireGrad();
          const y = geglu(x);
          expect(y.dtype).toBe(dt);
          const gs = noGrad(() => y.node!.backward(Tensor.from(rand(y.size, 2), y.shape, dt)));
          expect(gs[0]?.dtype).toBe(dt);
          const other = dt === 'f16' ? 'f32' : 'f16';
          expect(() => noGrad(() => y.node!.backward(Tensor.from(rand(y.size, 2), y.shape, other)))).toThrow(/dy is .* but y is/);
        });
  });
  it('rejects integer input', () => {
    tidy(() => {
      expect(() => geglu(Tensor.from(new Int32Array(4), [1, 4], 'i32'))).toThrow(/x must be f32 or f16/);
    });
  });
});
