// matmul: every tiling ('subgroup', 'register', 'shared') against the float64 reference on odd shapes,
// transposes, batches and batch broadcasting, with bias and f16 weights; backward against finite differences.
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AdamW, Tensor, grad, rt, tidy } from '../../engine/index.js';
import {
  matmul,
  matmulRaw,
  linear,
  matmulWeightCacheBytes,
  setMatmulKMajor,
  setMatmulSharedTuning,
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
  setMatmulSharedTuning(null);
});

// 'subgroup' twice: its general kernel, and its K-major tile wherever the shape allows (N a multiple of 4,
// on 8-wide subgroups; other shapes and adapters fall back to the general kernel); 'shared' twice: as by
// default, and with both of its options (coalesced tile loads, K split into 3 slices wherever K > 16, so odd
// slice lengths and a short last slice)
const VARIANTS = ['subgroup', 'subgroup k-major', 'register', 'shared', 'shared tuned'] as const;
type Label = (typeof VARIANTS)[number];
function use(v: Label) {
  setMatmulVariant(v.startsWith('subgroup') ? 'subgroup' : v.startsWith('shared') ? 'shared' : (v as MatmulVariant));
  setMatmulKMajor(v === 'subgroup k-major' ? 'always' : 'never');
  setMatmulSharedTuning(v === 'shared tuned' ? { coalesced: true, splitK: 3 } : null);
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

  it("'shared' split-K: forced slices, and 'auto' only for few output tiles over a long K", async () => {
    setMatmulVariant('shared');
    setMatmulSharedTuning({ splitK: 3 });
    expect(await dispatchedBy(() => checkForward([[33, 100], [100, 12], false, false]))).toEqual(expect.arrayContaining(['matmul_shared_split', 'matmul_split_sum']));
    // K within one step: nothing to split
    expect(await dispatchedBy(() => checkForward([[33, 16], [16, 12], false, false]))).toEqual(['matmul_shared']);
    setMatmulSharedTuning({ splitK: 'auto', coalesced: true });
    // one output tile over K = 2048: 8 slices of 256
    expect(await dispatchedBy(() => checkForward([[2048, 64], [2048, 64], true, false], 5e-5))).toEqual(['matmul_shared_split', 'matmul_split_sum']);
    // K below 1024: one pass
    expect(await dispatchedBy(() => checkForward([[1000, 64], [1000, 36], true, false], 5e-5))).toEqual(['matmul_shared']);
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

// ---- f16 activations: A (and the output, and its gradient) f16, B f32 or f16, arithmetic f32 ----
// Tolerance: the inputs the references see are the f16-rounded ones (read back from the f16 tensors), and the
// sums are f32, so what remains is the rounding of each output to f16: at most 2^-11 (4.9e-4) of its value,
// hence of max|ref|; 1e-3 leaves a factor 2 for the f32 sums.
const F16_TOL = 1e-3;
const hasF16 = () => rt().features.has('shader-f16');
const tf = (d: Float32Array, s: number[], dt: 'f32' | 'f16') => Tensor.from(d, s, dt);
/** an f16 (or f32) tensor of seeded data, and the values it holds (f16-rounded) */
async function input(shape: number[], seed: number, dt: 'f32' | 'f16', lo = -1, hi = 1) {
  const t = tf(rand(R.rprod(shape), seed, lo, hi), shape, dt);
  return { t, v: (await t.data()) as Float32Array };
}

// [A, B, transA, transB, B's dtype]: the shapes of FORWARD (odd sizes, 33x77x9 among them, batches and broadcast
// batches) with B f32 (a weight) or f16; those with N a multiple of 4 take the K-major tile under 'always'
type Case16 = [...Case, 'f32' | 'f16'];
const FORWARD16: Record<string, Case16[]> = {
  'A @ B': [
    [[7, 33], [33, 77], false, false, 'f32'],
    [[33, 77], [77, 9], false, false, 'f16'],
    [[3, 17, 36], [36, 44], false, false, 'f32'],
    [[1, 9, 12], [4, 12, 8], false, false, 'f16'],
  ],
  'A @ Bᵀ': [
    [[9, 13], [77, 13], false, true, 'f32'],
    [[77, 40], [36, 40], false, true, 'f16'],
    [[2, 33, 40], [2, 77, 40], false, true, 'f32'],
  ],
  'Aᵀ @ B': [
    [[33, 7], [33, 5], true, false, 'f32'],
    [[36, 44], [36, 20], true, false, 'f16'],
    [[2, 40, 76], [2, 40, 12], true, false, 'f32'],
  ],
  'Aᵀ @ Bᵀ': [
    [[13, 9], [7, 13], true, true, 'f16'],
    [[3, 12, 8], [3, 77, 12], true, true, 'f32'],
  ],
};

async function checkForward16(c: Case16) {
  const [as, bs, ta, tb, bdt] = c;
  const a = await input(as, 11, 'f16');
  const b = await input(bs, 12, bdt);
  const y = matmul(a.t, b.t, { transA: ta, transB: tb });
  expect(y.dtype).toBe('f16');
  const got = await y.data();
  [a.t, b.t, y].forEach((t) => t.dispose());
  const ref = R.rmatmul(R.rt64(a.v, as), R.rt64(b.v, bs), ta, tb);
  expectClose(got, ref.data, F16_TOL, `matmul ${matmulVariant()} f16 A ${tag([as, bs, ta, tb])}, ${bdt} B`);
}

// CI runs the f16 cases on the tilings lavapipe takes ('subgroup', 'subgroup k-major': a cold shader cache
// compiles each f16 kernel anew, and the workgroup-memory tilings take 30-80 s each there); local runs take all
const VARIANTS16 = process.env.CI ? VARIANTS.filter((v) => v.startsWith('subgroup')) : VARIANTS;

describe('matmul with f16 activations', () => {
  for (const v of VARIANTS16)
    for (const [group, cases] of Object.entries(FORWARD16))
      it(`${v}: f16 A, ${group}: f16 output on odd shapes and batches, B f32 or f16`, async (ctx) => {
        if (!hasF16()) return ctx.skip();
        use(v);
        for (const c of cases) await checkForward16(c);
      });

  it('K-major tile with f16 A: copied K-major (A @ B, A @ Bᵀ) or read as stored (Aᵀ @ B), B f16 read as stored', async (ctx) => {
    if (!hasF16()) return ctx.skip();
    use('subgroup k-major');
    const g = rt().gpu;
    const eight = g.features.has('subgroups') && g.subgroupMinSize === 8 && g.subgroupMaxSize === 8;
    for (const c of [
      [[3, 17, 36], [36, 44], false, false, 'f32'],
      [[2, 17, 36], [36, 44], false, false, 'f16'],
      [[77, 40], [36, 40], false, true, 'f16'],
      [[36, 44], [36, 20], true, false, 'f32'],
      [[2, 40, 76], [2, 40, 12], true, false, 'f16'],
    ] as Case16[]) {
      const used = await dispatchedBy(() => checkForward16(c));
      expect(used).toContain(eight ? 'matmul_kmajor' : 'matmul_register');
    }
  });

  for (const v of VARIANTS16)
    it(`${v}: linear on f16 x with bias, f32 or f16 weights`, async (ctx) => {
      if (!hasF16()) return ctx.skip();
      use(v);
      for (const [M, K, N] of [
        [7, 33, 5],
        [77, 36, 20],
      ])
        for (const wdt of ['f32', 'f16'] as const) {
          const x = await input([M, K], 1, 'f16');
          const w = await input([N, K], 2, wdt);
          const bias = rand(N, 3);
          const bt = Tensor.from(bias, [N]);
          const y = linear(x.t, w.t, bt);
          expect(y.dtype).toBe('f16');
          const got = await y.data();
          [x.t, w.t, bt, y].forEach((t) => t.dispose());
          const ref = R.rmap([R.rmatmul(R.rt64(x.v, [M, K]), R.rt64(w.v, [N, K]), false, true), R.rt64(bias, [N])], (p, q) => p + q);
          expectClose(got, ref.data, F16_TOL, `linear ${v} f16 x [${M}x${K}] ${wdt} [${N}x${K}]ᵀ + bias`);
        }
    });

  it('an f32 activation with f16 weights stays f32; A must be a float tensor, the bias f32', async (ctx) => {
    if (!hasF16()) return ctx.skip();
    const a = Tensor.from(rand(6, 1), [2, 3]);
    const w = Tensor.from(rand(12, 2), [3, 4], 'f16');
    expect(matmul(a, w).dtype).toBe('f32');
    const a16 = Tensor.from(rand(6, 1), [2, 3], 'f16');
    expect(() => matmul(Tensor.from([1, 2, 3, 4, 5, 6], [2, 3], 'i32'), w)).toThrow(/A must be f32 or f16/);
    expect(() => matmul(a16, w, { bias: Tensor.from(rand(4, 3), [4], 'f16') })).toThrow(/bias must be f32/);
  });
});

/** float64 gradients of L = sum(matmul(a, b, ta, tb) * g) w.r.t. a and b (summed over broadcast batches) */
function refGrads(a: R.RT, b: R.RT, g: R.RT, ta: boolean, tb: boolean) {
  const fold = (x: R.RT, shape: number[]) => {
    const n = R.rprod(shape);
    const data = new Float64Array(n);
    for (let i = 0; i < x.data.length; i++) data[i % n] += x.data[i];
    return { shape, data };
  };
  const da = ta ? R.rmatmul(b, g, tb, true) : R.rmatmul(g, b, false, !tb);
  const db = tb ? R.rmatmul(g, a, true, ta) : R.rmatmul(a, g, !ta, false);
  return { da: fold(da, a.shape), db: fold(db, b.shape) };
}

describe('matmul backward with f16 activations', () => {
  // [A, B, transA, transB, B's dtype (B requires grad)]: every transpose, batches, A broadcast over B's batch,
  // B shared by A's batch (folded into one GEMM, or summed over the batch when A is transposed)
  const cases: Case16[] = [
    [[8, 12], [12, 16], false, false, 'f16'],
    [[8, 12], [16, 12], false, true, 'f32'],
    [[12, 8], [12, 16], true, false, 'f32'],
    [[12, 8], [16, 12], true, true, 'f16'],
    [[5, 7], [7, 3], false, false, 'f32'],
    [[2, 5, 7], [7, 3], false, false, 'f16'],
    [[2, 8, 12], [12, 4], false, false, 'f32'],
    [[2, 7, 5], [7, 3], true, false, 'f16'],
    [[2, 5, 7], [2, 3, 7], false, true, 'f16'],
    [[1, 4, 8], [3, 8, 4], false, false, 'f16'],
    [[1, 4, 8], [3, 8, 4], false, false, 'f32'],
  ];
  for (const v of VARIANTS16)
    it(`${v}: dA f16, dB in B's dtype, for every transpose and batch broadcast`, async (ctx) => {
      if (!hasF16()) return ctx.skip();
      use(v);
      for (const c of cases) {
        const [as, bs, ta, tb, bdt] = c;
        const a = await input(as, 1, 'f16');
        const b = await input(bs, 2, bdt);
        a.t.requireGrad();
        b.t.requireGrad();
        let gs: Tensor[] = [];
        let gv: Float32Array | null = null;
        // the rule returns each gradient in its tensor's dtype itself: no casts by the engine
        const used = await dispatchedBy(async () => {
          const y = matmul(a.t, b.t, { transA: ta, transB: tb });
          expect(y.dtype).toBe('f16');
          const g = await input([...y.shape], 3, 'f16');
          gv = g.v;
          gs = grad(y, [a.t, b.t], g.t);
          [y, g.t].forEach((t) => t.dispose());
        });
        expect(used).not.toContain('cast');
        const [ga, gb] = gs;
        expect(ga.dtype).toBe('f16');
        expect(gb.dtype).toBe(bdt);
        const yShape = R.rmatmul(R.rt64(a.v, as), R.rt64(b.v, bs), ta, tb).shape;
        const ref = refGrads(R.rt64(a.v, as), R.rt64(b.v, bs), R.rt64(gv!, yShape), ta, tb);
        const what = `matmul backward ${v} f16 A ${tag([as, bs, ta, tb])} ${bdt} B`;
        expectClose(await ga.data(), ref.da.data, F16_TOL, `${what}: dA`);
        expectClose(await gb.data(), ref.db.data, F16_TOL, `${what}: dB`);
        [a.t, b.t, ...gs].forEach((t) => t.dispose());
      }
    });

  it('linear on f16 x: dBias f32 (summed in f32 from the f16 dY), dW in the weight dtype', async (ctx) => {
    if (!hasF16()) return ctx.skip();
    const [M, K, N] = [37, 20, 9];
    for (const wdt of ['f32', 'f16'] as const) {
      const x = await input([M, K], 1, 'f16');
      const w = await input([N, K], 2, wdt);
      const bias = Tensor.from(rand(N, 3), [N]);
      [x.t, w.t, bias].forEach((t) => t.requireGrad());
      const g = await input([M, N], 4, 'f16');
      let gs: Tensor[] = [];
      const used = await dispatchedBy(() => {
        const y = linear(x.t, w.t, bias);
        gs = grad(y, [x.t, w.t, bias], g.t);
        y.dispose();
      });
      expect(used).not.toContain('cast');
      expect(gs.map((t) => t.dtype)).toEqual(['f16', wdt, 'f32']);
      const ref = refGrads(R.rt64(x.v, [M, K]), R.rt64(w.v, [N, K]), R.rt64(g.v, [M, N]), false, true);
      const db = new Float64Array(N);
      for (let i = 0; i < M * N; i++) db[i % N] += g.v[i];
      expectClose(await gs[0].data(), ref.da.data, F16_TOL, `linear f16 x, ${wdt} W: dx`);
      expectClose(await gs[1].data(), ref.db.data, F16_TOL, `linear f16 x, ${wdt} W: dW`);
      // f32 sums of the same f16 values: only the summation order differs
      expectClose(await gs[2].data(), db, 1e-5, `linear f16 x, ${wdt} W: dBias`);
      [x.t, w.t, bias, g.t, ...gs].forEach((t) => t.dispose());
    }
  });
});

describe('K-major weight copies with f16 activations (CPU adapters with 8-wide subgroups)', () => {
  it('an f16 x uses the kept copy of a frozen f32 weight like an f32 x', async (ctx) => {
    const g = rt().gpu;
    if (!hasF16() || !(matmulVariant() === 'subgroup' && g.features.has('subgroups') && g.subgroupMinSize === 8 && g.subgroupMaxSize === 8))
      return ctx.skip();
    // the shape of the f32 cache test: the K-major tile only without a per-call weight copy
    const [M, K, N] = [40, 36, 132];
    rt().releasePool();
    const x = await input([M, K], 1, 'f16');
    const w = await input([N, K], 2, 'f32');
    const ref = R.rmatmul(R.rt64(x.v, [M, K]), R.rt64(w.v, [N, K]), false, true).data;
    const call = async () => {
      let y: Tensor | null = null;
      const names = await dispatchedBy(() => {
        y = linear(x.t, w.t);
      });
      expect(y!.dtype).toBe('f16');
      expectClose(await y!.data(), ref, F16_TOL, `f16 x @ Wᵀ [${M}x${K}] [${N}x${K}]ᵀ`);
      y!.dispose();
      return names;
    };
    expect(await call()).toEqual(['matmul_subgroup']);
    expect(await call()).toEqual(['matmul_transpose', 'matmul_transpose', 'matmul_kmajor']);
    expect(matmulWeightCacheBytes()).toBe(4 * K * N);
    expect(await call()).toEqual(['matmul_transpose', 'matmul_kmajor']);
    [x.t, w.t].forEach((t) => t.dispose());
    expect(matmulWeightCacheBytes()).toBe(0);
  });
});
