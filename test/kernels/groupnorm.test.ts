// Group norm (with and without the fused SiLU) against the float64 reference on odd shapes, gradients for
// x, weight and bias against finite differences, f16 weight storage, the split path for tensors
// larger than one storage binding, and f16 activations (x, y, dy, dx) on every path.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { grad, groupNorm, noGrad, rt, Tensor, tidy } from '../../engine/index.js';
import { rprod, rt64, type RT } from '../../kernels/core.ref.js';
import { rgroupNorm } from '../../kernels/groupnorm.ref.js';
import { setGroupNormChunk } from '../../kernels/groupnorm.js';
import { checkGrad, expectClose, gpu, rand, f16Rounded, splitRun } from '../helpers/check.js';

beforeAll(async () => {
  await gpu();
});
afterAll(() => setGroupNormChunk(null));

// work per invocation: the adapter's preset (128 vec4 on CPU adapters, 8 on GPUs) and 3 (many partials per plane)
const CHUNKS: (number | null)[] = [null, 3];

async function forward(shape: number[], groups: number, silu: boolean, tol = 1e-5, wdtype: 'f32' | 'f16' = 'f32', offset = 0) {
  const C = shape[1];
  const xd = rand(rprod(shape), 3, -2 + offset, 2 + offset);
  let wd = rand(C, 4, 0.5, 1.5);
  let bd = rand(C, 5, -0.5, 0.5);
  if (wdtype === 'f16') {
    // the reference sees the values f16 storage holds
    const t = tidy(() => [Tensor.from(wd, [C], 'f16'), Tensor.from(bd, [C], 'f16')]);
    wd = (await t[0].data()) as Float32Array;
    bd = (await t[1].data()) as Float32Array;
    t.forEach((v) => v.dispose());
  }
  const got = await tidy(() => groupNorm(Tensor.from(xd, shape), groups, Tensor.from(wd, [C], wdtype), Tensor.from(bd, [C], wdtype), 1e-5, { silu })).data();
  const ref = rgroupNorm(rt64(xd, shape), groups, rt64(wd, [C]), rt64(bd, [C]), 1e-5, silu);
  expectClose(got, ref.data, tol, `groupNorm${silu ? '+silu' : ''} [${shape}] groups ${groups}${wdtype === 'f16' ? ' f16 weights' : ''}`);
}

const CASES: [number[], number][] = [
  [[1, 4, 7, 9], 2],
  [[3, 33, 7, 9], 3],
  [[2, 33, 7, 9], 11],
  [[1, 77, 7, 9], 7],
  [[3, 77, 5], 7], // [N, C, L]
  [[2, 12, 16], 4], // vec4 path, 3-D
  [[2, 32, 8, 8], 32], // one channel per group
  [[1, 64, 4, 4], 8], // 8 channels per group
  [[1, 64, 3, 3], 16], // 4 channels per group, odd spatial
  [[2, 6], 3], // no spatial dims
  [[2, 320, 8, 8], 32],
  [[1, 64, 64, 64], 32], // planes split over many invocations
  [[1, 8, 37, 41], 2], // scalar path, many invocations per plane
];

describe.each(CHUNKS)('groupNorm forward (chunk %s)', (k) => {
  beforeAll(() => setGroupNormChunk(k));
  for (const silu of [false, true])
    it(`odd shapes${silu ? ' with fused SiLU' : ''}`, async () => {
      for (const [s, g] of CASES) await forward(s, g, silu);
    });
  it('large mean relative to spread (centred variance)', async () => {
    await forward([1, 16, 32, 32], 4, false, 1e-4, 'f32', 300);
  });
  it('f16 weight and bias storage', async (ctx) => {
    if (!rt().features.has('shader-f16')) ctx.skip();
    for (const [s, g] of CASES.slice(0, 6)) for (const silu of [false, true]) await forward(s, g, silu, 1e-5, 'f16');
  });
});

