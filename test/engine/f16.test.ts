// f16 storage of activations in the core ops (elementwise, reductions, data movement, cast) and autodiff's
// dtype rule: a gradient has the dtype of its tensor. Kernels compute in f32, so an f16 result differs from the
// float64 reference (on the f16-rounded inputs) by the rounding of the stored output: at most 2^-11 of the value,
// i.e. <= 4.9e-4 of max|ref| after normalization; the tolerances below add f32 arithmetic on top of that.
import { beforeAll, describe, expect, it } from 'vitest';
import * as E from '../../engine/index.js';
import { Tensor, grad, rt, tidy } from '../../engine/index.js';
import * as R from '../../kernels/core.ref.js';
import { expectClose, f16Rounded, gpu, rand } from '../helpers/check.js';

beforeAll(async () => {
  await gpu();
});

const OUT_TOL = 6e-4;

function needF16(ctx: { skip: () => void }) {
  if (!rt().features.has('shader-f16')) ctx.skip();
}

const UN: [string, (x: Tensor) => Tensor, number, number, number, number][] = [
  ['neg', E.neg, -2, 2, 0, 0],
  ['exp', E.exp, -3, 3, 0, 0],
  ['log', E.log, 0.1, 3, 0, 0],
  ['silu', E.silu, -6, 6, 0, 0],
  ['gelu', E.gelu, -5, 5, 0, 0],
  ['tanh', E.tanh, -4, 4, 0, 0],
  ['pow', (x) => E.pow(x, 3), -2, 2, 3, 0],
  ['affine', (x) => E.affine(x, 1.5, -0.25), -2, 2, 1.5, -0.25],
];

describe('f16 elementwise', () => {
  it('unary ops keep f16 and match the reference on odd shapes', async (ctx) => {
    needF16(ctx);
    for (const [name, f, lo, hi, p0, p1] of UN)
      for (const s of [[1], [7], [33], [3, 7, 33], [2, 1000]]) {
        const d = f16Rounded(rand(R.rprod(s), 3, lo, hi));
        const y = tidy(() => f(Tensor.from(d, s, 'f16')));
        expect(y.dtype).toBe('f16');
        const ref = R.rmap([R.rt64(d, s)], (v) => R.UNARY_REF[name](v, p0, p1));
        expectClose(await y.data(), ref.data, OUT_TOL, `${name} f16 [${s}]`);
        y.dispose();
      }
  });

  it('binary ops: f16 with f16 gives f16, f16 with f32 gives f32 (contiguous and broadcast)', async (ctx) => {
    needF16(ctx);
    const pairs: [number[], number[]][] = [
      [[7], [7]],
      [[3, 33], [33]],
      [[3, 1, 5], [1, 4, 1]],
      [[2, 77, 9], [2, 1, 9]],
    ];
    const ops: [string, (a: Tensor, b: Tensor) => Tensor][] = [
      ['add', E.add],
      ['sub', E.sub],
      ['mul', E.mul],
      ['maximum', E.maximum],
    ];
    for (const [sa, sb] of pairs)
      for (const [name, f] of ops)
        for (const bType of ['f16', 'f32'] as const) {
          const a = f16Rounded(rand(R.rprod(sa), 5));
          const b = bType === 'f16' ? f16Rounded(rand(R.rprod(sb), 6)) : rand(R.rprod(sb), 6);
          const y = tidy(() => f(Tensor.from(a, sa, 'f16'), Tensor.from(b, sb, bType)));
          expect(y.dtype).toBe(bType === 'f16' ? 'f16' : 'f32');
          const ref = R.rmap([R.rt64(a, sa), R.rt64(b, sb)], R.BINARY_REF[name]);
          // an f32 result is exact up to f32 arithmetic
          expectClose(await y.data(), ref.data, bType === 'f16' ? OUT_TOL : 1e-6, `${name} f16 x ${bType} [${sa}] [${sb}]`);
          y.dispose();
        }
  });

  it('where takes its dtype from the two branches, not the condition', async (ctx) => {
    needF16(ctx);
    const c = Float32Array.from([1, 0, 0, 1, 1, 0, 1]);
    const a = f16Rounded(rand(7, 1));
    const b = f16Rounded(rand(7, 2));
    const y = tidy(() => E.where(Tensor.from(c, [7]), Tensor.from(a, [7], 'f16'), Tensor.from(b, [7], 'f16')));
    expect(y.dtype).toBe('f16');
    expect([...(await y.data())]).toEqual([...c].map((v, i) => (v ? a[i] : b[i])));
  });

  it('full, zeros, ones and their *Like versions in f16', async (ctx) => {
    needF16(ctx);
    const z = E.full([5, 3], 2.5, 'f16');
    expect(z.dtype).toBe('f16');
    expect([...(await z.data())]).toEqual(new Array(15).fill(2.5));
    const o = E.onesLike(z);
    expect(o.dtype).toBe('f16');
    expect([...(await o.data())]).toEqual(new Array(15).fill(1));
    z.dispose();
    o.dispose();
  });
});

