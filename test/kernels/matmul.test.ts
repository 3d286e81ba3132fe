// matmul: every tiling ('subgroup', 'register', 'shared') against the float64 reference on odd shapes,
// transposes, batches and batch broadcasting, with bias and f16 weights; backward against finite differences.
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AdamW, Tensor, rt, tidy } from '../../engine/index.js';
import {
  matmul,
  matmulRaw,
  linear,
  matmulWeightCacheBytes,
  setMatmulKMajor,
  setMatmulVariant,
  setMatmulWeightCacheBytes,
  matmulVariant,
  type MatmulVariant,
} from '../../kernels/matmul.js';
import * as R from '../../kernels/core.ref.js';
import { checkGrad, dispatchedBy, expectClose, gpu, rand } from '../helpers/check.js';

beforeAll(async () => {
  await gpu();
});
afterEach(() => {
  setMatmulVariant(null);
  setMatmulKMajor('auto');
});

// 'subgroup' twice: its general kernel, and its K-major tile wherever the shape allows (N a multiple of 4,
// on 8-wide subgroups; other shapes and adapters fall back to the general kernel)
const VARIANTS = ['subgroup', 'subgroup k-major', 'register', 'shared'] as const;
type Label = (typeof VARIANTS)[number];
function use(v: Label) {
  setMatmulVariant(v.startsWith('subgroup') ? 'subgroup' : (v as MatmulVariant));
  setMatmulKMajor(v === 'subgroup k-major' ? 'always' : 'never');
}

type Case = [a: number[], b: number[], transA: boolean, transB: boolean];
const tag = ([a, b, ta, tb]: Case) => `[${a}]${ta ? 'ᵀ' : ''} @ [${b}]${tb ? 'ᵀ' : ''}`;

// odd sizes everywhere (every tiling takes any shape), batches and broadcast batches
const FORWARD: Record<string, Case[]> = {
  'A @ B': [
    [[1, 1], [1, 1], false, false],
    [[7, 33], [33, 77], false, false],
    [[77, 36], [36, 20], false, false],
    [[1000, 8], [8, 100], false, false],
    [[33, 1000], [1000, 12], false, false],
    [[3, 17, 36], [36, 44], false, false],
    [[3, 17, 36], [3, 36, 44], false, false],
    [[1, 9, 12], [4, 12, 8], false, false],
  ],
  'A @ Bᵀ': [
    [[9, 13], [77, 13], false, true],
    [[77, 40], [36, 40], false, true],
    [[2, 33, 40], [2, 77, 40], false, true],
    [[5, 64], [1000, 64], false, true],
  ],
  'Aᵀ @ B': [
    [[33, 7], [33, 5], true, false],
    [[36, 44], [36, 20], true, false],
    [[1000, 12], [1000, 36], true, false],
    [[2, 40, 76], [2, 40, 12], true, false],
  ],
  'Aᵀ @ Bᵀ': [
    [[13, 9], [7, 13], true, true],
    [[36, 20], [44, 36], true, true],
    [[3, 12, 8], [3, 77, 12], true, true],
  ],
};

async function checkForward(c: Case, tol = 2e-5) {
  const [a, b, ta, tb] = c;
  const ad = rand(R.rprod(a), 11);
  const bd = rand(R.rprod(b), 12);
  const got = await tidy(() => matmul(Tensor.from(ad, a), Tensor.from(bd, b), { transA: ta, transB: tb })).data();
  const ref = R.rmatmul(R.rt64(ad, a), R.rt64(bd, b), ta, tb);
  expectClose(got, ref.data, tol, `matmul ${matmulVariant()} ${tag(c)}`);
}