describe.each(CHUNKS)('groupNorm backward (chunk %s)', (k) => {
  beforeAll(() => setGroupNormChunk(k));
  const gradCase = (shape: number[], groups: number, silu: boolean, f16 = false) =>
    it(`[${shape}] groups ${groups}${silu ? ' +silu' : ''}${f16 ? ' f16 weights' : ''}`, async (ctx) => {
      if (f16 && !rt().features.has('shader-f16')) ctx.skip();
      const C = shape[1];
      let wd = rand(C, 4, 0.5, 1.5);
      let bd = rand(C, 5, -0.5, 0.5);
      if (f16) {
        const t = [Tensor.from(wd, [C], 'f16'), Tensor.from(bd, [C], 'f16')];
        wd = (await t[0].data()) as Float32Array;
        bd = (await t[1].data()) as Float32Array;
        t.forEach((v) => v.dispose());
      }
      await checkGrad(
        `groupNorm${silu ? '+silu' : ''}`,
        [
          { data: rand(rprod(shape), 6, -2, 2), shape },
          { data: wd, shape: [C] },
          { data: bd, shape: [C] },
        ],
        (x, w, b) => (f16 ? groupNorm(x, groups, Tensor.from(wd, [C], 'f16'), Tensor.from(bd, [C], 'f16'), 1e-5, { silu }) : groupNorm(x, groups, w, b, 1e-5, { silu })),
        (x: RT, w: RT, b: RT) => rgroupNorm(x, groups, w, b, 1e-5, silu),
        { samples: 40, which: f16 ? [0] : [0, 1, 2] },
      );
    });
  for (const silu of [false, true]) {
    gradCase([2, 6, 3, 5], 3, silu);
    gradCase([3, 33, 7], 11, silu);
    gradCase([1, 8, 4, 4], 8, silu);
    gradCase([2, 8, 6, 6], 2, silu);
    gradCase([1, 4, 37, 41], 2, silu); // many invocations per plane, scalar path
    gradCase([1, 4, 32, 32], 2, silu); // many invocations per plane, vec4 path
  }
  gradCase([2, 6, 3, 5], 3, true, true);
  it('weight and bias gradients alone (input without grad)', async () => {
    const shape = [2, 8, 5, 4];
    const xd = rand(rprod(shape), 31);
    const wd = rand(8, 32, 0.5, 1.5);
    const bd = rand(8, 33);
    const gd = rand(rprod(shape), 34);
    const run = (xGrad: boolean) =>
      tidy(() => {
        const x = Tensor.from(xd, shape).requireGrad(xGrad);
        const w = Tensor.from(wd, [8]).requireGrad();
        const b = Tensor.from(bd, [8]).requireGrad();
        return grad(groupNorm(x, 4, w, b, 1e-5, { silu: true }), [w, b], Tensor.from(gd, shape));
      });
    const [a, b] = [run(true), run(false)];
    for (let i = 0; i < 2; i++) expectClose(await b[i].data(), await a[i].data(), 1e-6, `groupNorm ${i ? 'dbias' : 'dweight'} without dx`);
    [...a, ...b].forEach((t) => t.dispose());
  });
});

describe.each(CHUNKS)('groupNorm beyond one storage binding (chunk %s)', (k) => {
  beforeAll(() => setGroupNormChunk(k));
  it('splits into windows at aligned offsets (forward and backward, vec4 and scalar paths)', async () => {
    // limits that split x, y, dy and dx into several windows while the small per-plane arrays still fit
    for (const [shape, groups, limit] of [
      [[2, 32, 24, 24], 8, 32768], // vec4 path
      [[2, 64, 15, 15], 2, 65536], // scalar path, 64-plane alignment steps
      [[2, 40, 5, 6], 8, 8192], // scalar path, 32-plane alignment steps
    ] as [number[], number, number][]) {
      const C = shape[1];
      const n = rprod(shape);
      const xd = rand(n, 21);
      const wd = rand(C, 22, 0.5, 1.5);
      const bd = rand(C, 23);
      const gd = rand(n, 24);
      const run = () =>
        tidy(() => {
          const x = Tensor.from(xd, shape).requireGrad();
          const w = Tensor.from(wd, [C]).requireGrad();
          const b = Tensor.from(bd, [C]).requireGrad();
          const y = groupNorm(x, groups, w, b, 1e-5, { silu: true });
          return [y, ...grad(y, [x, w, b], Tensor.from(gd, shape))];
        });
      const { want, got } = await splitRun(limit, run);
      ['y', 'dx', 'dweight', 'dbias'].forEach((w, i) => expectClose(got[i], want[i], 1e-6, `groupNorm split [${shape}] ${w}`));
      const ref = rgroupNorm(rt64(xd, shape), groups, rt64(wd, [C]), rt64(bd, [C]), 1e-5, true);
      expectClose(want[0], ref.data, 1e-5, `groupNorm [${shape}] vs reference`);
    }
  });
});

