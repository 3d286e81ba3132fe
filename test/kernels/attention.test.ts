// Fused attention: forward (output and row logsumexp) against the float64 reference on odd sequence lengths,
// cross-attention, causal masking, several batches / heads / head dims; gradients against finite differences
// (checkGrad) and against the analytic float64 gradients on larger shapes; every kernel variant the adapter
// can run (the shared-tile variant included: lavapipe runs a workgroup's invocations in sequence, so a
// missing barrier shows up here); f16 storage of the inputs, output and gradients on every variant and row
// path (buffers, textures filled by the queue or by the copy kernel) and on the unfused path; extra memory
// linear in the sequence length.
// Pipelines are specialised per head dim, so the cases reuse a few head dims to bound compile time.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShapeError, Tensor, grad, rt, tidy } from '../../engine/index.js';
import {
  attention,
  attentionBackward,
  attentionForward,
  attentionVariants,
  MAX_FUSED_HEAD_DIM,
  setAttentionTextureCacheBytes,
  setAttentionTextureLoads,
  setAttentionVariant,
  type AttentionVariant,
} from '../../kernels/attention.js';
import { rattention, rattentionBackward, rattentionFull } from '../../kernels/attention.ref.js';
import { rt64 } from '../../kernels/core.ref.js';
import { checkGrad, dispatchedBy, expectClose, gpu, rand } from '../helpers/check.js';

const LONG = 900_000; // first runs compile D-specialised pipelines, slow on a CPU adapter

let variants: AttentionVariant[] = ['subgroup', 'register', 'shared'];
beforeAll(async () => {
  await gpu();
  variants = attentionVariants();
});
afterAll(() => setAttentionVariant(null));

interface Case {
  B: number;
  H: number;
  Sq: number;
  Sk: number;
  D: number;
  Dv?: number;
  causal?: boolean;
  scale?: number;
}
const name = (c: Case) =>
  `B=${c.B} H=${c.H} Sq=${c.Sq} Sk=${c.Sk} D=${c.D}${c.Dv && c.Dv !== c.D ? ` Dv=${c.Dv}` : ''}${c.causal ? ' causal' : ''}${c.scale ? ` scale=${c.scale}` : ''}`;
const optsOf = (c: Case) => ({ heads: c.H, causal: c.causal, scale: c.scale });

function inputs(c: Case, seed = 1) {
  const Dv = c.Dv ?? c.D;
  return [
    { data: rand(c.B * c.Sq * c.H * c.D, seed, -1.5, 1.5), shape: [c.B, c.Sq, c.H * c.D] },
    { data: rand(c.B * c.Sk * c.H * c.D, seed + 1, -1.5, 1.5), shape: [c.B, c.Sk, c.H * c.D] },
    { data: rand(c.B * c.Sk * c.H * Dv, seed + 2), shape: [c.B, c.Sk, c.H * Dv] },
  ];
}
const refs = (xs: { data: Float32Array; shape: number[] }[]) => xs.map((x) => rt64(x.data, x.shape)) as [ReturnType<typeof rt64>, ReturnType<typeof rt64>, ReturnType<typeof rt64>];

async function checkForward(variant: string, c: Case) {
  const xs = inputs(c);
  const [out, lse] = tidy(() => {
    const r = attentionForward(...(xs.map((x) => Tensor.from(x.data, x.shape)) as [Tensor, Tensor, Tensor]), optsOf(c));
    return [r.out, r.lse];
  });
  const ref = rattentionFull(...refs(xs), optsOf(c));
  expectClose(await out.data(), ref.out.data, 1e-4, `attention ${variant} forward ${name(c)}`);
  expectClose(await lse.data(), ref.lse.data, 1e-4, `attention ${variant} logsumexp ${name(c)}`);
  out.dispose();
  lse.dispose();
}

