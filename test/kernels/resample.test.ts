// Nearest 2x upsampling and PyTorch-compatible bicubic resizing: forward against float64 references that
// follow PyTorch's algorithm, backward against finite differences and against the exact transposed sums,
// and the chunked path for tensors larger than one storage binding; f16 images and gradients on every path.
import { beforeAll, describe, expect, it } from 'vitest';
import { Tensor, grad, noGrad, rt, tidy } from '../../engine/index.js';
import { resizeBicubic, upsampleNearest2x } from '../../kernels/resample.js';
import { rresizeBicubic, rupsampleNearest2x } from '../../kernels/resample.ref.js';
import { rprod, rt64 } from '../../kernels/core.ref.js';
import { checkGrad, dispatchedBy, expectClose, gpu, rand, f16Rounded } from '../helpers/check.js';

beforeAll(async () => {
  await gpu();
});

async function forward(name: string, shape: number[], f: (x: Tensor) => Tensor, ref: (x: ReturnType<typeof rt64>) => { data: Float64Array }, tol = 1e-5) {
  const d = rand(rprod(shape), 3);
  const got = await tidy(() => f(Tensor.from(d, shape))).data();
  expectClose(got, ref(rt64(d, shape)).data, tol, `${name} [${shape}]`);
}

/** The exact adjoint of a linear op: <f(x), r> = <x, f^T(r)> checked element-wise by probing with the reference. */
async function exactBackward(name: string, shape: number[], outShape: number[], f: (x: Tensor) => Tensor, ref: (x: ReturnType<typeof rt64>) => { data: Float64Array }) {
  const n = rprod(shape);
  const gy = rand(rprod(outShape), 9);
  const gx = await tidy(() => {
    const x = Tensor.from(new Float32Array(n), shape).requireGrad();
    return grad(f(x), [x], Tensor.from(gy, outShape))[0];
  });
  const got = await gx.data();
  gx.dispose();
  // reference: the op is linear, so d/dx_i <f(x), gy> = <f(e_i), gy>; probe a sample of inputs
  const idx = [...rand(40, 17, 0, n)].map(Math.floor).concat([0, n - 1]);
  const want: number[] = [];
  const have: number[] = [];
  for (const i of idx) {
    const e = new Float64Array(n);
    e[i] = 1;
    const y = ref({ shape, data: e });
    let s = 0;
    for (let k = 0; k < gy.length; k++) s += y.data[k] * gy[k];
    want.push(s);
    have.push(got[i]);
  }
  expectClose(have, want, 1e-5, `${name} backward [${shape}]`);
}

describe('upsampleNearest2x', () => {
  for (const s of [[1, 1, 1, 1], [2, 3, 7, 9], [3, 33, 5, 4]])
    it(`forward [${s}]`, () => forward('upsampleNearest2x', s, upsampleNearest2x, rupsampleNearest2x, 0));
  it('backward vs finite differences', async () => {
    await checkGrad('upsampleNearest2x', [{ data: rand(2 * 3 * 3 * 5, 2), shape: [2, 3, 3, 5] }], upsampleNearest2x, rupsampleNearest2x);
  });
  it('backward exact on [2,5,7,9]', () => exactBackward('upsampleNearest2x', [2, 5, 7, 9], [2, 5, 14, 18], upsampleNearest2x, rupsampleNearest2x));
});

