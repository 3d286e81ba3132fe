// conv2d forward against the float64 reference on SD-like scaled-down and odd shapes with every stride/padding
// case the models use; backward (x, w, bias) against finite differences; the chunked path for tensors larger
// than one storage binding; f16 activations (and gradients) on every path.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Tensor, grad, rt, tidy } from '../../engine/index.js';
import {
  conv2d,
  conv2dRaw,
  conv2dVariant,
  conv2dVariants,
  setConv2dVariant,
  setConv2dWeightPacking,
  setConv2dWinograd,
  type Conv2dOptions,
  type ConvVariant,
  type WeightPacking,
} from '../../kernels/conv2d.js';
import { setWinogradTextureLoads, WINOGRAD_F23, WINOGRAD_F43 } from '../../kernels/winograd.js';
import { setMatmulKMajor, setMatmulSharedTuning, setMatmulVariant } from '../../kernels/matmul.js';
import { rconv2d, rconv2dBackward } from '../../kernels/conv2d.ref.js';
import { rprod, rt64 } from '../../kernels/core.ref.js';
import { checkGrad, dispatchedBy, expectClose, gpu, rand, f16Rounded } from '../helpers/check.js';

beforeAll(async () => {
  await gpu();
});

interface Case {
  name: string;
  x: number[];
  w: number[];
  bias: boolean;
  opts: Conv2dOptions;
}

const CASES: Case[] = [
  { name: '3x3 s1 p1', x: [2, 8, 16, 16], w: [12, 8, 3, 3], bias: true, opts: { padding: 1 } },
  { name: '3x3 s1 p1 odd', x: [3, 33, 7, 9], w: [77, 33, 3, 3], bias: true, opts: { padding: 1 } },
  { name: '3x3 s2 p1 (UNet downsampler)', x: [2, 4, 15, 16], w: [33, 4, 3, 3], bias: true, opts: { stride: 2, padding: 1 } },
  { name: '3x3 s2 pad [0,1,0,1] (VAE encoder)', x: [3, 33, 16, 14], w: [4, 33, 3, 3], bias: true, opts: { stride: 2, padding: [0, 1, 0, 1] } },
  { name: '3x3 s2 pad [0,1,0,1] odd', x: [1, 4, 7, 9], w: [5, 4, 3, 3], bias: true, opts: { stride: 2, padding: [0, 1, 0, 1] } },
  { name: '1x1', x: [3, 77, 7, 9], w: [33, 77, 1, 1], bias: true, opts: {} },
  { name: '3x3 s1 p0', x: [2, 4, 7, 9], w: [6, 4, 3, 3], bias: false, opts: {} },
  { name: '3x3 s1 p0 width 8', x: [2, 4, 8, 8], w: [5, 4, 3, 3], bias: true, opts: {} },
  { name: '3x3 s1 p3', x: [1, 8, 8, 8], w: [6, 8, 3, 3], bias: true, opts: { padding: 3 } },
  { name: 'patch 4x4 s4', x: [2, 3, 16, 20], w: [33, 3, 4, 4], bias: false, opts: { stride: 4 } },
  { name: 'patch 14x14 s14', x: [1, 3, 28, 42], w: [8, 3, 14, 14], bias: false, opts: { stride: 14 } },
  { name: 'asymmetric stride/pad', x: [2, 5, 11, 13], w: [7, 5, 3, 5], bias: true, opts: { stride: [2, 3], padding: [1, 2] } },
];

function data(c: Case) {
  return {
    x: rand(rprod(c.x), 1),
    w: rand(rprod(c.w), 2, -0.5, 0.5),
    b: rand(c.w[0], 3),
  };
}

// f16 activations: the kernels compute in f32 from the f16 inputs (the reference gets the same rounded inputs)
// and round each output element once, to within half an f16 ulp (2^-11 = 4.9e-4 of its magnitude, so of
// max|ref|); with the f32 arithmetic's own error (below 1e-4 also for Winograd) the normalized error stays
// under 1e-3. An output stored unconverted, or an f16 operand read as f32, is off by O(1).
const F16_TOL = 1e-3;
const f16Device = () => rt().features.has('shader-f16');