// ---- f16 activations ----
// x (and so y, dy, dx) stored as f16, weight/bias f32 or f16, statistics and arithmetic f32. The inputs are
// rounded to f16 first and the references see the rounded values, so what remains is the rounding of the
// f16 outputs: at most half an ulp, 2^-11 = 4.9e-4 of the element's own magnitude, so at most 4.9e-4 of
// max|ref|; F16_TOL allows that plus the f32 arithmetic (measured up to 3.9e-4).
const F16_TOL = 6e-4;

async function forward16(shape: number[], groups: number, silu: boolean, wdtype: 'f32' | 'f16', offset = 0) {
  const C = shape[1];
  const xd = f16Rounded(rand(rprod(shape), 3, -2 + offset, 2 + offset));
  let wd = rand(C, 4, 0.5, 1.5);
  let bd = rand(C, 5, -0.5, 0.5);
  if (wdtype === 'f16') [wd, bd] = [f16Rounded(wd), f16Rounded(bd)];
  const y = tidy(() => groupNorm(Tensor.from(xd, shape, 'f16'), groups, Tensor.from(wd, [C], wdtype), Tensor.from(bd, [C], wdtype), 1e-5, { silu }));
  expect(y.dtype).toBe('f16');
  const got = await y.data();
  y.dispose();
  const ref = rgroupNorm(rt64(xd, shape), groups, rt64(wd, [C]), rt64(bd, [C]), 1e-5, silu);
  expectClose(got, ref.data, F16_TOL, `groupNorm${silu ? '+silu' : ''} f16 [${shape}] groups ${groups}, ${wdtype} weights`);
}

/** y, dx, dweight, dbias of one forward and backward with x/dy stored as `dt`, weight/bias as `wdt`. */
function runBoth(
  shape: number[],
  groups: number,
  silu: boolean,
  dt: 'f32' | 'f16',
  wdt: 'f32' | 'f16',
  xd: Float32Array,
  gd: Float32Array,
  wd: Float32Array,
  bd: Float32Array,
) {
  const C = shape[1];
  return tidy(() => {
    const x = Tensor.from(xd, shape, dt).requireGrad();
    const w = Tensor.from(wd, [C], wdt).requireGrad();
    const b = Tensor.from(bd, [C], wdt).requireGrad();
    const y = groupNorm(x, groups, w, b, 1e-5, { silu });
    return [y, ...grad(y, [x, w, b], Tensor.from(gd, shape, dt))];
  });
}

/**
 * f16 forward and backward against the f32 GPU path (validated above against the float64 reference and
 * finite differences) on the same f16-rounded x, dy, weight and bias: both widen to the same f32 values, so
 * y and dx differ by their f16 rounding, and dweight/dbias (f32 weights) by nothing but reassociation.
 */