describe('resizeBicubic (PyTorch bicubic, align_corners=False)', () => {
  const cases: [number[], number, number][] = [
    [[1, 3, 32, 32], 24, 24],
    [[2, 3, 64, 64], 28, 28],
    [[1, 2, 7, 9], 16, 20],
    [[1, 3, 8, 8], 8, 8],
    [[3, 1, 9, 5], 4, 11],
    [[1, 1, 1, 6], 3, 2],
  ];
  for (const [s, oh, ow] of cases)
    it(`forward [${s}] -> ${oh}x${ow}`, () => forward('resizeBicubic', s, (x) => resizeBicubic(x, oh, ow), (x) => rresizeBicubic(x, oh, ow)));
  it('forward [1,3,512,512] -> 224x224', () =>
    forward('resizeBicubic', [1, 3, 512, 512], (x) => resizeBicubic(x, 224, 224), (x) => rresizeBicubic(x, 224, 224)));
  it('backward vs finite differences (down and up)', async () => {
    await checkGrad('resizeBicubic down', [{ data: rand(2 * 12 * 10, 4), shape: [1, 2, 12, 10] }], (x) => resizeBicubic(x, 5, 7), (x) => rresizeBicubic(x, 5, 7), { samples: 60 });
    await checkGrad('resizeBicubic up', [{ data: rand(2 * 4 * 5, 5), shape: [2, 1, 4, 5] }], (x) => resizeBicubic(x, 9, 11), (x) => rresizeBicubic(x, 9, 11), { samples: 40 });
  });
  for (const [s, oh, ow] of [
    [[1, 3, 64, 64], 28, 28],
    [[2, 2, 32, 32], 24, 24],
    [[1, 2, 7, 9], 16, 20],
  ] as [number[], number, number][])
    it(`backward exact [${s}] -> ${oh}x${ow}`, () =>
      exactBackward('resizeBicubic', s, [s[0], s[1], oh, ow], (x) => resizeBicubic(x, oh, ow), (x) => rresizeBicubic(x, oh, ow)));
});

describe('resampling tensors larger than one storage binding', () => {
  it('chunks rows (lowered binding limit)', async () => {
    const r = rt();
    const saved = r.maxBindingBytes;
    try {
      const s = [2, 3, 13, 11];
      const d = rand(rprod(s), 4);
      const gyU = rand(rprod([2, 3, 26, 22]), 5);
      const gyB = rand(rprod([2, 3, 7, 17]), 6);
      r.maxBindingBytes = 2000;
      const [u, gu, b, gb] = tidy(() => {
        const x = Tensor.from(d, s).requireGrad();
        const u = upsampleNearest2x(x);
        const b = resizeBicubic(x, 7, 17);
        return [u, grad(u, [x], Tensor.from(gyU, u.shape))[0], b, grad(b, [x], Tensor.from(gyB, b.shape))[0]];
      });
      r.maxBindingBytes = saved;
      r.maxBindingBytes = saved;
      expectClose(await u.data(), rupsampleNearest2x(rt64(d, s)).data, 0, 'upsampleNearest2x chunked');
      expectClose(await b.data(), rresizeBicubic(rt64(d, s), 7, 17).data, 1e-5, 'resizeBicubic chunked');
      const [gu2, gb2] = tidy(() => {
        const x = Tensor.from(d, s).requireGrad();
        return [grad(upsampleNearest2x(x), [x], Tensor.from(gyU, [2, 3, 26, 22]))[0], grad(resizeBicubic(x, 7, 17), [x], Tensor.from(gyB, [2, 3, 7, 17]))[0]];
      });
      expectClose(await gu.data(), await gu2.data(), 0, 'upsampleNearest2x backward chunked');
      expectClose(await gb.data(), await gb2.data(), 1e-6, 'resizeBicubic backward chunked');
      [u, gu, b, gb, gu2, gb2].forEach((t) => t.dispose());
    } finally {
      r.maxBindingBytes = saved;
    }
  });
});

// ---- f16 images and gradients ----
// Inputs are rounded to f16 first and the references see the rounded values. Nearest upsampling copies
// values (exact); its backward and bicubic resizing compute in f32 and round once when storing: at most half
// an ulp, 2^-11 = 4.9e-4 of the element's own magnitude, so at most 4.9e-4 of max|ref|. F16_TOL allows that
// plus the f32 arithmetic; rounding the intermediate between the two bicubic passes to f16 as well would
// roughly double the error.
const F16_TOL = 6e-4;