/** all three gradients against the analytic float64 gradients, for a random output gradient */
async function checkBackward(variant: string, c: Case) {
  const xs = inputs(c, 3);
  const Dv = c.Dv ?? c.D;
  const g = rand(c.B * c.Sq * c.H * Dv, 17);
  const gs = tidy(() => {
    const ts = xs.map((x) => Tensor.from(x.data, x.shape).requireGrad());
    const y = attention(ts[0], ts[1], ts[2], optsOf(c));
    return grad(y, ts, Tensor.from(g, y.shape));
  });
  const ref = rattentionBackward(...refs(xs), rt64(g, [c.B, c.Sq, c.H * Dv]), optsOf(c));
  for (let i = 0; i < 3; i++) {
    expectClose(await gs[i].data(), ref[i].data, 2e-4, `attention ${variant} d${'qkv'[i]} ${name(c)}`);
    gs[i].dispose();
  }
}

// CI machines start with an empty shader cache, and the head-dim-specialised shaders take tens of seconds
// each to compile on lavapipe the first time; there (CI=true) the cases are cut to head dims <= 8 for every
// variant. Without CI the whole matrix runs.
const small = (c: Case) => !process.env.CI || (c.D <= 8 && (c.Dv ?? c.D) <= 16);

// head dims 4, 8, 40, 64 throughout; 16, 32, 80, 160 once each
const FORWARD_CASES_ALL: Case[][] = [
  [
    { B: 1, H: 1, Sq: 1, Sk: 1, D: 4 },
    { B: 1, H: 2, Sq: 7, Sk: 7, D: 8 },
    { B: 3, H: 2, Sq: 100, Sk: 100, D: 8 },
    { B: 2, H: 2, Sq: 33, Sk: 20, D: 8, Dv: 16 },
    { B: 1, H: 3, Sq: 65, Sk: 130, D: 8, scale: 0.5 },
  ],
  [
    { B: 2, H: 3, Sq: 33, Sk: 33, D: 40 },
    { B: 1, H: 8, Sq: 100, Sk: 77, D: 40 }, // cross-attention
    { B: 1, H: 2, Sq: 7, Sk: 100, D: 40 },
  ],
  [
    { B: 1, H: 2, Sq: 77, Sk: 77, D: 64, causal: true }, // CLIP text
    { B: 3, H: 5, Sq: 33, Sk: 33, D: 8, causal: true },
    { B: 1, H: 1, Sq: 100, Sk: 33, D: 4, causal: true }, // more queries than keys
    { B: 1, H: 1, Sq: 20, Sk: 50, D: 4, causal: true }, // fewer queries than keys
  ],
  [
    { B: 2, H: 4, Sq: 33, Sk: 7, D: 16 },
    { B: 1, H: 1, Sq: 33, Sk: 77, D: 32 },
    { B: 1, H: 2, Sq: 33, Sk: 70, D: 80 },
    { B: 1, H: 1, Sq: 33, Sk: 77, D: 160 },
  ],
];

const FORWARD_CASES = FORWARD_CASES_ALL.map((g) => g.filter(small)).filter((g) => g.length);

const GRAD_CASES_ALL: Case[] = [
  { B: 1, H: 2, Sq: 7, Sk: 7, D: 8 },
  { B: 2, H: 1, Sq: 33, Sk: 7, D: 4 },
  { B: 3, H: 2, Sq: 9, Sk: 9, D: 8, causal: true },
  { B: 1, H: 2, Sq: 5, Sk: 77, D: 40 },
];

const GRAD_CASES = GRAD_CASES_ALL.filter(small);

const BACKWARD_CASES_ALL: Case[] = [
  { B: 2, H: 3, Sq: 100, Sk: 77, D: 8 },
  { B: 1, H: 1, Sq: 77, Sk: 77, D: 4, causal: true },
  { B: 3, H: 2, Sq: 33, Sk: 100, D: 4, Dv: 8 },
  { B: 1, H: 8, Sq: 100, Sk: 77, D: 40 },
  { B: 1, H: 2, Sq: 77, Sk: 77, D: 64, causal: true },
];
const BACKWARD_CASES = BACKWARD_CASES_ALL.filter(small);