describe('cast', () => {
  it('rounds to nearest like the host conversion and widens exactly', async (ctx) => {
    needF16(ctx);
    // values that need rounding, overflow to inf, subnormals, and ties
    const d = Float32Array.from([...rand(997, 8, -70000, 70000), 1 + 2 ** -11, 1 + 3 * 2 ** -11, 6e-8, -3e-5, 65519, 65520, 0, -0]);
    const h = tidy(() => E.cast(Tensor.from(d, [d.length]), 'f16'));
    expect(h.dtype).toBe('f16');
    expect([...(await h.data())]).toEqual([...f16Rounded(d)]);
    const back = tidy(() => E.cast(h, 'f32'));
    expect(back.dtype).toBe('f32');
    expect([...(await back.data())]).toEqual([...f16Rounded(d)]);
    const same = tidy(() => E.cast(back, 'f32'));
    expect(same).toBe(back);
    h.dispose();
    back.dispose();
  });

  it('casts the gradient back to the input dtype', async (ctx) => {
    needF16(ctx);
    const x = Tensor.from(rand(10, 3), [10]);
    x.requiresGrad = true;
    const w = f16Rounded(rand(10, 4));
    const [g] = tidy(() => grad(E.sum(E.mul(E.cast(x, 'f16'), Tensor.from(w, [10], 'f16'))), [x]));
    expect(g.dtype).toBe('f32');
    expect([...(await g.data())]).toEqual([...w]);
  });

  it('concat refuses tensors of different dtypes instead of mixing their bits', (ctx) => {
    needF16(ctx);
    const a = Tensor.from([1, 2], [2], 'f16');
    const b = Tensor.from([3, 4], [2]);
    expect(() => E.concat([a, b])).toThrow(/concat: dtypes f16, f32 differ/);
  });

  it('rejects non-float tensors with a message naming the op', () => {
    const i = Tensor.from(Int32Array.from([1, 2]), [2], 'i32');
    expect(() => E.cast(i, 'f16')).toThrow(/cast: input must be f32 or f16, got i32/);
    expect(() => E.exp(i)).toThrow(/exp: input must be f32 or f16, got i32/);
  });
});

