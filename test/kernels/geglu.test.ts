// GEGLU (hidden * gelu(gate) over the two halves of the last axis) against a float64 reference, its
// gradient against finite differences, and the split path for inputs larger than one storage binding.
import { afterAll, beforeAll, describe, it } from 'vitest';
import { geglu, grad, rt, Tensor, tidy } from '../../engine/index.js';
import { erf, rprod, rt64, type RT } from '../../kernels/core.ref.js';
import { setGegluChunk } from '../../kernels/geglu.js';
import { checkGrad, expectClose, gpu, rand } from '../helpers/check.js';

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
    const r = rt();
    const saved = r.maxBindingBytes;
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
      const full = run();
      const want = await Promise.all(full.map((t) => t.data()));
      full.forEach((t) => t.dispose());
      try {
        r.maxBindingBytes = 8192; // windows of 64 rows (vec4 path) or 64 rows (scalar path)
        const split = run();
        const got = await Promise.all(split.map((t) => t.data()));
        split.forEach((t) => t.dispose());
        expectClose(got[0], want[0], 0, `geglu split [${s}] y`);
        expectClose(got[1], want[1], 0, `geglu split [${s}] dx`);
      } finally {
        r.maxBindingBytes = saved;
      }
      expectClose(want[0], rgeglu(rt64(xd, s)).data, 2e-6, `geglu [${s}] vs reference`);
    }
  });
});
