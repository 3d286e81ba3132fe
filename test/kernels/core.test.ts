// Every core op forward against the float64 reference on odd shapes, and backward against finite differences.
import { beforeAll, describe, it } from 'vitest';
import * as E from '../../engine/index.js';
import { Tensor, tidy } from '../../engine/index.js';
import { setMatmulVariant } from '../../kernels/matmul.js';
import * as R from '../../kernels/core.ref.js';
import { checkGrad, expectClose, gpu, rand } from '../helpers/check.js';

beforeAll(async () => {
  await gpu();
});

const rtOf = (d: Float32Array, s: number[]) => R.rt64(d, s);

async function fwd(name: string, shapes: number[][], gpuFn: (...x: Tensor[]) => Tensor, refFn: (...x: R.RT[]) => R.RT, tol = 1e-5, lo = -1, hi = 1) {
  const data = shapes.map((s, i) => rand(R.rprod(s), 11 + i, lo, hi));
  const got = await tidy(() => gpuFn(...data.map((d, i) => Tensor.from(d, shapes[i])))).data();
  const ref = refFn(...data.map((d, i) => rtOf(d, shapes[i])));
  expectClose(got, ref.data, tol, `${name} [${shapes.map((s) => `[${s}]`).join(' ')}]`);
}

const UN: [string, (x: Tensor) => Tensor, number, number, number, number][] = [
  ['neg', E.neg, -2, 2, 0, 0],
  ['exp', E.exp, -3, 3, 0, 0],
  ['log', E.log, 0.1, 3, 0, 0],
  ['sqrt', E.sqrt, 0.1, 3, 0, 0],
  ['rsqrt', E.rsqrt, 0.1, 3, 0, 0],
  ['sigmoid', E.sigmoid, -6, 6, 0, 0],
  ['silu', E.silu, -6, 6, 0, 0],
  ['gelu', E.gelu, -5, 5, 0, 0],
  ['quick_gelu', E.quickGelu, -5, 5, 0, 0],
  ['tanh', E.tanh, -4, 4, 0, 0],
  ['clamp', (x) => E.clamp(x, -0.5, 0.7), -2, 2, -0.5, 0.7],
  ['pow', (x) => E.pow(x, 3), -2, 2, 3, 0],
  ['affine', (x) => E.affine(x, 1.5, -0.25), -2, 2, 1.5, -0.25],
];
const SHAPES = [[1], [7], [33], [77], [1000], [3, 7, 33], [2, 1000]];

describe('unary ops', () => {
  for (const [name, f, lo, hi, p0, p1] of UN) {
    it(`${name} forward on odd shapes`, async () => {
      for (const s of SHAPES) await fwd(name, [s], f, (x) => R.rmap([x], (v) => R.UNARY_REF[name](v, p0, p1)), 2e-6, lo, hi);
    });
    it(`${name} backward vs finite differences`, async () => {
      const shape = [3, 7];
      let d = rand(21, 5, lo, hi);
      if (name === 'clamp') d = d.map((v) => (Math.abs(v + 0.5) < 0.01 || Math.abs(v - 0.7) < 0.01 ? v + 0.05 : v));
      await checkGrad(name, [{ data: d, shape }], f, (x) => R.rmap([x], (v) => R.UNARY_REF[name](v, p0, p1)));
    });
  }
});

describe('binary ops with broadcasting', () => {
  const pairs: [number[], number[]][] = [
    [[7], [7]],
    [[3, 33], [33]],
    [[3, 1, 5], [1, 4, 1]],
    [[2, 77, 9], [2, 1, 9]],
    [[1000], [1]],
    [[2, 3, 4, 5], [3, 1, 1]],
  ];
  for (const op of ['add', 'sub', 'mul', 'div', 'maximum', 'minimum'] as const) {
    it(`${op} forward`, async () => {
      for (const [a, b] of pairs) {
        const fn = E[op] as (x: Tensor, y: Tensor) => Tensor;
        const data = [rand(R.rprod(a), 3), rand(R.rprod(b), 4, 0.5, 2)];
        const got = await tidy(() => fn(Tensor.from(data[0], a), Tensor.from(data[1], b))).data();
        const ref = R.rmap([rtOf(data[0], a), rtOf(data[1], b)], R.BINARY_REF[op]);
        expectClose(got, ref.data, 2e-6, `${op} [${a}] [${b}]`);
      }
    });
    it(`${op} backward (broadcast operands reduce their gradients)`, async () => {
      const [a, b] = [[2, 3, 5], [3, 1]];
      await checkGrad(
        op,
        [
          { data: rand(30, 8), shape: a },
          { data: rand(3, 9, 0.5, 2), shape: b },
        ],
        E[op] as (x: Tensor, y: Tensor) => Tensor,
        (x, y) => R.rmap([x, y], R.BINARY_REF[op]),
      );
    });
  }
  it('where selects and routes gradients', async () => {
    const cond = Float32Array.from(rand(15, 1).map((v) => (v > 0 ? 1 : 0)));
    await checkGrad(
      'where',
      [
        { data: rand(15, 2), shape: [3, 5] },
        { data: rand(5, 3), shape: [5] },
      ],
      (a, b) => E.where(Tensor.from(cond, [3, 5]), a, b),
      (a, b) => R.rmap([R.rt64(cond, [3, 5]), a, b], (c, x, y) => (c ? x : y)),
    );
  });
});