async function forward16(name: string, shape: number[], f: (x: Tensor) => Tensor, ref: (x: ReturnType<typeof rt64>) => { data: Float64Array }, tol: number) {
  const d = f16Rounded(rand(rprod(shape), 3));
  const y = tidy(() => f(Tensor.from(d, shape, 'f16')));
  expect(y.dtype).toBe('f16');
  const got = await y.data();
  y.dispose();
  expectClose(got, ref(rt64(d, shape)).data, tol, `${name} f16 [${shape}]`);
}

/**
 * f16 backward against the f32 GPU path (validated above) on the same f16-rounded x and dy: both sum the same
 * f32 values, the f16 one rounds the result. Also checks the rule's own output dtype (grad() would cast it).
 */
async function backward16(name: string, shape: number[], outShape: number[], f: (x: Tensor) => Tensor) {
  const xd = f16Rounded(rand(rprod(shape), 3));
  const gd = f16Rounded(rand(rprod(outShape), 9));
  const run = (dt: 'f16' | 'f32') =>
    tidy(() => {
      const x = Tensor.from(xd, shape, dt).requireGrad();
      return grad(f(x), [x], Tensor.from(gd, outShape, dt))[0];
    });
  const [h, w] = [run('f16'), run('f32')];
  expect(h.dtype).toBe('f16');
  expectClose(await h.data(), await w.data(), F16_TOL, `${name} f16 backward [${shape}]`);
  [h, w].forEach((t) => t.dispose());
  const dts = tidy(() => {
    const y = f(Tensor.from(xd, shape, 'f16').requireGrad());
    const gs: (Tensor | null | undefined)[] = [];
    // every recorded pass: the rule gets dy in its output's dtype and returns dx in its input's
    for (let t: Tensor | undefined = y; t?.node; t = t.node.inputs[0]) {
      const node = t.node;
      const g = noGrad(() => node.backward(Tensor.from(new Float32Array(t!.size), t!.shape, t!.dtype)));
      gs.push(g[0]);
      expect(g[0]?.dtype).toBe(node.inputs[0].dtype);
      // dy of another dtype than y's is refused
      const other = t.dtype === 'f16' ? 'f32' : 'f16';
      expect(() => noGrad(() => node.backward(Tensor.from(new Float32Array(t!.size), t!.shape, other)))).toThrow(/dy is .* but y is/);
    }
    return gs.map((t) => t?.dtype);
  });
  expect(dts.length).toBeGreaterThan(0);
  expect(dts[dts.length - 1]).toBe('f16');
}

describe('upsampleNearest2x f16', () => {
  for (const s of [[1, 1, 1, 1], [2, 3, 7, 9], [3, 33, 5, 4]])
    it(`forward [${s}] (exact)`, (ctx) => {
      if (!rt().features.has('shader-f16')) ctx.skip();
      return forward16('upsampleNearest2x', s, upsampleNearest2x, rupsampleNearest2x, 0);
    });
  for (const s of [[2, 3, 3, 5], [2, 5, 7, 9], [1, 1, 1, 1]])
    it(`backward [${s}]: 2x2 sums in f32, dx in f16`, (ctx) => {
      if (!rt().features.has('shader-f16')) ctx.skip();
      return backward16('upsampleNearest2x', s, [s[0], s[1], 2 * s[2], 2 * s[3]], upsampleNearest2x);
    });
});