// ---- f16 storage ----
// q, k, v, the output and the gradients in f16, arithmetic in f32. The reference runs on the f16-rounded
// inputs (read back from the f16 tensors) and output gradient, so the errors left are the f16 roundings of
// what the kernels store:
//  - forward output: half an ulp, 2^-11 = 4.9e-4 relative to each value, at most that normalized by the
//    largest value: tolerance 1e-3. The logsumexp stays f32 (1e-4, as for f32 inputs).
//  - gradients: their own rounding (4.9e-4) plus that of the saved f16 output, which enters the backward
//    through D = rowsum(dO * O) and then ds = p * (dp - D), a difference of similar terms: measured up to
//    4e-4 on these cases (the output up to 4e-4 too); tolerance 1.5e-3.
// (With the output stored through an f32 binding, the forward check fails at once.)
const F16_TOL = 1e-3;
const F16_GRAD_TOL = 1.5e-3;
const hasF16 = () => rt().features.has('shader-f16');

/** f16 tensors of `xs` and the (f16-rounded) values they hold */
async function f16Tensors(xs: { data: Float32Array; shape: number[] }[]) {
  const ts = xs.map((x) => Tensor.from(x.data, x.shape, 'f16'));
  const rounded = await Promise.all(ts.map(async (t, i) => ({ data: (await t.data()) as Float32Array, shape: xs[i].shape })));
  return { ts, rounded };
}

/**
 * f16 inputs: the output (f16) and logsumexp (f32) against the float64 forward, and all three gradients (f16,
 * from an f16 output gradient) against the analytic float64 gradients, on the rounded values.
 */
async function checkF16(label: string, c: Case, wrt: [boolean, boolean, boolean] = [true, true, true], tol = F16_TOL, gradTol = F16_GRAD_TOL) {
  const Dv = c.Dv ?? c.D;
  const { ts, rounded } = await f16Tensors(inputs(c, 3));
  const { ts: [g], rounded: [gr] } = await f16Tensors([{ data: rand(c.B * c.Sq * c.H * Dv, 17), shape: [c.B, c.Sq, c.H * Dv] }]);
  const which = ts.filter((_, i) => wrt[i]);
  // the logsumexp from attentionForward, where the fused kernels take the head dims
  const fused = Math.max(c.D, Dv) <= MAX_FUSED_HEAD_DIM;
  const [out, lse, ...gs] = tidy(() => {
    const f = fused ? attentionForward(ts[0], ts[1], ts[2], optsOf(c)) : null;
    which.forEach((t) => t.requireGrad());
    const y = attention(ts[0], ts[1], ts[2], optsOf(c));
    return [y, f?.lse ?? y, ...grad(y, which, g)];
  });
  expect(out.dtype).toBe('f16');
  const ref = rattentionFull(...refs(rounded), optsOf(c));
  expectClose(await out.data(), ref.out.data, tol, `attention f16 ${label} forward ${name(c)}`);
  if (fused) {
    expect(lse.dtype).toBe('f32');
    expectClose(await lse.data(), ref.lse.data, 1e-4, `attention f16 ${label} logsumexp ${name(c)}`);
  }
  const refG = rattentionBackward(...refs(rounded), rt64(gr.data, gr.shape), optsOf(c)).filter((_, i) => wrt[i]);
  for (const [i, dx] of gs.entries()) {
    expect(dx.dtype).toBe('f16');
    expectClose(await dx.data(), refG[i].data, gradTol, `attention f16 ${label} d${'qkv'[wrt.indexOf(true) + i]} ${name(c)}`);
  }
  new Set([out, lse, ...gs, ...ts, g]).forEach((t) => t.dispose());
}

// self- and cross-attention, odd lengths, Dv != D, causal with more keys than queries; H * D = 128 (its f16
// rows are 256 bytes: copied into textures by the queue, the others by the copy kernel); head dims 40 and 64
// outside CI
const F16_CASES_ALL: Case[] = [
  { B: 2, H: 2, Sq: 33, Sk: 20, D: 8, Dv: 16 },
  { B: 1, H: 1, Sq: 20, Sk: 50, D: 4, causal: true },
  { B: 2, H: 16, Sq: 9, Sk: 9, D: 8 },
  { B: 1, H: 8, Sq: 100, Sk: 77, D: 40 },
  { B: 1, H: 2, Sq: 77, Sk: 77, D: 64, causal: true },
];
const F16_CASES = F16_CASES_ALL.filter(small);