describe('matmul forward vs float64 reference', () => {
  for (const v of VARIANTS)
    for (const [group, cases] of Object.entries(FORWARD))
      it(`${v}: ${group} on odd shapes, batches and broadcast batches`, async () => {
        use(v);
        for (const c of cases) await checkForward(c);
      });

  it('subgroup tiling takes odd shapes (no vec4 alignment needed)', async () => {
    use('subgroup');
    const g = rt().gpu;
    const fixed = g.features.has('subgroups') && g.subgroupMinSize === g.subgroupMaxSize;
    for (const c of [
      [[77, 36], [36, 20], false, false],
      [[7, 33], [33, 77], false, false],
      [[3, 33, 7], [5, 33], true, true],
    ] as Parameters<typeof checkForward>[0][]) {
      const used = await dispatchedBy(() => checkForward(c));
      expect(used).toContain(fixed ? 'matmul_subgroup' : 'matmul_register');
    }
  });

  it('K-major tile: used for x @ Wᵀ, dY @ W and Aᵀ @ B where N is a multiple of 4 (8-wide subgroups)', async () => {
    use('subgroup k-major');
    const g = rt().gpu;
    const eight = g.features.has('subgroups') && g.subgroupMinSize === 8 && g.subgroupMaxSize === 8;
    for (const c of [
      [[70, 36], [20, 36], false, true],
      [[2, 70, 36], [36, 20], false, false],
      [[36, 68], [36, 20], true, false],
    ] as Case[]) {
      const used = await dispatchedBy(() => checkForward(c));
      expect(used).toContain(eight ? 'matmul_kmajor' : 'matmul_register');
    }
  });

  it('default tiling per adapter: subgroup or register on CPU adapters, shared on GPUs', () => {
    const v = matmulVariant();
    if (rt().gpu.adapterClass === 'cpu') expect(['subgroup', 'register']).toContain(v);
    else expect(v).toBe('shared');
  });

  const BIAS_SHAPES = [
    [7, 33, 5],
    [77, 36, 20],
    [40, 64, 96],
  ];
  for (const v of VARIANTS)
    it(`${v}: linear with bias over N`, async () => {
      use(v);
      for (const [M, K, N] of BIAS_SHAPES) {
        const x = rand(M * K, 1);
        const w = rand(N * K, 2);
        const bias = rand(N, 3);
        const got = await tidy(() => linear(Tensor.from(x, [M, K]), Tensor.from(w, [N, K]), Tensor.from(bias, [N]))).data();
        const ref = R.rmap([R.rmatmul(R.rt64(x, [M, K]), R.rt64(w, [N, K]), false, true), R.rt64(bias, [N])], (p, q) => p + q);
        expectClose(got, ref.data, 2e-5, `linear ${v} [${M}x${K}] [${N}x${K}]ᵀ + bias`);
      }
    });
  for (const v of VARIANTS)
    for (const tb of [false, true])
      it(`${v}: f16 weights${tb ? ', transposed' : ''}`, async (ctx) => {
        if (!rt().features.has('shader-f16')) return ctx.skip();
        use(v);
        for (const [M, K, N] of BIAS_SHAPES.slice(0, 2)) {
          const x = rand(M * K, 1);
          const wShape = tb ? [N, K] : [K, N];
          const wt = Tensor.from(rand(N * K, 2), wShape, 'f16');
          const w16 = (await wt.data()) as Float32Array; // the f16-rounded weights
          const got = await tidy(() => matmulRaw(Tensor.from(x, [M, K]), wt, { transB: tb })).data();
          wt.dispose();
          const ref = R.rmatmul(R.rt64(x, [M, K]), R.rt64(w16, wShape), false, tb);
          expectClose(got, ref.data, 2e-5, `matmul ${v} f16 weights [${M}x${K}] @ [${wShape}]${tb ? 'ᵀ' : ''}`);
        }
      });
});

describe('matmul backward vs finite differences', () => {
  const cases: Case[] = [
    [[8, 12], [12, 16], false, false],
    [[8, 12], [16, 12], false, true],
    [[12, 8], [12, 16], true, false],
    [[12, 8], [16, 12], true, true],
    [[5, 7], [7, 3], false, false],
    [[7, 5], [3, 7], true, true],
    [[2, 5, 7], [7, 3], false, false],
    [[2, 8, 12], [12, 4], false, false],
    [[2, 5, 7], [2, 3, 7], false, true],
    [[1, 4, 8], [3, 8, 4], false, false],
  ];
  for (const v of VARIANTS)
    it(`${v}: gradients of A and B for every transpose and batch broadcast`, async () => {
      use(v);
      for (const c of cases) {
        const [a, b, ta, tb] = c;
        await checkGrad(
          `matmul ${v} ${tag(c)}`,
          [
            { data: rand(R.rprod(a), 1), shape: a },
            { data: rand(R.rprod(b), 2), shape: b },
          ],
          (x, y) => matmul(x, y, { transA: ta, transB: tb }),
          (x, y) => R.rmatmul(x, y, ta, tb),
        );
      }
    });
});

