// 3x3 convolutions (stride 1, padding 1) at UNet and VAE-decoder shapes: forward, backward-data,
// backward-weight and a full autodiff step (gradients of input and weight), ours next to
// @tensorflow/tfjs-backend-webgpu (NHWC, its native layout: tf.conv2d, tf.conv2dTranspose for the input
// gradient, the Conv2DBackpropFilter kernel for the weight gradient, tf.grads for the autodiff step) and
// @jax-js/jax (NCHW: lax.conv, vjp for the gradients).
// flops of one pass = 2 * N * O * Ho * Wo * C * kh * kw (all three passes do the same multiply-adds).
// The f16 rows (ours only, the UNet level-0 shape) store x, y, dY and dX as f16 (weights f32, f32 arithmetic).
import { Tensor, grad, rt, tidy } from '../../engine/index.js';
import { conv2d, conv2dRaw, setConv2dVariant, setConv2dWinograd } from '../../kernels/conv2d.js';
import { setWinogradTextureLoads } from '../../kernels/winograd.js';
import { gpuFn, gpuOnly, loadJax, loadTfjs, randn, tfDone, jaxDone, disposeAll, withSetting, type TfT, type BenchCase, type BenchSuite } from '../lib.js';

interface Shape {
  N: number;
  C: number;
  O: number;
  H: number;
  W: number;
}
const K = 3;
const SHAPES: Shape[] = [
  { N: 2, C: 320, O: 320, H: 32, W: 32 }, // UNet level 0 at a 32x32 latent, CFG batch
  { N: 2, C: 640, O: 640, H: 16, W: 16 }, // UNet level 1
  { N: 1, C: 128, O: 128, H: 128, W: 128 }, // VAE decoder, last up block at 256x256 / 2
];

const shapeStr = (s: Shape) => `${s.N}x${s.C}x${s.H}x${s.W} * ${s.O}x${s.C}x3x3`;
const flopsOf = (s: Shape) => 2 * s.N * s.O * s.H * s.W * s.C * K * K;