// the subgroup variant twice: rows read from textures (its default where WGSL has read-only storage
// textures) and from the storage buffers
const RUNS: { variant: AttentionVariant; textures: boolean; label: string }[] = [
  { variant: 'subgroup', textures: true, label: 'subgroup' },
  { variant: 'subgroup', textures: false, label: 'subgroup, rows from buffers' },
  { variant: 'register', textures: true, label: 'register' },
  { variant: 'shared', textures: true, label: 'shared' },
];
for (const { variant, textures, label } of RUNS) {
  describe(`attention (${label} variant)`, () => {
    beforeAll(() => {
      setAttentionVariant(variant);
      setAttentionTextureLoads(textures);
    });
    afterAll(() => {
      setAttentionVariant(null);
      setAttentionTextureLoads(true);
    });
    const skip = () => !variants.includes(variant);

    FORWARD_CASES.forEach((cases, n) => {
      it(`forward matches the float64 reference (${cases.map(name).join('; ')})`, async () => {
        if (skip()) return;
        for (const c of cases) await checkForward(label, c);
      }, LONG);
    });

    it('gradients match finite differences', async () => {
      if (skip()) return;
      for (const c of GRAD_CASES)
        await checkGrad(
          `attention ${label} ${name(c)}`,
          inputs(c, 5),
          (q, k, v) => attention(q, k, v, optsOf(c)),
          (q, k, v) => rattention(q, k, v, optsOf(c)),
        );
    }, LONG);

    it('gradients match the analytic float64 gradients on odd lengths', async () => {
      if (skip()) return;
      for (const c of BACKWARD_CASES) await checkBackward(label, c);
    }, LONG);

    it('f16 storage: output and gradients in f16 match the float64 reference on the rounded inputs', async (ctx) => {
      if (skip()) return;
      if (!hasF16()) ctx.skip();
      for (const c of F16_CASES) await checkF16(label, c);
    }, LONG);
  });
}