describe('K-major weight copies (CPU adapters with 8-wide subgroups)', () => {
  // 40 rows: x @ Wᵀ takes the K-major tile only without the per-call weight copy (M N K >= 128 M K, not with
  // N K copied as well), so the kernel names show whether the kept copy was used
  const [M, K, N] = [40, 36, 132];
  const eight = () => {
    const g = rt().gpu;
    return matmulVariant() === 'subgroup' && g.features.has('subgroups') && g.subgroupMinSize === 8 && g.subgroupMaxSize === 8;
  };
  const ref = (x: Float32Array, w: Float32Array) => R.rmatmul(R.rt64(x, [M, K]), R.rt64(w, [N, K]), false, true).data;
  afterEach(() => setMatmulWeightCacheBytes(null));

  /** an input and a frozen weight, with no copies kept from earlier tests */
  const setup = () => {
    rt().releasePool();
    const wData = rand(N * K, 2);
    return { x: Tensor.from(rand(M * K, 1), [M, K]), wData, w: Tensor.from(wData, [N, K]) };
  };

  it('a frozen weight is copied K-major from its second use on, reused, refreshed when it changes in place, freed with it', async (ctx) => {
    if (!eight()) ctx.skip();
    const { x, w, ...rest } = setup();
    let wData = rest.wData;
    const call = async () => {
      let y: Tensor | null = null;
      const names = await dispatchedBy(() => {
        y = linear(x, w);
      });
      expectClose(await y!.data(), ref(await x.data() as Float32Array, wData), 2e-5, `x @ Wᵀ [${M}x${K}] [${N}x${K}]ᵀ`);
      y!.dispose();
      return names;
    };
    // first use: the general kernel, nothing kept
    expect(await call()).toEqual(['matmul_subgroup']);
    expect(matmulWeightCacheBytes()).toBe(0);
    // second use: the copy is made and kept (pooled memory), then the K-major tile (with A's copy only)
    expect(await call()).toEqual(['matmul_transpose', 'matmul_transpose', 'matmul_kmajor']);
    const bytes = 4 * K * N;
    expect(matmulWeightCacheBytes()).toBe(bytes);
    expect(rt().memory().pooledBytes).toBeGreaterThanOrEqual(bytes);
    expect(await call()).toEqual(['matmul_transpose', 'matmul_kmajor']);
    // an in-place update (here an optimizer step) makes the copy stale: dropped, and made again on the second use
    w.requireGrad();
    const opt = new AdamW([w], { lr: 0.1 });
    const g = Tensor.from(rand(N * K, 3), [N, K]);
    opt.step([g]);
    w.requireGrad(false);
    wData = (await w.data()) as Float32Array;
    expect(await call()).toEqual(['matmul_subgroup']);
    expect(matmulWeightCacheBytes()).toBe(0);
    expect(await call()).toEqual(['matmul_transpose', 'matmul_transpose', 'matmul_kmajor']);
    expect(matmulWeightCacheBytes()).toBe(bytes);
    // releasePool frees the copies; disposing the weight frees its copy
    rt().releasePool();
    expect(matmulWeightCacheBytes()).toBe(0);
    await call();
    await call();
    expect(matmulWeightCacheBytes()).toBe(bytes);
    w.dispose();
    expect(matmulWeightCacheBytes()).toBe(0);
    [x, g].forEach((t) => t.dispose());
  });

  it('no copies for weights that require gradients, past the cap, with the cache off, or in f16', async (ctx) => {
    if (!eight()) ctx.skip();
    const { x, w, wData } = setup();
    const twice = async () => {
      for (let i = 0; i < 2; i++) {
        const y = linear(x, w);
        expectClose(await y.data(), ref(await x.data() as Float32Array, wData), 2e-5, 'x @ Wᵀ');
        y.dispose();
      }
    };
    w.requireGrad();
    await twice();
    expect(matmulWeightCacheBytes()).toBe(0);
    w.requireGrad(false);
    setMatmulWeightCacheBytes(4 * K * N - 1);
    await twice();
    expect(matmulWeightCacheBytes()).toBe(0);
    setMatmulWeightCacheBytes(0);
    await twice();
    expect(matmulWeightCacheBytes()).toBe(0);
    setMatmulWeightCacheBytes(null);
    // f16 weights (chosen to save memory) get no f32 copies
    if (rt().features.has('shader-f16')) {
      const w16 = Tensor.from(wData, [N, K], 'f16');
      for (let i = 0; i < 2; i++) linear(x, w16).dispose();
      await rt().sync();
      expect(matmulWeightCacheBytes()).toBe(0);
      w16.dispose();
    }
    [x, w].forEach((t) => t.dispose());
  });
});