describe('reductions', () => {
  const cases: [number[], number[]][] = [
    [[1000], [0]],
    [[7, 33], [1]],
    [[7, 33], [0]],
    [[3, 77, 5], [0, 2]],
    [[2, 3, 4, 5], [1, 3]],
    [[5, 300], [1]],
    [[2, 3, 4], [0, 1, 2]],
  ];
  for (const op of ['sum', 'mean', 'max'] as const) {
    it(`${op} forward over any axes`, async () => {
      for (const [s, ax] of cases) await fwd(`${op} axes ${ax}`, [s], (x) => E[op](x, ax), (x) => R.rreduce(x, ax, op), 1e-5);
    });
    it(`${op} backward`, async () => {
      await checkGrad(op, [{ data: rand(60, 4), shape: [3, 4, 5] }], (x) => E[op](x, [0, 2], true), (x) => R.rreduce(x, [0, 2], op, true));
    });
  }
});

describe('data movement', () => {
  it('permute forward/backward', async () => {
    await fwd('permute', [[2, 3, 5, 7]], (x) => E.permute(x, [2, 0, 3, 1]), (x) => R.rpermute(x, [2, 0, 3, 1]));
    await checkGrad('permute', [{ data: rand(30), shape: [2, 3, 5] }], (x) => E.permute(x, [1, 2, 0]), (x) => R.rpermute(x, [1, 2, 0]));
  });
  it('slice forward/backward', async () => {
    await fwd('slice', [[7, 33]], (x) => E.slice(x, [[2, 5], [1, 30]]), (x) => R.rslice(x, [[2, 5], [1, 30]]));
    await checkGrad('slice', [{ data: rand(35), shape: [5, 7] }], (x) => E.slice(x, [[1, 4], [2, 7]]), (x) => R.rslice(x, [[1, 4], [2, 7]]));
  });
  it('concat forward/backward', async () => {
    await checkGrad(
      'concat',
      [
        { data: rand(6, 1), shape: [2, 3] },
        { data: rand(10, 2), shape: [2, 5] },
      ],
      (a, b) => E.concat([a, b], 1),
      (a, b) => R.rconcat([a, b], 1),
    );
  });
  it('pad forward/backward', async () => {
    await checkGrad('pad', [{ data: rand(12), shape: [3, 4] }], (x) => E.pad(x, [[1, 0], [0, 2]]), (x) => R.rpad(x, [[1, 0], [0, 2]]));
  });
  it('reshape and broadcastTo backward', async () => {
    await checkGrad('broadcastTo', [{ data: rand(3), shape: [3, 1] }], (x) => E.broadcastTo(x, [2, 3, 4]), (x) => R.rmap([x, R.rt64(new Float32Array(24), [2, 3, 4])], (a) => a));
  });
  it('gather (embedding lookup) with repeated ids', async () => {
    const ids = [3, 0, 3, 9, 1, 3];
    await checkGrad('gather', [{ data: rand(50), shape: [10, 5] }], (t) => E.gather(t, ids), (t) => R.rgather(t, ids), { samples: 50 });
  });
});

