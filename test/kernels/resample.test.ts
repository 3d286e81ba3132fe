// Nearest 2x upsampling and PyTorch-compatible bicubic resizing: forward against float64 references that
// follow PyTorch's algorithm, backward against finite differences and against the exact transposed sums,
// and the chunked path for tensors larger than one storage binding.
import { beforeAll, describe, it } from 'vitest';
import { Tensor, grad, rt, tidy } from '../../engine/index.js';
import { resizeBicubic, upsampleNearest2x } from '../../kernels/resample.js';
import { rresizeBicubic, rupsampleNearest2x } from '../../kernels/resample.ref.js';
import { rprod, rt64 } from '../../kernels/core.ref.js';
import { checkGrad, expectClose, gpu, rand } from '../helpers/check.js';

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