function oursCases(s: Shape): BenchCase[] {
  const { N, C, O, H, W } = s;
  const opts = { padding: 1 };
  let x: Tensor, w: Tensor, b: Tensor, gy: Tensor;
  // dt: the storage dtype of the activations and their gradients (x, y, dY, dX)
  const alloc = (dt: 'f32' | 'f16') => {
    x = Tensor.from(randn(N * C * H * W, 1), [N, C, H, W], dt);
    w = Tensor.from(randn(O * C * K * K, 2).map((v) => v * 0.05), [O, C, K, K]);
    b = Tensor.from(randn(O, 3), [O]);
    gy = Tensor.from(randn(N * O * H * W, 4), [N, O, H, W], dt);
  };
  const mk = (name: string, pass: BenchCase['pass'], mult: number, fn: () => Tensor | Tensor[], dt: 'f32' | 'f16' = 'f32'): BenchCase => ({
    name: dt === 'f16' ? `${name} f16` : name,
    shape: shapeStr(s),
    pass,
    flops: mult * flopsOf(s),
    async setup() {
      if (dt === 'f16' && !rt().features.has('shader-f16')) return null;
      alloc(dt);
      return gpuFn(fn);
    },
    teardown: () => [x, w, b, gy].forEach((t) => t?.dispose()),
  });
  const f16Rows = s === SHAPES[0];
  // the direct kernels, where the adapter's default is Winograd (CPU adapters), for comparison
  const direct = (name: string, fn: () => Tensor): BenchCase =>
    mk(`${name} [direct]`, name === 'conv2d' ? 'fwd' : 'bwd', 1, () => withSetting(() => setConv2dWinograd('never'), () => setConv2dWinograd('auto'), fn));
  // Winograd's transforms reading their inputs from the buffers instead of staging textures (CPU adapters)
  const buffers = (name: string, fn: () => Tensor): BenchCase =>
    mk(`${name} [transforms from buffers]`, name === 'conv2d' ? 'fwd' : 'bwd', 1, () => withSetting(() => setWinogradTextureLoads(false), () => setWinogradTextureLoads(true), fn));
  // GPUs only (their default is the 'register' tiling without Winograd): the 'shared' tiling (forward and
  // stride-1 backward-data) and Winograd in all three passes, so that one run on a GPU compares them with the
  // default. Skipped on CPU adapters, whose default is Winograd and where workgroup-memory tiles are slow
  // (2.3 GFLOP/s against 'register''s 5.8 on lavapipe at 2x320x32x32).
  const sharedTiles = (name: string, fn: () => Tensor): BenchCase =>
    gpuOnly(mk(`${name} [shared tiles]`, name === 'conv2d' ? 'fwd' : 'bwd', 1, () => withSetting(() => setConv2dVariant('shared'), () => setConv2dVariant(null), fn)));
  const winogradAlways = (name: string, fn: () => Tensor): BenchCase =>
    gpuOnly(mk(`${name} [winograd]`, name === 'conv2d' ? 'fwd' : 'bwd', 1, () => withSetting(() => setConv2dWinograd('always'), () => setConv2dWinograd('auto'), fn)));
  return [
    mk('conv2d', 'fwd', 1, () => conv2dRaw.forward(x, w, b, opts)),
    mk('conv2d dX', 'bwd', 1, () => conv2dRaw.backwardData(gy, x, w, opts)),
    mk('conv2d dW', 'bwd', 1, () => conv2dRaw.backwardWeight(gy, x, w, opts)),
    direct('conv2d', () => conv2dRaw.forward(x, w, b, opts)),
    direct('conv2d dX', () => conv2dRaw.backwardData(gy, x, w, opts)),
    direct('conv2d dW', () => conv2dRaw.backwardWeight(gy, x, w, opts)),
    buffers('conv2d', () => conv2dRaw.forward(x, w, b, opts)),
    buffers('conv2d dX', () => conv2dRaw.backwardData(gy, x, w, opts)),
    buffers('conv2d dW', () => conv2dRaw.backwardWeight(gy, x, w, opts)),
    sharedTiles('conv2d', () => conv2dRaw.forward(x, w, b, opts)),
    sharedTiles('conv2d dX', () => conv2dRaw.backwardData(gy, x, w, opts)),
    winogradAlways('conv2d', () => conv2dRaw.forward(x, w, b, opts)),
    winogradAlways('conv2d dX', () => conv2dRaw.backwardData(gy, x, w, opts)),
    winogradAlways('conv2d dW', () => conv2dRaw.backwardWeight(gy, x, w, opts)),
    mk('conv2d autodiff', 'fwd+bwd', 3, () =>
      tidy(() => {
        const xx = x.detach().requireGrad();
        const ww = w.detach().requireGrad();
        return grad(conv2d(xx, ww, b, opts), [xx, ww], gy);
      }),
    ),
    ...(f16Rows
      ? [
          mk('conv2d', 'fwd', 1, () => conv2dRaw.forward(x, w, b, opts), 'f16'),
          mk('conv2d dX', 'bwd', 1, () => conv2dRaw.backwardData(gy, x, w, opts), 'f16'),
          mk('conv2d dW', 'bwd', 1, () => conv2dRaw.backwardWeight(gy, x, w, opts), 'f16'),
        ]
      : []),
  ];
}

type Tf = typeof import('@tensorflow/tfjs-core');