async function forwardCheck(c: Case, wDtype: 'f32' | 'f16' = 'f32', tol = 1e-5, xDtype: 'f32' | 'f16' = 'f32') {
  const d = data(c);
  // with f16 weights (activations), the reference uses the rounded weights (activations)
  const wData = wDtype === 'f16' ? f16Rounded(d.w) : d.w;
  const xData = xDtype === 'f16' ? f16Rounded(d.x) : d.x;
  const y = tidy(() =>
    conv2d(Tensor.from(d.x, c.x, xDtype), Tensor.from(d.w, c.w, wDtype), c.bias ? Tensor.from(d.b, [c.w[0]]) : undefined, c.opts),
  );
  expect(y.dtype).toBe(xDtype);
  const got = await y.data();
  y.dispose();
  const ref = rconv2d(rt64(xData, c.x), rt64(wData, c.w), c.bias ? rt64(d.b, [c.w[0]]) : null, c.opts);
  expectClose(got, ref.data, tol, `conv2d ${c.name} x[${c.x}] ${xDtype} w[${c.w}] ${wDtype}`);
  return ref.shape;
}

/** Exact backward (vs float64 reference) on a larger shape through the transposed sums. */
const refBackward = (c: Case, x: Float32Array, w: Float32Array, gy: Float32Array) => rconv2dBackward(x, c.x, w, c.w, gy, c.opts);