async function backward16(shape: number[], groups: number, silu: boolean, wdt: 'f32' | 'f16') {
  const C = shape[1];
  const n = rprod(shape);
  const xd = f16Rounded(rand(n, 6, -2, 2));
  const gd = f16Rounded(rand(n, 7));
  let wd = rand(C, 4, 0.5, 1.5);
  let bd = rand(C, 5, -0.5, 0.5);
  if (wdt === 'f16') [wd, bd] = [f16Rounded(wd), f16Rounded(bd)];
  const h = runBoth(shape, groups, silu, 'f16', wdt, xd, gd, wd, bd);
  const f = runBoth(shape, groups, silu, 'f32', wdt, xd, gd, wd, bd);
  expect(h.map((t) => t.dtype)).toEqual(['f16', 'f16', wdt, wdt]);
  const [got, want] = [await Promise.all(h.map((t) => t.data())), await Promise.all(f.map((t) => t.data()))];
  [...h, ...f].forEach((t) => t.dispose());
  const what = `groupNorm${silu ? '+silu' : ''} f16 [${shape}] groups ${groups}, ${wdt} weights`;
  expectClose(got[0], want[0], F16_TOL, `${what} y`);
  expectClose(got[1], want[1], F16_TOL, `${what} dx`);
  // f32 weight gradients: the same f32 sums of the same values; f16 ones: their rounding
  expectClose(got[2], want[2], wdt === 'f16' ? F16_TOL : 1e-6, `${what} dweight`);
  expectClose(got[3], want[3], wdt === 'f16' ? F16_TOL : 1e-6, `${what} dbias`);
}

// shapes of every path: scalar and vec4 planes, one and many channels per group, many invocations per
// plane, an odd number of elements (f16 bindings rounded up to whole words)
const BWD16: [number[], number][] = [
  [[2, 6, 3, 5], 3],
  [[3, 33, 7], 11], // odd element count
  [[1, 8, 4, 4], 8], // one channel per group, vec4
  [[2, 32, 8, 8], 32], // one channel per group
  [[2, 8, 6, 6], 2],
  [[1, 4, 37, 41], 2], // many invocations per plane, scalar path, odd element count
  [[1, 4, 32, 32], 2], // many invocations per plane, vec4 path
];

describe.each(CHUNKS)('groupNorm f16 activations (chunk %s)', (k) => {
  beforeAll(() => setGroupNormChunk(k));
  for (const silu of [false, true])
    it(`forward on odd shapes${silu ? ' with fused SiLU' : ''}`, async (ctx) => {
      if (!rt().features.has('shader-f16')) ctx.skip();
      for (const [s, g] of CASES) await forward16(s, g, silu, 'f32');
      for (const [s, g] of CASES.slice(0, 7)) await forward16(s, g, silu, 'f16');
    });
  it('forward, large mean relative to spread (f32 statistics)', async (ctx) => {
    if (!rt().features.has('shader-f16')) ctx.skip();
    // a mean that f16 cannot hold (its ulp at 300 is 0.25): statistics rounded to f16 would shift y by ~0.1
    await forward16([1, 16, 32, 32], 4, false, 'f32', 300.1);
  });
  for (const silu of [false, true])
    it(`backward${silu ? ' with fused SiLU' : ''}: dx in f16, dweight/dbias in the weight's dtype`, async (ctx) => {
      if (!rt().features.has('shader-f16')) ctx.skip();
      for (const [s, g] of BWD16) await backward16(s, g, silu, 'f32');
      for (const [s, g] of BWD16.slice(0, 3)) await backward16(s, g, silu, 'f16');
    });
});