describe('matmul', () => {
  const shapes: [number[], number[], boolean, boolean][] = [
    [[1, 1], [1, 1], false, false],
    [[7, 33], [33, 77], false, false],
    [[33, 7], [33, 5], true, false],
    [[9, 13], [77, 13], false, true],
    [[13, 9], [7, 13], true, true],
    [[3, 17, 33], [33, 19], false, false],
    [[3, 17, 33], [3, 19, 33], false, true],
    [[2, 64, 40], [2, 77, 40], false, true],
    [[100, 1000], [1000, 7], false, false],
  ];
  for (const variant of ['register', 'shared'] as const) {
    it(`${variant} tiling forward on odd shapes, transposes and batch broadcast`, async () => {
      setMatmulVariant(variant);
      try {
        for (const [a, b, ta, tb] of shapes)
          await fwd(`matmul ${variant} ${ta ? 'Aᵀ' : 'A'}${tb ? 'Bᵀ' : 'B'}`, [a, b], (x, y) => E.matmul(x, y, { transA: ta, transB: tb }), (x, y) => R.rmatmul(x, y, ta, tb), 1e-5);
      } finally {
        setMatmulVariant(null);
      }
    });
    it(`${variant} tiling backward`, async () => {
      setMatmulVariant(variant);
      try {
        for (const [a, b, ta, tb] of [
          [[5, 7], [7, 3], false, false],
          [[7, 5], [3, 7], true, true],
          [[2, 5, 7], [7, 3], false, false],
          [[2, 5, 7], [2, 3, 7], false, true],
        ] as [number[], number[], boolean, boolean][])
          await checkGrad(
            `matmul ${ta}${tb}`,
            [
              { data: rand(R.rprod(a), 1), shape: a },
              { data: rand(R.rprod(b), 2), shape: b },
            ],
            (x, y) => E.matmul(x, y, { transA: ta, transB: tb }),
            (x, y) => R.rmatmul(x, y, ta, tb),
          );
      } finally {
        setMatmulVariant(null);
      }
    });
  }
  it('linear with bias: forward and gradients for input, weight and bias', async () => {
    const ref = (x: R.RT, w: R.RT, b: R.RT) => R.rmap([R.rmatmul(x, w, false, true), b], (p, q) => p + q);
    await checkGrad(
      'linear',
      [
        { data: rand(2 * 3 * 7, 1), shape: [2, 3, 7] },
        { data: rand(5 * 7, 2), shape: [5, 7] },
        { data: rand(5, 3), shape: [5] },
      ],
      (x, w, b) => E.linear(x, w, b),
      (x, w, b) => {
        const y = ref({ shape: [6, 7], data: x.data }, w, b);
        return { shape: [2, 3, 5], data: y.data };
      },
    );
  });
});

describe('softmax and layer norm', () => {
  it('softmax forward on odd rows', async () => {
    for (const s of [[1], [7], [3, 77], [2, 1000], [5, 33]]) await fwd('softmax', [s], (x) => E.softmax(x, 0.7), (x) => R.rsoftmax(x, 0.7), 1e-5, -4, 4);
  });
  it('softmax backward', async () => {
    await checkGrad('softmax', [{ data: rand(3 * 77, 4, -3, 3), shape: [3, 77] }], (x) => E.softmax(x, 0.5), (x) => R.rsoftmax(x, 0.5));
  });
  it('layer norm forward and backward (input, gamma, beta), short rows (one invocation per row) and long rows (one workgroup per row)', async () => {
    for (const s of [[1, 7], [3, 33], [77, 64], [130, 256], [2, 257], [2, 1000]])
      await fwd('layerNorm', [s, [s[1]], [s[1]]], (x, w, b) => E.layerNorm(x, w, b), (x, w, b) => R.rlayerNorm(x, w, b), 1e-5);
    await checkGrad(
      'layerNorm',
      [
        { data: rand(5 * 33, 1, -2, 2), shape: [5, 33] },
        { data: rand(33, 2, 0.5, 1.5), shape: [33] },
        { data: rand(33, 3), shape: [33] },
      ],
      (x, w, b) => E.layerNorm(x, w, b),
      (x, w, b) => R.rlayerNorm(x, w, b),
    );
    await checkGrad(
      'layerNorm (long rows)',
      [
        { data: rand(2 * 300, 4, -2, 2), shape: [2, 300] },
        { data: rand(300, 5, 0.5, 1.5), shape: [300] },
        { data: rand(300, 6), shape: [300] },
      ],
      (x, w, b) => E.layerNorm(x, w, b),
      (x, w, b) => R.rlayerNorm(x, w, b),
    );
  });
});