// every suite runs with each direct tiling: 'subgroup' (CPU adapters with 8-wide subgroups), 'register' (the
// rest) and 'shared' (workgroup-memory tiles, opt-in for GPUs); 'subgroup' twice: weights read in place, and repacked first (the kernels pick by size, tests force
// each); and twice more with every 3x3 stride-1 convolution through Winograd, F(4x4, 3x3) and F(2x2, 3x3) (the
// rest direct).
type Variant = ConvVariant | 'winograd' | 'winograd 2x2' | 'winograd, buffers';
/** shapes for the lowered binding limit: one item fits (chunks of whole batch items), or one item exceeds it (chunks of channels, unaligned offsets) */
const CHUNK_CASES: Case[] = [
  { name: 'batch chunks', x: [3, 4, 24, 20], w: [6, 4, 3, 3], bias: true, opts: { padding: 1 } },
  { name: 'channel chunks', x: [2, 5, 40, 36], w: [4, 5, 3, 3], bias: true, opts: { stride: 2, padding: [0, 1, 0, 1] } },
  { name: 'channel chunks s1', x: [1, 6, 40, 37], w: [9, 6, 3, 3], bias: true, opts: { padding: 1 } },
];
const VARIANTS: [Variant, WeightPacking][] = [
  ['subgroup', 'never'],
  ['subgroup', 'always'],
  ['register', 'auto'],
  ['shared', 'auto'],
  ['winograd', 'auto'],
  ['winograd 2x2', 'auto'],
  ['winograd, buffers', 'auto'],
];
const isWinograd = (v: Variant): v is 'winograd' | 'winograd 2x2' | 'winograd, buffers' => v.startsWith('winograd');
for (const [variant, packing] of VARIANTS)
  describe(`conv2d [${variant}${variant === 'subgroup' ? `, weights ${packing === 'always' ? 'repacked' : 'in place'}` : ''}]`, () => {
    beforeAll(() => {
      setConv2dWeightPacking(packing);
      setConv2dWinograd(!isWinograd(variant) ? 'never' : variant === 'winograd 2x2' ? 'always-2x2' : 'always');
      // Winograd's transforms read through staging textures on CPU adapters; 'winograd, buffers' reads the buffers
      setWinogradTextureLoads(variant !== 'winograd, buffers');
      // an adapter without 8-wide subgroups runs the 'register' tiling in both passes
      setConv2dVariant(!isWinograd(variant) && conv2dVariants().includes(variant) ? variant : null);
    });
    afterAll(() => {
      setConv2dVariant(null);
      setConv2dWeightPacking('auto');
      setConv2dWinograd('auto');
      setWinogradTextureLoads(true);
    });
    it('variant is available on this adapter', (ctx) => {
      if (!isWinograd(variant) && !conv2dVariants().includes(variant)) ctx.skip();
    });
    describe('conv2d forward', () => {
      for (const c of CASES) it(`${c.name}: x[${c.x}] w[${c.w}]`, () => forwardCheck(c));
      it('f16 weights', async () => {
        if (!rt().features.has('shader-f16')) return;
        await forwardCheck(CASES[1], 'f16');
        await forwardCheck(CASES[3], 'f16');
      });
      it('rejects mismatched channels', () => {
        expect(() => tidy(() => conv2d(Tensor.empty([1, 3, 4, 4]), Tensor.empty([2, 4, 3, 3])))).toThrow(/channels/);
      });
    });

    describe('conv2d backward vs finite differences', () => {
      const GCASES: Case[] = [
        { name: '3x3 s1 p1', x: [2, 3, 5, 6], w: [4, 3, 3, 3], bias: true, opts: { padding: 1 } },
        { name: '3x3 s2 p1', x: [2, 3, 7, 8], w: [5, 3, 3, 3], bias: true, opts: { stride: 2, padding: 1 } },
        { name: '3x3 s2 pad [0,1,0,1]', x: [1, 4, 8, 7], w: [3, 4, 3, 3], bias: true, opts: { stride: 2, padding: [0, 1, 0, 1] } },
        { name: '1x1', x: [3, 5, 3, 4], w: [6, 5, 1, 1], bias: true, opts: {} },
        { name: 'patch 4x4 s4', x: [2, 3, 8, 12], w: [5, 3, 4, 4], bias: false, opts: { stride: 4 } },
        { name: 'asymmetric', x: [2, 3, 9, 10], w: [4, 3, 3, 5], bias: true, opts: { stride: [2, 3], padding: [1, 2] } },
      ];
      for (const c of GCASES)
        it(`${c.name}: x[${c.x}] w[${c.w}]`, async () => {
          const d = data(c);
          const inputs = [
            { data: d.x, shape: c.x },
            { data: d.w, shape: c.w },
            ...(c.bias ? [{ data: d.b, shape: [c.w[0]] }] : []),
          ];
          await checkGrad(
            `conv2d ${c.name}`,
            inputs,
            (x, w, b) => conv2d(x, w, b, c.opts),
            (x, w, b) => rconv2d(x, w, b ?? null, c.opts),
            { samples: 40 },
          );
        });
    });

    describe('conv2d backward on larger shapes (exact sums)', () => {
      const BCASES: Case[] = [
        { name: '3x3 s1 p1', x: [2, 33, 9, 7], w: [20, 33, 3, 3], bias: true, opts: { padding: 1 } },
        { name: '3x3 s2 p1', x: [3, 4, 15, 16], w: [33, 4, 3, 3], bias: true, opts: { stride: 2, padding: 1 } },
        { name: '3x3 s2 pad [0,1,0,1]', x: [2, 9, 16, 14], w: [7, 9, 3, 3], bias: true, opts: { stride: 2, padding: [0, 1, 0, 1] } },
        { name: 'patch 14x14 s14', x: [1, 3, 28, 42], w: [8, 3, 14, 14], bias: false, opts: { stride: 14 } },
        { name: '1x1', x: [3, 77, 7, 9], w: [33, 77, 1, 1], bias: true, opts: {} },
        // taps that reach no input row at all (1-pixel-high input under a 3x3 kernel)
        { name: '3x3 s1 p1 on 1-pixel rows', x: [2, 9, 1, 5], w: [10, 9, 3, 3], bias: true, opts: { padding: 1 } },
        { name: '3x3 s2 p1 on 1x2', x: [1, 9, 1, 2], w: [10, 9, 3, 3], bias: true, opts: { stride: 2, padding: 1 } },
        // padding beyond the kernel (backward-data as a convolution of dY then pads by k - 1 - p < 0)
        { name: '3x3 s1 p3', x: [1, 5, 6, 7], w: [4, 5, 3, 3], bias: true, opts: { padding: 3 } },
      ];
      for (const c of BCASES)
        it(`${c.name}: x[${c.x}] w[${c.w}]`, async () => {
          const d = data(c);
          const probe = rconv2d(rt64(d.x, c.x), rt64(d.w, c.w), null, c.opts);
          const gy = rand(probe.data.length, 5);
          const ref = refBackward(c, d.x, d.w, gy);
          const [gx, gw, gb] = tidy(() => {
            const x = Tensor.from(d.x, c.x).requireGrad();
            const w = Tensor.from(d.w, c.w).requireGrad();
            const b = Tensor.from(d.b, [c.w[0]]).requireGrad();
            const y = conv2d(x, w, b, c.opts);
            return grad(y, [x, w, b], Tensor.from(gy, ref.yShape));
          });
          expectClose(await gx.data(), ref.dx, 1e-5, `conv2d ${c.name} dx`);
          expectClose(await gw.data(), ref.dw, 1e-5, `conv2d ${c.name} dw`);
          expectClose(await gb.data(), ref.db, 1e-5, `conv2d ${c.name} dbias`);
          [gx, gw, gb].forEach((t) => t.dispose());
        });
    });

    describe('conv2d on tensors larger than one storage binding', () => {
      it('splits batch items and channels (lowered binding limit)', async () => {
        const r = rt();
        const saved = r.maxBindingBytes;
        const cases = CHUNK_CASES;
        try {
          for (const c of cases) {
            const d = data(c);
            const probe = rconv2d(rt64(d.x, c.x), rt64(d.w, c.w), null, c.opts);
            const gy = rand(probe.data.length, 5);
            const ref = refBackward(c, d.x, d.w, gy);
            const yref = rconv2d(rt64(d.x, c.x), rt64(d.w, c.w), rt64(d.b, [c.w[0]]), c.opts);
            const itemBytes = Math.max(rprod(c.x.slice(1)), rprod(yref.shape.slice(1))) * 4;
            r.maxBindingBytes = c.name === 'batch chunks' ? itemBytes + 256 : c.name === 'channel chunks s1' ? Math.floor(itemBytes / 2) + 256 : Math.floor(itemBytes / 3) + 256;
            const [y, gx, gw, gb] = tidy(() => {
              const x = Tensor.from(d.x, c.x).requireGrad();
              const w = Tensor.from(d.w, c.w).requireGrad();
              const b = Tensor.from(d.b, [c.w[0]]).requireGrad();
              const y = conv2d(x, w, b, c.opts);
              return [y, ...grad(y, [x, w, b], Tensor.from(gy, ref.yShape))];
            });
            r.maxBindingBytes = saved;
            expectClose(await y.data(), yref.data, 1e-5, `conv2d ${c.name} forward`);
            expectClose(await gx.data(), ref.dx, 1e-5, `conv2d ${c.name} dx`);
            expectClose(await gw.data(), ref.dw, 1e-5, `conv2d ${c.name} dw`);
            expectClose(await gb.data(), ref.db, 1e-5, `conv2d ${c.name} dbias`);
            [y, gx, gw, gb].forEach((t) => t.dispose());
          }
        } finally {
          r.maxBindingBytes = saved;
        }
      });
    });

    // CI runs the f16 cases on the two paths lavapipe takes by default (a cold shader cache compiles each
    // f16 kernel anew); local runs take every variant
    if (!process.env.CI || (variant === 'subgroup' && packing === 'never') || variant === 'winograd')
    describe('conv2d f16 activations', () => {
      for (const c of CASES)
        it(`forward ${c.name}: x[${c.x}] w[${c.w}]`, async (ctx) => {
          if (!f16Device()) ctx.skip();
          await forwardCheck(c, 'f32', F16_TOL, 'f16');
        });
      it('forward with f16 weights', async (ctx) => {
        if (!f16Device()) ctx.skip();
        await forwardCheck(CASES[1], 'f16', F16_TOL, 'f16');
        await forwardCheck(CASES[3], 'f16', F16_TOL, 'f16');
      });
      it("takes this suite's path", async (ctx) => {
        if (!f16Device()) ctx.skip();
        const c = CASES[0];
        const names = await dispatchedBy(() =>
          tidy(() => {
            const x = Tensor.empty(c.x, 'f16').requireGrad();
            const w = Tensor.empty(c.w).requireGrad();
            const y = conv2d(x, w, undefined, c.opts);
            grad(y, [x, w], Tensor.empty(y.shape, 'f16'));
          }),
        );
        if (isWinograd(variant)) expect(names).toEqual(expect.arrayContaining(['winograd_input', 'winograd_output', 'winograd_grad_output', 'winograd_weight_grad']));
        else if (variant === 'subgroup' && conv2dVariants().includes('subgroup'))
          expect(names).toEqual(expect.arrayContaining(['conv2d_sg', 'conv2d_sg_bwd_data', 'conv2d_sg_bwd_weight', ...(packing === 'always' ? ['conv2d_repack'] : [])]));
        else if (variant === 'shared') expect(names).toEqual(expect.arrayContaining(['conv2d_shared', 'conv2d_shared_bwd_data', 'conv2d_bwd_weight']));
        else expect(names).toEqual(expect.arrayContaining(['conv2d', 'conv2d_bwd_data', 'conv2d_bwd_weight']));
      });

      /** x and dY in f16 (w in `wd`): dX f16, dW in w's dtype, dBias f32, against float64 sums of the rounded inputs */
      async function backwardF16(c: Case, wd: 'f32' | 'f16', tolY = F16_TOL) {
        const d = data(c);
        const probe = rconv2d(rt64(d.x, c.x), rt64(d.w, c.w), null, c.opts);
        const gy = f16Rounded(rand(probe.data.length, 5));
        const xr = f16Rounded(d.x);
        const wr = wd === 'f16' ? f16Rounded(d.w) : d.w;
        const ref = refBackward(c, xr, wr, gy);
        const yref = rconv2d(rt64(xr, c.x), rt64(wr, c.w), c.bias ? rt64(d.b, [c.w[0]]) : null, c.opts);
        const out = tidy(() => {
          const x = Tensor.from(d.x, c.x, 'f16').requireGrad();
          const w = Tensor.from(d.w, c.w, wd).requireGrad();
          const b = c.bias ? Tensor.from(d.b, [c.w[0]]).requireGrad() : undefined;
          const y = conv2d(x, w, b, c.opts);
          return [y, ...grad(y, b ? [x, w, b] : [x, w], Tensor.from(gy, ref.yShape, 'f16'))];
        });
        const [y, gx, gw, gb] = out;
        expect([y.dtype, gx.dtype, gw.dtype, gb?.dtype]).toEqual(['f16', 'f16', wd, c.bias ? 'f32' : undefined]);
        expectClose(await y.data(), yref.data, tolY, `conv2d f16 ${c.name} forward`);
        expectClose(await gx.data(), ref.dx, tolY, `conv2d f16 ${c.name} dx`);
        // dW and dBias sum in f32 from the f16 operands: rounded only where w is f16
        expectClose(await gw.data(), ref.dw, wd === 'f16' ? F16_TOL : 1e-5, `conv2d f16 ${c.name} dw (${wd})`);
        if (gb) expectClose(await gb.data(), ref.db, 1e-5, `conv2d f16 ${c.name} dbias`);
        out.forEach((t) => t.dispose());
      }

      const FB: Case[] = [
        { name: '3x3 s1 p1 odd', x: [3, 33, 7, 9], w: [20, 33, 3, 3], bias: true, opts: { padding: 1 } },
        // widths that are multiples of 4: Winograd's vec4 rows and texture reads
        { name: '3x3 s1 p1 width 16', x: [2, 16, 8, 16], w: [24, 16, 3, 3], bias: true, opts: { padding: 1 } },
        { name: '3x3 s1 p0 width 8', x: [2, 4, 8, 8], w: [5, 4, 3, 3], bias: false, opts: {} },
        { name: '3x3 s2 p1', x: [3, 4, 15, 16], w: [33, 4, 3, 3], bias: true, opts: { stride: 2, padding: 1 } },
        { name: '3x3 s2 pad [0,1,0,1]', x: [2, 9, 16, 14], w: [7, 9, 3, 3], bias: true, opts: { stride: 2, padding: [0, 1, 0, 1] } },
        { name: 'patch 14x14 s14', x: [1, 3, 28, 42], w: [8, 3, 14, 14], bias: false, opts: { stride: 14 } },
        { name: '1x1', x: [3, 77, 7, 9], w: [33, 77, 1, 1], bias: true, opts: {} },
        { name: 'asymmetric', x: [2, 3, 9, 10], w: [4, 3, 3, 5], bias: true, opts: { stride: [2, 3], padding: [1, 2] } },
        { name: '3x3 s1 p1 on 1-pixel rows', x: [2, 9, 1, 5], w: [10, 9, 3, 3], bias: true, opts: { padding: 1 } },
      ];
      for (const c of FB) it(`backward ${c.name}: x[${c.x}] w[${c.w}]`, async (ctx) => {
        if (!f16Device()) ctx.skip();
        await backwardF16(c, 'f32');
      });
      it('backward with f16 weights (dW in f16)', async (ctx) => {
        if (!f16Device()) ctx.skip();
        await backwardF16(FB[0], 'f16');
        await backwardF16(FB[3], 'f16');
      });

      it('splits batch items and channels (lowered binding limit)', async (ctx) => {
        if (!f16Device()) ctx.skip();
        const r = rt();
        const saved = r.maxBindingBytes;
        const cases = CHUNK_CASES;
        try {
          for (const c of cases) {
            const d = data(c);
            const xr = f16Rounded(d.x);
            const yref = rconv2d(rt64(xr, c.x), rt64(d.w, c.w), rt64(d.b, [c.w[0]]), c.opts);
            const gy = f16Rounded(rand(yref.data.length, 5));
            const ref = refBackward(c, xr, d.w, gy);
            // f16 elements: 2 bytes; at least 8 KiB, where the (f32) repacked weights of these cases fit
            const itemBytes = Math.max(rprod(c.x.slice(1)), rprod(yref.shape.slice(1))) * 2;
            const lim = c.name === 'batch chunks' ? itemBytes + 256 : c.name === 'channel chunks s1' ? Math.floor(itemBytes / 2) + 256 : Math.floor(itemBytes / 3) + 256;
            r.maxBindingBytes = Math.max(lim, 8192);
            const out = tidy(() => {
              const x = Tensor.from(d.x, c.x, 'f16').requireGrad();
              const w = Tensor.from(d.w, c.w).requireGrad();
              const b = Tensor.from(d.b, [c.w[0]]).requireGrad();
              const y = conv2d(x, w, b, c.opts);
              return [y, ...grad(y, [x, w, b], Tensor.from(gy, ref.yShape, 'f16'))];
            });
            r.maxBindingBytes = saved;
            const [y, gx, gw, gb] = out;
            expect([y.dtype, gx.dtype, gw.dtype, gb.dtype]).toEqual(['f16', 'f16', 'f32', 'f32']);
            // y and dX sum over channel chunks through the f16 output (one more rounding of a partial sum per
            // chunk, up to 3 here): within 3 half-ulps of the partial sums' magnitude
            expectClose(await y.data(), yref.data, 3e-3, `conv2d f16 ${c.name} forward`);
            expectClose(await gx.data(), ref.dx, 3e-3, `conv2d f16 ${c.name} dx`);
            expectClose(await gw.data(), ref.dw, 1e-5, `conv2d f16 ${c.name} dw`);
            expectClose(await gb.data(), ref.db, 1e-5, `conv2d f16 ${c.name} dbias`);
            out.forEach((t) => t.dispose());
          }
        } finally {
          r.maxBindingBytes = saved;
        }
      });
    });
  });