function tfCases(s: Shape): BenchCase[] {
  const { N, C, O, H, W } = s;
  const lib = '@tensorflow/tfjs-backend-webgpu';
  let ts: TfT[] = [];
  const mk = (name: string, pass: BenchCase['pass'], mult: number, run: (tf: Tf, x: TfT, f: TfT, dy: TfT) => TfT[]): BenchCase => ({
    name,
    shape: shapeStr(s),
    pass,
    flops: mult * flopsOf(s),
    library: lib,
    async setup() {
      const tf = await loadTfjs();
      if (!tf) return null;
      const x = tf.tensor4d(randn(N * H * W * C, 1), [N, H, W, C]);
      const f = tf.tensor4d(randn(K * K * C * O, 2).map((v) => v * 0.05), [K, K, C, O]);
      const dy = tf.tensor4d(randn(N * H * W * O, 4), [N, H, W, O]);
      ts = [x, f, dy];
      return async () => tfDone(tf, run(tf, x, f, dy));
    },
    teardown: () => ts.forEach((t) => t.dispose()),
  });
  return [
    mk('conv2d', 'fwd', 1, (tf, x, f) => [tf.conv2d(x as import('@tensorflow/tfjs-core').Tensor4D, f as import('@tensorflow/tfjs-core').Tensor4D, 1, 'same')]),
    mk('conv2d dX', 'bwd', 1, (tf, _x, f, dy) => [
      tf.conv2dTranspose(dy as import('@tensorflow/tfjs-core').Tensor4D, f as import('@tensorflow/tfjs-core').Tensor4D, [N, H, W, C], 1, 'same'),
    ]),
    mk('conv2d dW', 'bwd', 1, (tf, x, _f, dy) => [
      tf.engine().runKernel('Conv2DBackpropFilter', { x, dy }, { strides: [1, 1], pad: 'same', dataFormat: 'NHWC', dimRoundingMode: undefined, filterShape: [K, K, C, O] } as never) as TfT,
    ]),
    mk('conv2d autodiff', 'fwd+bwd', 3, (tf, x, f, dy) =>
      tf.grads((a: TfT, b: TfT) => tf.conv2d(a as import('@tensorflow/tfjs-core').Tensor4D, b as import('@tensorflow/tfjs-core').Tensor4D, 1, 'same'))([x, f], dy),
    ),
  ];
}

type Jax = typeof import('@jax-js/jax');
type Arr = import('@jax-js/jax').Array;

function jaxCases(s: Shape): BenchCase[] {
  const { N, C, O, H, W } = s;
  const lib = '@jax-js/jax';
  const pad: [number, number][] = [
    [1, 1],
    [1, 1],
  ];
  let arrs: Arr[] = [];
  let owned: { dispose(): void }[] = [];
  const inputs = (jax: Jax) => {
    const np = jax.numpy;
    const x = np.array(randn(N * C * H * W, 1)).reshape([N, C, H, W]);
    const w = np.array(randn(O * C * K * K, 2).map((v) => v * 0.05)).reshape([O, C, K, K]);
    const g = np.array(randn(N * O * H * W, 4)).reshape([N, O, H, W]);
    arrs = [x, w, g];
    return { x, w, g };
  };
  const conv = (jax: Jax, x: Arr, w: Arr) => jax.lax.conv(x, w, [1, 1], pad);
  const mk = (name: string, pass: BenchCase['pass'], mult: number, make: (jax: Jax, a: { x: Arr; w: Arr; g: Arr }) => () => Arr[]): BenchCase => ({
    name,
    shape: shapeStr(s),
    pass,
    flops: mult * flopsOf(s),
    library: lib,
    async setup() {
      const jax = await loadJax();
      if (!jax) return null;
      const run = make(jax, inputs(jax));
      return async () => jaxDone(run());
    },
    teardown() {
      disposeAll(owned);
      disposeAll(arrs);
    },
  });
  return [
    mk('conv2d', 'fwd', 1, (jax, { x, w }) => () => [conv(jax, x.ref, w.ref)]),
    // the vjp closures are linear in the cotangent: built once, each call is one transposed convolution
    mk('conv2d dX', 'bwd', 1, (jax, { x, w, g }) => {
      const [y, f] = jax.vjp((xx: Arr) => conv(jax, xx, w.ref), [x.ref]);
      y.dispose();
      owned.push(f);
      return () => f(g.ref) as Arr[];
    }),
    mk('conv2d dW', 'bwd', 1, (jax, { x, w, g }) => {
      const [y, f] = jax.vjp((ww: Arr) => conv(jax, x.ref, ww), [w.ref]);
      y.dispose();
      owned.push(f);
      return () => f(g.ref) as Arr[];
    }),
    mk('conv2d autodiff', 'fwd+bwd', 3, (jax, { x, w, g }) => () => {
      const [y, f] = jax.vjp((xx: Arr, ww: Arr) => conv(jax, xx, ww), [x.ref, w.ref]);
      y.dispose();
      const gs = f(g.ref) as Arr[];
      f.dispose();
      return gs;
    }),
  ];
}

const suite: BenchSuite = {
  name: 'conv',
  cases: SHAPES.flatMap((s) => [...oursCases(s), ...tfCases(s), ...jaxCases(s)]),
};
export default suite;