describe('attention', () => {
  it('head dims above the fused kernels\' limit (the VAE\'s single 512-wide head) take the unfused path, forward and gradients', async () => {
    for (const c of [
      { B: 2, H: 1, Sq: 13, Sk: 13, D: 168 },
      { B: 1, H: 2, Sq: 9, Sk: 5, D: 164, Dv: 8, causal: true },
    ] as Case[]) {
      const xs = inputs(c, 3);
      const out = tidy(() => attention(...(xs.map((x) => Tensor.from(x.data, x.shape)) as [Tensor, Tensor, Tensor]), optsOf(c)));
      expectClose(await out.data(), rattention(...refs(xs), optsOf(c)).data, 1e-4, `unfused attention ${name(c)}`);
      out.dispose();
      await checkGrad(`unfused attention ${name(c)}`, inputs(c, 7), (q, k, v) => attention(q, k, v, optsOf(c)), (q, k, v) => rattention(q, k, v, optsOf(c)));
    }
  }, LONG);

  it('head dims above the fused limit take the unfused path in f16 too (f16 scores and probabilities)', async (ctx) => {
    if (!hasF16()) ctx.skip();
    // the unscaled scores and the probabilities are stored in f16 too: a score s rounded by up to |s| * 2^-11
    // changes its probability by |s| * scale * 2^-11 relative (|s| * scale <= 2 on these inputs), on top of the
    // output's own rounding; measured up to 6e-4 (output) and 7e-4 (gradients): tolerances 2x the fused path's
    for (const c of [
      { B: 2, H: 1, Sq: 13, Sk: 13, D: 168 },
      { B: 1, H: 2, Sq: 9, Sk: 5, D: 164, Dv: 8, causal: true },
    ] as Case[])
      await checkF16('unfused', c, [true, true, true], 2 * F16_TOL, 2 * F16_GRAD_TOL);
  }, LONG);

  it('f16 storage: the subgroup kernels read rows from rgba16float textures, copied by the queue where a row is 256 bytes (H * D a multiple of 128), else by the copy kernel', async (ctx) => {
    if (!variants.includes('subgroup')) return;
    if (!hasF16()) ctx.skip();
    const texRows = !rt().gpu.compat && rt().gpu.wgslFeatures.has('readonly_and_readwrite_storage_textures');
    const run = async (c: Case, wrt?: [boolean, boolean, boolean]) => {
      const names = await dispatchedBy(() => checkF16('subgroup', c, wrt));
      return { kernels: names.filter((n) => /^attention_(fwd|dq|dkv|prep)/.test(n)), copies: names.filter((n) => n === 'attention_rows_to_texture').length };
    };
    setAttentionVariant('subgroup');
    try {
      // H * D = 64: rows of 128 bytes in f16 (the queue copies them in f32), so the copy kernel fills the textures:
      // K and V for each forward (attentionForward, then attention) and for dQ, Q and dO for dQ and dK/dV
      const c64: Case = { B: 2, H: 8, Sq: 9, Sk: 7, D: 8 };
      const full = await run(c64);
      if (!texRows) {
        expect(full).toEqual({ kernels: ['attention_fwd_subgroup', 'attention_fwd_subgroup', 'attention_dq_subgroup_prep', 'attention_dkv_subgroup'], copies: 0 });
        return;
      }
      // the dQ kernel computes the rows' (lse, D) itself ('_prep'), so no prep pass runs before it
      expect(full).toEqual({ kernels: ['attention_fwd_subgroup_tex', 'attention_fwd_subgroup_tex', 'attention_dq_subgroup_texq_prep', 'attention_dkv_subgroup_tex'], copies: 8 });
      // dQ alone: its own rows from the buffers (no textures of Q and dO are made for it)
      expect(await run(c64, [true, false, false])).toEqual({ kernels: ['attention_fwd_subgroup_tex', 'attention_fwd_subgroup_tex', 'attention_dq_subgroup_tex_prep'], copies: 6 });
      // dV alone: the prep pass and the dK/dV kernel
      expect(await run(c64, [false, false, true])).toEqual({ kernels: ['attention_fwd_subgroup_tex', 'attention_fwd_subgroup_tex', 'attention_prep', 'attention_dkv_subgroup_tex'], copies: 6 });
      // H * D = 128: rows of 256 bytes, copied by the queue; the forward and dQ read their own rows from textures
      const c128: Case = { B: 2, H: 16, Sq: 9, Sk: 7, D: 8 };
      expect(await run(c128)).toEqual({ kernels: ['attention_fwd_subgroup_texq', 'attention_fwd_subgroup_texq', 'attention_dq_subgroup_texq_prep', 'attention_dkv_subgroup_tex'], copies: 0 });
      expect(await run(c128, [true, false, false])).toEqual({ kernels: ['attention_fwd_subgroup_texq', 'attention_fwd_subgroup_texq', 'attention_dq_subgroup_texq_prep'], copies: 0 });
    } finally {
      setAttentionVariant(null);
    }
  }, LONG);

  it('f16 storage: q, k, v share one dtype; the output gradient has the output\'s', async (ctx) => {
    if (!hasF16()) ctx.skip();
    const c: Case = { B: 1, H: 2, Sq: 7, Sk: 5, D: 8 };
    const [xq, xk, xv] = inputs(c);
    const q16 = Tensor.from(xq.data, xq.shape, 'f16');
    const k16 = Tensor.from(xk.data, xk.shape, 'f16');
    const v16 = Tensor.from(xv.data, xv.shape, 'f16');
    const k32 = Tensor.from(xk.data, xk.shape);
    const v32 = Tensor.from(xv.data, xv.shape);
    const ki = Tensor.empty(xk.shape, 'i32');
    expect(() => attention(q16, k32, v16, { heads: 2 })).toThrow(ShapeError);
    expect(() => attention(q16, k16, v32, { heads: 2 })).toThrow(/v is f32 but q is f16/);
    expect(() => attentionForward(q16, ki, v16, { heads: 2 })).toThrow(ShapeError);
    const { out, lse } = attentionForward(q16, k16, v16, { heads: 2 });
    const g32 = Tensor.from(rand(out.size, 3), out.shape);
    expect(() => attentionBackward(q16, k16, v16, out, lse, g32, { heads: 2 })).toThrow(/output gradient is f32/);
    [q16, k16, v16, k32, v32, ki, out, lse, g32].forEach((t) => t.dispose());
  });

  it('subgroup kernels read the rows lanes hand around from textures where WGSL allows it, else from buffers', async () => {
    if (!variants.includes('subgroup')) return;
    const c: Case = { B: 1, H: 2, Sq: 7, Sk: 7, D: 8 };
    const run = () =>
      dispatchedBy(async () => {
        const ts = inputs(c, 9).map((x) => Tensor.from(x.data, x.shape).requireGrad());
        const gs = tidy(() => grad(attention(ts[0], ts[1], ts[2], optsOf(c)), ts, Tensor.from(rand(c.B * c.Sq * c.H * c.D, 4), [c.B, c.Sq, c.H * c.D])));
        await rt().sync();
        [...ts, ...gs].forEach((t) => t.dispose());
      });
    setAttentionVariant('subgroup');
    try {
      const names = await run();
      const kernels = names.filter((n) => /^attention_(fwd|dq|dkv|prep)/.test(n));
      if (!rt().gpu.compat && rt().gpu.wgslFeatures.has('readonly_and_readwrite_storage_textures')) {
        // dQ reads its own Q and dO rows from the textures made for dK/dV ('texq')
        expect(kernels).toEqual(['attention_fwd_subgroup_tex', 'attention_dq_subgroup_texq_prep', 'attention_dkv_subgroup_tex']);
        // K and V for the forward and dQ, Q and dO for dQ and dK/dV
        expect(names.filter((n) => n === 'attention_rows_to_texture').length).toBe(6);
        // the staging textures are cached as pooled memory; releasePool frees them and the next call makes new ones
        expect(rt().memory().pooledBytes).toBeGreaterThan(0);
        rt().releasePool();
        expect(rt().memory().pooledBytes).toBe(0);
        await checkBackward('subgroup after releasePool', { B: 1, H: 2, Sq: 7, Sk: 7, D: 8 });
        // rows of H * D = 64 values (256 bytes) are copied by the queue (copyBufferToTexture), not by a kernel
        const wide: Case = { B: 2, H: 8, Sq: 9, Sk: 7, D: 8 };
        const copies = await dispatchedBy(() => checkBackward('subgroup, rows copied by the queue', wide));
        // and the forward reads its own query rows from a texture too
        expect(copies.filter((n) => /^attention_(fwd|dq|dkv)/.test(n))).toEqual(['attention_fwd_subgroup_texq', 'attention_dq_subgroup_texq_prep', 'attention_dkv_subgroup_tex']);
        expect(copies.filter((n) => n === 'attention_rows_to_texture')).toEqual([]);
      } else expect(kernels).toEqual(['attention_fwd_subgroup', 'attention_dq_subgroup_prep', 'attention_dkv_subgroup']);
      setAttentionTextureLoads(false);
      expect((await run()).filter((n) => /^attention_(fwd|dq|dkv)|texture/.test(n))).toEqual(['attention_fwd_subgroup', 'attention_dq_subgroup_prep', 'attention_dkv_subgroup']);
    } finally {
      setAttentionVariant(null);
      setAttentionTextureLoads(true);
    }
  }, LONG);

  it('staging textures past the cache cap are freed (least recently used first) without breaking queued calls', async () => {
    if (!variants.includes('subgroup')) return;
    setAttentionVariant('subgroup');
    try {
      rt().releasePool();
      const cases: Case[] = [
        { B: 1, H: 2, Sq: 9, Sk: 7, D: 8 },
        { B: 2, H: 1, Sq: 5, Sk: 12, D: 8 },
      ];
      // inputs first: uploads end the batch, and the evictions must happen with the earlier kernels still queued
      const runs = [cases[0], cases[1], cases[0]].map((c, i) => {
        const xs = inputs(c, i + 1);
        return { c, xs, ts: xs.map((x) => Tensor.from(x.data, x.shape)) as [Tensor, Tensor, Tensor] };
      });
      // K and V textures: 448 bytes each for the first shape ([4, 7, 1] texels), 768 for the second ([2, 12, 2]);
      // a 1600-byte cap holds one call's pair, so each call evicts the previous call's
      setAttentionTextureCacheBytes(1600);
      const outs = runs.map((r) => tidy(() => attentionForward(...r.ts, optsOf(r.c)).out));
      for (const [i, r] of runs.entries()) {
        expectClose(await outs[i].data(), rattention(...refs(r.xs), optsOf(r.c)).data, 1e-4, `attention after eviction ${name(r.c)}`);
        [outs[i], ...r.ts].forEach((t) => t.dispose());
      }
      // the last call's K and V textures stay cached: [H * D/4, Sk, B] texels of 16 bytes each
      if (!rt().gpu.compat && rt().gpu.wgslFeatures.has('readonly_and_readwrite_storage_textures'))
        expect(rt().memory().pooledBytes).toBeGreaterThanOrEqual(2 * 4 * 7 * 1 * 16);
    } finally {
      setAttentionTextureCacheBytes(256 * 2 ** 20);
      setAttentionVariant(null);
    }
  }, LONG);

  it('computes only the gradients that are needed', async () => {
    const c: Case = { B: 1, H: 2, Sq: 7, Sk: 7, D: 8 };
    const xs = inputs(c, 9);
    const [q, k, v] = xs.map((x) => Tensor.from(x.data, x.shape));
    v.requireGrad();
    const g = rand(c.B * c.Sq * c.H * c.D, 4);
    const [dv] = tidy(() => grad(attention(q, k, v, optsOf(c)), [v], Tensor.from(g, [c.B, c.Sq, c.H * c.D])));
    const ref = rattentionBackward(...refs(xs), rt64(g, [c.B, c.Sq, c.H * c.D]), optsOf(c));
    expectClose(await dv.data(), ref[2].data, 2e-4, 'attention dv alone');
    [q, k, v, dv].forEach((t) => t.dispose());
  }, LONG);

  it('rejects bad shapes with a ShapeError', () => {
    const q = Tensor.empty([1, 4, 8]);
    const k = Tensor.empty([1, 5, 8]);
    const v = Tensor.empty([1, 6, 8]);
    const k2 = Tensor.empty([1, 5, 16]);
    expect(() => attention(q, k, v, { heads: 2 })).toThrow(ShapeError); // k and v lengths differ
    expect(() => attention(q, k2, k2, { heads: 2 })).toThrow(ShapeError); // q and k channels differ
    expect(() => attention(q, k, k, { heads: 3 })).toThrow(ShapeError); // 8 channels, 3 heads
    expect(() => attention(q, k, k, { heads: 4 })).toThrow(ShapeError); // head dim 2
    [q, k, v, k2].forEach((t) => t.dispose());
  });

  it('extra memory of forward + backward grows linearly with the sequence length', async () => {
    const H = 2;
    const D = 8;
    const extra = async (S: number) => {
      const xs = inputs({ B: 1, H, Sq: S, Sk: S, D }, 2);
      const ts = xs.map((x) => Tensor.from(x.data, x.shape).requireGrad());
      const g = Tensor.from(rand(S * H * D, 8), [1, S, H * D]);
      await rt().sync();
      rt().resetPeak();
      const before = rt().memory().liveBytes;
      const gs = tidy(() => grad(attention(ts[0], ts[1], ts[2], { heads: H }), ts, g));
      await rt().sync();
      const peak = rt().memory().peakBytes - before;
      [...gs, ...ts, g].forEach((t) => t.dispose());
      return peak;
    };
    const small = await extra(256);
    const large = await extra(1024);
    // a materialized score matrix would add H * S^2 * 4 bytes (8 MiB at 1024): 16x growth
    expect(large).toBeLessThanOrEqual(small * 4 * 1.25);
    expect(large).toBeLessThan(2 * 1024 * 1024);
  }, LONG);
});