describe('groupNorm dtypes', () => {
  it('f32 input with f16 weights: dweight and dbias are f16', async (ctx) => {
    if (!rt().features.has('shader-f16')) ctx.skip();
    const shape = [2, 6, 3, 5];
    const n = rprod(shape);
    const [xd, gd] = [rand(n, 6, -2, 2), rand(n, 7)];
    const [wd, bd] = [f16Rounded(rand(6, 4, 0.5, 1.5)), f16Rounded(rand(6, 5, -0.5, 0.5))];
    const h = runBoth(shape, 3, true, 'f32', 'f16', xd, gd, wd, bd);
    const f = runBoth(shape, 3, true, 'f32', 'f32', xd, gd, wd, bd);
    expect(h.map((t) => t.dtype)).toEqual(['f32', 'f32', 'f16', 'f16']);
    const [got, want] = [await Promise.all(h.map((t) => t.data())), await Promise.all(f.map((t) => t.data()))];
    [...h, ...f].forEach((t) => t.dispose());
    expectClose(got[1], want[1], 1e-6, 'dx');
    expectClose(got[2], want[2], F16_TOL, 'dweight (f16)');
    expectClose(got[3], want[3], F16_TOL, 'dbias (f16)');
  });
  // grad() casts a gradient to its tensor's dtype, so the rule itself is called here: its own outputs must
  // already have the right dtypes, and it must refuse a dy of another dtype than y's
  it('the backward rule returns dx in x\'s dtype and dweight/dbias in the weight\'s', (ctx) => {
    if (!rt().features.has('shader-f16')) ctx.skip();
    const shape = [1, 4, 3, 3];
    for (const dt of ['f32', 'f16'] as const)
      for (const wdt of ['f32', 'f16'] as const)
        for (const silu of [false, true])
          tidy(() => {
            const x = Tensor.from(rand(36, 1), shape, dt).requireGrad();
            const w = Tensor.from(rand(4, 2), [4], wdt).requireGrad();
            const b = Tensor.from(rand(4, 3), [4], wdt).requireGrad();
            const y = groupNorm(x, 2, w, b, 1e-5, { silu });
            const gs = noGrad(() => y.node!.backward(Tensor.from(rand(36, 4), shape, dt)));
            expect(gs.map((t) => t?.dtype)).toEqual([dt, wdt, wdt]);
          });
  });
  it('dy must have the dtype of y', (ctx) => {
    if (!rt().features.has('shader-f16')) ctx.skip();
    const shape = [1, 4, 3, 3];
    for (const [dt, gdt] of [
      ['f16', 'f32'],
      ['f32', 'f16'],
    ] as const)
      tidy(() => {
        const x = Tensor.from(rand(36, 1), shape, dt).requireGrad();
        const y = groupNorm(x, 2, Tensor.from(rand(4, 2), [4]), Tensor.from(rand(4, 3), [4]));
        expect(() => noGrad(() => y.node!.backward(Tensor.from(rand(36, 4), shape, gdt)))).toThrow(/dy is .* but x is/);
      });
  });
  it('rejects integer input', () => {
    tidy(() => {
      const x = Tensor.from(new Int32Array(8), [1, 2, 4], 'i32');
      expect(() => groupNorm(x, 1, Tensor.from([1, 1], [2]), Tensor.from([0, 0], [2]))).toThrow(/x must be f32 or f16/);
    });
  });
});

describe.each(CHUNKS)('groupNorm f16 beyond one storage binding (chunk %s)', (k) => {
  beforeAll(() => setGroupNormChunk(k));
  it('splits into windows at aligned offsets (f16 planes: 128-element alignment steps)', async (ctx) => {
    if (!rt().features.has('shader-f16')) ctx.skip();
    for (const [shape, groups, limit, windows] of [
      [[2, 32, 24, 24], 8, 16384, 5], // vec4 path: 2-plane steps of 1152 bytes, windows of 14 planes
      [[2, 160, 15, 15], 2, 65536, 3], // scalar path: 128-plane steps
      [[1, 135, 3, 3], 5, 2304, 2], // scalar path; the last window holds an odd number of elements
    ] as [number[], number, number, number][]) {
      const C = shape[1];
      const n = rprod(shape);
      const [xd, gd] = [f16Rounded(rand(n, 21)), f16Rounded(rand(n, 24))];
      const [wd, bd] = [rand(C, 22, 0.5, 1.5), rand(C, 23)];
      const { want, got, names } = await splitRun(limit, () => runBoth(shape, groups, true, 'f16', 'f32', xd, gd, wd, bd));
      expect(names.filter((m) => m === 'group_norm').length).toBe(windows);
      // the windows change the partials per plane (T), so f32 sums may differ in the last bit, which can
      // flip an f16 rounding: one f16 ulp at most
      ['y', 'dx'].forEach((w, i) => expectClose(got[i], want[i], 2 * F16_TOL, `groupNorm f16 split [${shape}] ${w}`));
      ['dweight', 'dbias'].forEach((w, i) => expectClose(got[i + 2], want[i + 2], 1e-5, `groupNorm f16 split [${shape}] ${w}`));
      const ref = rgroupNorm(rt64(xd, shape), groups, rt64(wd, [C]), rt64(bd, [C]), 1e-5, true);
      expectClose(want[0], ref.data, F16_TOL, `groupNorm f16 [${shape}] vs reference`);
    }
  });
});