describe('resizeBicubic f16', () => {
  const cases: [number[], number, number][] = [
    [[1, 3, 32, 32], 24, 24],
    [[2, 3, 64, 64], 28, 28], // H first
    [[1, 2, 7, 9], 16, 20], // W first
    [[1, 3, 8, 8], 8, 8], // identity (one pass)
    [[3, 1, 9, 5], 4, 11],
    [[1, 1, 1, 6], 3, 2],
    [[1, 3, 9, 7], 9, 4], // W pass only
    [[2, 1, 5, 7], 12, 7], // H pass only
  ];
  for (const [s, oh, ow] of cases)
    it(`forward [${s}] -> ${oh}x${ow}`, (ctx) => {
      if (!rt().features.has('shader-f16')) ctx.skip();
      return forward16('resizeBicubic', s, (x) => resizeBicubic(x, oh, ow), (x) => rresizeBicubic(x, oh, ow), F16_TOL);
    });
  it('forward [1,3,512,512] -> 224x224', (ctx) => {
    if (!rt().features.has('shader-f16')) ctx.skip();
    return forward16('resizeBicubic', [1, 3, 512, 512], (x) => resizeBicubic(x, 224, 224), (x) => rresizeBicubic(x, 224, 224), F16_TOL);
  });
  for (const [s, oh, ow] of [
    [[1, 3, 64, 64], 28, 28],
    [[2, 2, 32, 32], 24, 24],
    [[1, 2, 7, 9], 16, 20],
    [[1, 3, 8, 8], 8, 8],
    [[1, 3, 9, 7], 9, 4],
    [[2, 1, 5, 7], 12, 7],
  ] as [number[], number, number][])
    it(`backward [${s}] -> ${oh}x${ow}: dx in f16`, (ctx) => {
      if (!rt().features.has('shader-f16')) ctx.skip();
      return backward16('resizeBicubic', s, [s[0], s[1], oh, ow], (x) => resizeBicubic(x, oh, ow));
    });
  it('rejects integer input', () => {
    tidy(() => {
      expect(() => resizeBicubic(Tensor.from(new Int32Array(4), [1, 1, 2, 2], 'i32'), 3, 3)).toThrow(/x must be f32 or f16/);
      expect(() => upsampleNearest2x(Tensor.from(new Int32Array(4), [1, 1, 2, 2], 'i32'))).toThrow(/x must be f32 or f16/);
    });
  });
});

describe('resampling f16 tensors larger than one storage binding', () => {
  it('chunks rows at aligned offsets (odd f16 element counts per window)', async (ctx) => {
    if (!rt().features.has('shader-f16')) ctx.skip();
    const r = rt();
    const saved = r.maxBindingBytes;
    const s = [2, 3, 13, 11];
    const d = f16Rounded(rand(rprod(s), 4));
    const gyU = f16Rounded(rand(rprod([2, 3, 26, 22]), 5));
    const gyB = f16Rounded(rand(rprod([2, 3, 7, 17]), 6));
    const run = () =>
      tidy(() => {
        const x = Tensor.from(d, s, 'f16').requireGrad();
        const u = upsampleNearest2x(x);
        const b = resizeBicubic(x, 7, 17);
        return [u, grad(u, [x], Tensor.from(gyU, u.shape, 'f16'))[0], b, grad(b, [x], Tensor.from(gyB, b.shape, 'f16'))[0]];
      });
    const full = run();
    const want = await Promise.all(full.map((t) => t.data()));
    full.forEach((t) => t.dispose());
    let got: (Float32Array | Int32Array)[] = [];
    try {
      r.maxBindingBytes = 2000;
      let split: Tensor[] = [];
      const names = await dispatchedBy(() => {
        split = run();
      });
      // windows of 9 rows of 11 pixels (99 f16 elements) for nearest 2x, several per bicubic pass
      expect(names.filter((n) => n === 'upsample_nearest2x').length).toBe(Math.ceil((2 * 3 * 13) / 9));
      expect(names.filter((n) => n === 'resize_bicubic').length).toBeGreaterThan(2);
      got = await Promise.all(split.map((t) => t.data()));
      split.forEach((t) => t.dispose());
    } finally {
      r.maxBindingBytes = saved;
    }
    // the same arithmetic in the same order: identical results
    ['upsample', 'upsample dx', 'bicubic', 'bicubic dx'].forEach((w, i) => expectClose(got[i], want[i], 0, `${w} f16 chunked`));
    expectClose(want[0], rupsampleNearest2x(rt64(d, s)).data, 0, 'upsampleNearest2x f16');
    expectClose(want[2], rresizeBicubic(rt64(d, s), 7, 17).data, F16_TOL, 'resizeBicubic f16');
  });
});