describe('f16 reductions and data movement', () => {
  it('sum and max of f16 accumulate in f32 and store f16 (small and wide reductions)', async (ctx) => {
    needF16(ctx);
    for (const [s, axes] of [
      [[3, 7, 33], [1]],
      [[2, 1000], [1]],
      [[5, 300], [1]],
      [[4, 9, 5], [0, 2]],
    ] as [number[], number[]][]) {
      const d = f16Rounded(rand(R.rprod(s), 9));
      for (const op of ['sum', 'max'] as const) {
        const y = tidy(() => (op === 'sum' ? E.sum : E.max)(Tensor.from(d, s, 'f16'), axes));
        expect(y.dtype).toBe('f16');
        expectClose(await y.data(), R.rreduce(R.rt64(d, s), axes, op).data, OUT_TOL, `${op} f16 [${s}] axes ${axes}`);
        y.dispose();
      }
    }
  });

  it('slice, pad, concat, permute and broadcast keep f16, and so do their gradients', async (ctx) => {
    needF16(ctx);
    const s = [3, 5, 7];
    const d = f16Rounded(rand(105, 12));
    const x = Tensor.from(d, s, 'f16');
    x.requiresGrad = true;
    const fns: [string, (x: Tensor) => Tensor, (x: R.RT) => R.RT][] = [
      ['slice', (t) => E.slice(t, { 1: [1, 4] }), (t) => R.rslice(t, [[0, 3], [1, 4], [0, 7]])],
      ['pad', (t) => E.pad(t, { 2: [1, 2] }), (t) => R.rpad(t, [[0, 0], [0, 0], [1, 2]])],
      ['concat', (t) => E.concat([t, t], 1), (t) => R.rconcat([t, t], 1)],
      ['permute', (t) => E.permute(t, [2, 0, 1]), (t) => R.rpermute(t, [2, 0, 1])],
    ];
    for (const [name, f, ref] of fns) {
      const y = tidy(() => f(x));
      expect(y.dtype).toBe('f16');
      expect([...(await y.data())]).toEqual([...ref(R.rt64(d, s)).data]);
      // d/dx sum(f(x) * r) for a random r: the reference gradient scatters r back
      const r = f16Rounded(rand(y.size, 13));
      const [g] = tidy(() => grad(E.sum(E.mul(f(x), Tensor.from(r, y.shape, 'f16'))), [x]));
      expect(g.dtype).toBe('f16');
      const want = new Float64Array(105);
      const fd = ref(R.rt64(Float32Array.from(want.map((_, i) => i + 1)), s)).data; // which input each output copies
      fd.forEach((v, o) => {
        if (v) want[v - 1] += r[o];
      });
      expectClose(await g.data(), want, OUT_TOL, `${name} f16 gradient`);
      y.dispose();
      g.dispose();
    }
  });
});

describe('autodiff with f16 activations', () => {
  it('f16 chains get f16 gradients that match the float64 reference', async (ctx) => {
    needF16(ctx);
    const s = [4, 33];
    const xd = f16Rounded(rand(132, 21, -2, 2));
    const x = Tensor.from(xd, s, 'f16');
    x.requiresGrad = true;
    // L = sum(silu(x) * x + exp(x / 2)): x used three times, so gradients accumulate in f16
    const [g] = tidy(() => grad(E.sum(E.add(E.mul(E.silu(x), x), E.exp(E.scale(x, 0.5)))), [x]));
    expect(g.dtype).toBe('f16');
    const sig = (v: number) => 1 / (1 + Math.exp(-v));
    const want = [...xd].map((v) => v * sig(v) + v * (sig(v) * (1 + v * (1 - sig(v)))) + 0.5 * Math.exp(v / 2));
    // each summand is stored in f16 before it is accumulated: three roundings
    expectClose(await g.data(), want, 2e-3, 'f16 chain gradient');
    g.dispose();
  });

  it('an f32 upstream gradient for an f16 output is cast to f16; mixed ops give each input its own dtype', async (ctx) => {
    needF16(ctx);
    const a = Tensor.from(f16Rounded(rand(6, 1)), [2, 3], 'f16');
    const b = Tensor.from(rand(3, 2), [3]);
    a.requiresGrad = true;
    b.requiresGrad = true;
    const [ga, gb] = tidy(() => {
      const y = E.mul(a, b); // f32
      return grad(E.cast(y, 'f16'), [a, b], Tensor.from(Float32Array.from([1, 2, 3, 4, 5, 6]), [2, 3]));
    });
    expect(ga.dtype).toBe('f16');
    expect(gb.dtype).toBe('f32');
    const bd = await b.data();
    const ad = await a.data();
    expectClose(await ga.data(), [1, 2, 3, 4, 5, 6].map((v, i) => v * bd[i % 3]), OUT_TOL, 'dA');
    expectClose(await gb.data(), [0, 1, 2].map((j) => (1 + j) * ad[j] + (4 + j) * ad[3 + j]), 1e-6, 'dB');
  });
});