describe('conv2d f16 activation dtypes', () => {
  it('conv2dRaw rejects dY of another dtype than the activations; conv2d rejects f16 biases and integer inputs', (ctx) => {
    if (!f16Device()) ctx.skip();
    const opts = { padding: 1 };
    tidy(() => {
      const x16 = Tensor.from(rand(144, 1), [1, 4, 6, 6], 'f16').requireGrad();
      const x32 = Tensor.from(rand(144, 1), [1, 4, 6, 6]).requireGrad();
      const w = Tensor.from(rand(180, 2), [5, 4, 3, 3]).requireGrad();
      const gy32 = Tensor.from(rand(180, 3), [1, 5, 6, 6]);
      const gy16 = Tensor.from(rand(180, 3), [1, 5, 6, 6], 'f16');
      expect(() => conv2dRaw.backwardData(gy32, x16, w, opts)).toThrow(/conv2d backward: dY is f32 but input is f16/);
      expect(() => conv2dRaw.backwardWeight(gy32, x16, w, opts)).toThrow(/conv2d backward: dY is f32 but input is f16/);
      expect(() => conv2dRaw.backwardData(gy16, x32, w, opts)).toThrow(/conv2d backward: dY is f16 but input is f32/);
      expect(() => conv2d(x16, w, Tensor.from(rand(5, 4), [5], 'f16'), opts)).toThrow(/conv2d: bias must be f32/);
      expect(() => conv2d(Tensor.from(new Int32Array(144), [1, 4, 6, 6], 'i32'), w, undefined, opts)).toThrow(/conv2d: input must be f32 or f16, got i32/);
    });
  });

  it("autodiff hands the rule dY in y's dtype: an f32 dY for an f16 output gives the f16 path's gradients", async (ctx) => {
    if (!f16Device()) ctx.skip();
    const c: Case = { name: 'cast dY', x: [1, 4, 6, 6], w: [5, 4, 3, 3], bias: true, opts: { padding: 1 } };
    const d = data(c);
    const gyData = rand(180, 3);
    const run = (gyDtype: 'f32' | 'f16') =>
      tidy(() => {
        const x = Tensor.from(d.x, c.x, 'f16').requireGrad();
        const w = Tensor.from(d.w, c.w).requireGrad();
        const b = Tensor.from(d.b, [5]).requireGrad();
        return grad(conv2d(x, w, b, c.opts), [x, w, b], Tensor.from(gyData, [1, 5, 6, 6], gyDtype));
      });
    const a = run('f32');
    const b = run('f16');
    expect(a.map((t) => t.dtype)).toEqual(['f16', 'f32', 'f32']);
    for (let i = 0; i < 3; i++) expect(Array.from(await a[i].data())).toEqual(Array.from(await b[i].data()));
    [...a, ...b].forEach((t) => t.dispose());
  });
});

