// Group norm (with and without the fused SiLU) against the float64 reference on odd shapes, gradients for
// x, weight and bias against finite differences, f16 weight storage, and the split path for tensors
// larger than one storage binding.
import { afterAll, beforeAll, describe, it } from 'vitest';
import { grad, groupNorm, rt, Tensor, tidy } from '../../engine/index.js';
import { rprod, rt64, type RT } from '../../kernels/core.ref.js';
import { rgroupNorm } from '../../kernels/groupnorm.ref.js';
import { setGroupNormChunk } from '../../kernels/groupnorm.js';
import { checkGrad, expectClose, gpu, rand } from '../helpers/check.js';

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
    const r = rt();
    const saved = r.maxBindingBytes;
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
      const full = run();
      const want = await Promise.all(full.map((t) => t.data()));
      full.forEach((t) => t.dispose());
      try {
        r.maxBindingBytes = limit;
        const split = run();
        const got = await Promise.all(split.map((t) => t.data()));
        split.forEach((t) => t.dispose());
        ['y', 'dx', 'dweight', 'dbias'].forEach((w, i) => expectClose(got[i], want[i], 1e-6, `groupNorm split [${shape}] ${w}`));
      } finally {
        r.maxBindingBytes = saved;
      }
      const ref = rgroupNorm(rt64(xd, shape), groups, rt64(wd, [C]), rt64(bd, [C]), 1e-5, true);
      expectClose(want[0], ref.data, 1e-5, `groupNorm [${shape}] vs reference`);
    }
  });
});