describe('conv2d Winograd F(4x4, 3x3)', () => {
  /** float64 reference of the 1D algorithm: Aᵀ [(G g) ⊙ (Bᵀ d)] against the direct correlation */
  for (const [name, M, m] of [
    ['F(4, 3)', WINOGRAD_F43, 4],
    ['F(2, 3)', WINOGRAD_F23, 2],
  ] as const)
    it(`${name} transform matrices compute a 3-tap correlation exactly (float64)`, () => {
      const { BT, G, AT } = M;
      const mv = (mat: readonly (readonly number[])[], v: number[]) => mat.map((row) => row.reduce((s, c, k) => s + c * v[k], 0));
      for (let trial = 0; trial < 20; trial++) {
        const d = Array.from(rand(m + 2, 100 + trial));
        const g = Array.from(rand(3, 200 + trial));
        const u = mv(G, g);
        const v = mv(BT, d);
        const y = mv(AT, u.map((x, i) => x * v[i]));
        expect(y.length).toBe(m);
        for (let i = 0; i < m; i++) expect(Math.abs(y[i] - (d[i] * g[0] + d[i + 1] * g[1] + d[i + 2] * g[2]))).toBeLessThan(1e-12);
      }
    });

  for (const [viaMatmul, mode] of [
    [false, 'always'],
    [true, 'always'],
    [false, 'always-2x2'],
  ] as const)
    it(`chunks of weight rows and of tiles (lowered binding limit), all three passes, ${mode === 'always' ? '4x4' : '2x2'} tiles${viaMatmul ? ", GEMMs through matmul's general kernel" : ''}`, async () => {
      const r = rt();
      const saved = r.maxBindingBytes;
      // x, y fit one binding; U needs 2 row chunks (48 rows, 32 per chunk) and V 2 tile chunks (50 tiles)
      const c: Case = { name: 'chunks', x: [2, 40, 20, 20], w: [48, 40, 3, 3], bias: true, opts: { padding: 1 } };
      setConv2dWinograd(mode);
      setMatmulKMajor(viaMatmul ? 'never' : 'auto');
      try {
        const d = data(c);
        const yref = rconv2d(rt64(d.x, c.x), rt64(d.w, c.w), rt64(d.b, [c.w[0]]), c.opts);
        const gy = rand(yref.data.length, 5);
        const ref = { dx: new Float64Array(0), dw: new Float64Array(0) };
        // reference gradients through the direct kernels (themselves checked against float64 above)
        setConv2dWinograd('never');
        const [rdx, rdw] = tidy(() => {
          const x = Tensor.from(d.x, c.x).requireGrad();
          const w = Tensor.from(d.w, c.w).requireGrad();
          return grad(conv2d(x, w, undefined, c.opts), [x, w], Tensor.from(gy, yref.shape));
        });
        ref.dx = Float64Array.from(await rdx.data());
        ref.dw = Float64Array.from(await rdw.data());
        [rdx, rdw].forEach((t) => t.dispose());
        setConv2dWinograd(mode);
        r.maxBindingBytes = 200 * 1024;
        const [y, gx, gw] = tidy(() => {
          const x = Tensor.from(d.x, c.x).requireGrad();
          const w = Tensor.from(d.w, c.w).requireGrad();
          const y = conv2d(x, w, Tensor.from(d.b, [c.w[0]]), c.opts);
          return [y, ...grad(y, [x, w], Tensor.from(gy, yref.shape))];
        });
        r.maxBindingBytes = saved;
        expectClose(await y.data(), yref.data, 1e-5, 'winograd chunks forward');
        expectClose(await gx.data(), ref.dx, 1e-5, 'winograd chunks dx');
        expectClose(await gw.data(), ref.dw, 1e-5, 'winograd chunks dw');
        [y, gx, gw].forEach((t) => t.dispose());
      } finally {
        r.maxBindingBytes = saved;
        setConv2dWinograd('auto');
        setMatmulKMajor('auto');
      }
    });

  it('chunks of weight rows and of tiles (lowered binding limit), all three passes, f16 activations', async (ctx) => {
    if (!f16Device()) ctx.skip();
    const r = rt();
    const saved = r.maxBindingBytes;
    const c: Case = { name: 'chunks', x: [2, 40, 20, 20], w: [48, 40, 3, 3], bias: true, opts: { padding: 1 } };
    setConv2dWinograd('always');
    try {
      const d = data(c);
      const xr = f16Rounded(d.x);
      const yref = rconv2d(rt64(xr, c.x), rt64(d.w, c.w), rt64(d.b, [c.w[0]]), c.opts);
      const gy = f16Rounded(rand(yref.data.length, 5));
      const ref = refBackward(c, xr, d.w, gy);
      r.maxBindingBytes = 200 * 1024;
      const out = tidy(() => {
        const x = Tensor.from(d.x, c.x, 'f16').requireGrad();
        const w = Tensor.from(d.w, c.w).requireGrad();
        const y = conv2d(x, w, Tensor.from(d.b, [c.w[0]]), c.opts);
        return [y, ...grad(y, [x, w], Tensor.from(gy, yref.shape, 'f16'))];
      });
      r.maxBindingBytes = saved;
      const [y, gx, gw] = out;
      expect([y.dtype, gx.dtype, gw.dtype]).toEqual(['f16', 'f16', 'f32']);
      expectClose(await y.data(), yref.data, F16_TOL, 'winograd chunks f16 forward');
      expectClose(await gx.data(), ref.dx, F16_TOL, 'winograd chunks f16 dx');
      // dW sums f32 GEMMs over the tile chunks (Winograd's f32 error, as in the f32 tests' 1e-4 bound)
      expectClose(await gw.data(), ref.dw, 1e-4, 'winograd chunks f16 dw');
      out.forEach((t) => t.dispose());
    } finally {
      r.maxBindingBytes = saved;
      setConv2dWinograd('auto');
    }
  });

  it('is picked by default on 8-wide subgroup adapters from 32 output tiles (4x4, else 2x2) and 16 channels', async () => {
    const used = async (x: number[], w: number[]) =>
      (
        await dispatchedBy(() =>
          tidy(() => {
            conv2d(Tensor.empty(x), Tensor.empty(w), undefined, { padding: 1 });
          }),
        )
      ).includes('winograd_output');
    const cpu = conv2dVariant() === 'subgroup';
    expect(await used([2, 16, 16, 16], [16, 16, 3, 3])).toBe(cpu); // 2 x 16 tiles of 4x4
    expect(await used([1, 16, 16, 16], [16, 16, 3, 3])).toBe(cpu); // 16 of 4x4, 64 of 2x2
    expect(await used([1, 16, 8, 8], [16, 16, 3, 3])).toBe(false); // 16 tiles of 2x2
    expect(await used([2, 8, 16, 16], [16, 8, 3, 3])).toBe(false); // 8 input channels
    expect(await used([2, 16, 32, 32], [16, 16, 1, 1])).toBe(false); // not 3x3
  });

  it("runs its GEMMs on every matmul tiling (GPUs would use 'shared', with or without its options)", async () => {
    const c: Case = { name: '3x3 s1 p1 odd', x: [2, 17, 9, 11], w: [19, 17, 3, 3], bias: true, opts: { padding: 1 } };
    const d = data(c);
    const probe = rconv2d(rt64(d.x, c.x), rt64(d.w, c.w), null, c.opts);
    const gy = rand(probe.data.length, 5);
    const ref = refBackward(c, d.x, d.w, gy);
    setConv2dWinograd('always');
    try {
      for (const [v, tuning] of [['register', null], ['shared', null], ['shared', { coalesced: true, splitK: 2 }]] as const) {
        setMatmulVariant(v);
        setMatmulSharedTuning(tuning);
        let gx!: Tensor, gw!: Tensor;
        const names = await dispatchedBy(() => {
          [gx, gw] = tidy(() => {
            const x = Tensor.from(d.x, c.x).requireGrad();
            const w = Tensor.from(d.w, c.w).requireGrad();
            return grad(conv2d(x, w, Tensor.from(d.b, [c.w[0]]), c.opts), [x, w], Tensor.from(gy, ref.yShape));
          });
        });
        expect(names).toEqual(expect.arrayContaining(['winograd_output', 'winograd_weight_grad', tuning ? 'matmul_shared_split' : `matmul_${v}`]));
        await forwardCheck(c, 'f32', 1e-5);
        expectClose(await gx.data(), ref.dx, 1e-5, `winograd dx, matmul ${v}`);
        expectClose(await gw.data(), ref.dw, 1e-5, `winograd dw, matmul ${v}`);
        [gx, gw].forEach((t) => t.dispose());
      }
    } finally {
      setMatmulVariant(null);
      setMatmulSharedTuning(null);
      setConv2dWinograd('auto');
    }
  });

  it('stays within 1e-4 of the float64 reference at 1280 input channels', async () => {
    const c: Case = { name: 'deep', x: [1, 1280, 8, 8], w: [16, 1280, 3, 3], bias: true, opts: { padding: 1 } };
    setConv2dWinograd('always');
    try {
      await forwardCheck(c, 'f32', 1e-4);
    } finally {
      setConv2dWinograd('auto');
    }
  });
});

describe('conv2dRaw entry points', () => {
  it('match the autodiff path', async () => {
    const c = CASES[0];
    const d = data(c);
    const y = tidy(() => conv2dRaw.forward(Tensor.from(d.x, c.x), Tensor.from(d.w, c.w), undefined, c.opts));
    const ref = rconv2d(rt64(d.x, c.x), rt64(d.w, c.w), null, c.opts);
    expectClose(await y.data(), ref.data, 1e-5, 'conv2dRaw.forward');
    y.dispose();
  });
});
