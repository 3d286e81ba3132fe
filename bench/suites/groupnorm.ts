// Group norm (32 groups, per-channel affine) at a UNet shape (2x320x32x32, CFG batch at a 32x32 latent) and
// a VAE-decoder shape (1x128x128x128), forward, backward (input gradient) and a full autodiff step, next to
// the vec4 copy of the same element count. Bytes are what our kernels move, per the design comment in
// kernels/groupnorm.ts: forward reads x for the statistics and again to write y (3 tensor sizes; the
// second statistics sweep re-reads a slice that is still in cache), backward reads x and dy for the sums
// and again to write dx (5 tensor sizes); the autodiff row counts both (8). The same nominal bytes are
// used for the peers, which have no group-norm op: @tensorflow/tfjs-backend-webgpu composes reshape ->
// tf.moments -> normalize -> affine, @jax-js/jax reshape -> nn.standardize -> affine; their backward is
// their autodiff (tf.grads; jax vjp, whose closure can also run the backward alone).
// The f16 rows (ours only) store x, y, dy and dx as f16 (weight and bias f32): the same passes moving 2 bytes
// per element, so their bytes are half the f32 rows'.
import { Tensor, grad, tidy } from '../../engine/index.js';
import { groupNorm } from '../../kernels/groupnorm.js';
import { copyCase, gpuFn, loadJax, loadTfjs, randn, tfDone, jaxDone, disposeAll, type TfT, type BenchCase, type BenchSuite } from '../lib.js';

interface Shape {
  N: number;
  C: number;
  H: number;
  W: number;
}
const G = 32;
const EPS = 1e-5;
const SHAPES: Shape[] = [
  { N: 2, C: 320, H: 32, W: 32 },
  { N: 1, C: 128, H: 128, W: 128 },
];
const size = (s: Shape) => s.N * s.C * s.H * s.W;
const shapeStr = (s: Shape) => `${s.N}x${s.C}x${s.H}x${s.W}`;
const BYTES = { fwd: 3, bwd: 5, 'fwd+bwd': 8 } as const;

function oursCases(s: Shape, dt: 'f32' | 'f16'): BenchCase[] {
  const { N, C, H, W } = s;
  const n = size(s);
  const suffix = dt === 'f16' ? ' f16' : '';
  let x: Tensor, w: Tensor, b: Tensor, g: Tensor;
  let y: Tensor | null = null;
  const alloc = () => {
    x = Tensor.from(randn(n, 1).map((v) => 3 * v + 0.5), [N, C, H, W], dt);
    w = Tensor.from(randn(C, 2).map((v) => 1 + 0.1 * v), [C]);
    b = Tensor.from(randn(C, 3).map((v) => 0.1 * v), [C]);
    g = Tensor.from(randn(n, 4), [N, C, H, W], dt);
  };
  const free = () => {
    y?.dispose();
    y = null;
    [x, w, b, g].forEach((t) => t?.dispose());
  };
  const mk = (pass: BenchCase['pass'], name: string, make: () => () => Tensor | Tensor[]): BenchCase => ({
    name: name + suffix,
    shape: shapeStr(s),
    pass,
    bytes: BYTES[pass] * (dt === 'f16' ? 2 : 4) * n,
    async setup() {
      alloc();
      return gpuFn(make());
    },
    teardown: free,
  });
  return [
    ...(dt === 'f32' ? [copyCase(n, shapeStr(s))] : []),
    mk('fwd', 'groupnorm', () => () => groupNorm(x, G, w, b, EPS)),
    // one recorded forward; each call runs its backward rule again (the graph is retained)
    mk('bwd', 'groupnorm backward', () => {
      const xx = x.detach().requireGrad();
      y = groupNorm(xx, G, w, b, EPS);
      return () => grad(y!, [xx], g, false, true);
    }),
    mk('fwd+bwd', 'groupnorm autodiff', () => () =>
      tidy(() => {
        const xx = x.detach().requireGrad();
        return grad(groupNorm(xx, G, w, b, EPS), [xx], g);
      }),
    ),
  ];
}

type Tf = typeof import('@tensorflow/tfjs-core');


function tfCases(s: Shape): BenchCase[] {
  const { N, C, H, W } = s;
  const n = size(s);
  const lib = '@tensorflow/tfjs-backend-webgpu';
  let ts: TfT[] = [];
  const gn = (tf: Tf, x: TfT, w: TfT, b: TfT) =>
    tf.tidy(() => {
      const xr = tf.reshape(x, [N, G, (C / G) * H * W]);
      const { mean, variance } = tf.moments(xr, 2, true);
      const xn = tf.reshape(tf.mul(tf.sub(xr, mean), tf.rsqrt(tf.add(variance, EPS))), [N, C, H, W]);
      return tf.add(tf.mul(xn, tf.reshape(w, [1, C, 1, 1])), tf.reshape(b, [1, C, 1, 1]));
    });
  const mk = (pass: BenchCase['pass'], name: string, run: (tf: Tf, x: TfT, w: TfT, b: TfT, g: TfT) => TfT[]): BenchCase => ({
    name,
    shape: shapeStr(s),
    pass,
    bytes: BYTES[pass] * 4 * n,
    library: lib,
    async setup() {
      const tf = await loadTfjs();
      if (!tf) return null;
      const x = tf.tensor4d(randn(n, 1).map((v) => 3 * v + 0.5), [N, C, H, W]);
      const w = tf.tensor1d(randn(C, 2).map((v) => 1 + 0.1 * v));
      const b = tf.tensor1d(randn(C, 3).map((v) => 0.1 * v));
      const g = tf.tensor4d(randn(n, 4), [N, C, H, W]);
      ts = [x, w, b, g];
      return async () => tfDone(tf, run(tf, x, w, b, g));
    },
    teardown: () => ts.forEach((t) => t.dispose()),
  });
  return [
    mk('fwd', 'groupnorm (moments+affine)', (tf, x, w, b) => [gn(tf, x, w, b)]),
    mk('fwd+bwd', 'groupnorm (moments+affine) tf.grads', (tf, x, w, b, g) => tf.grads((a: TfT) => gn(tf, a, w, b))([x], g)),
  ];
}

type Jax = typeof import('@jax-js/jax');
type Arr = import('@jax-js/jax').Array;

function jaxCases(s: Shape): BenchCase[] {
  const { N, C, H, W } = s;
  const n = size(s);
  const lib = '@jax-js/jax';
  let arrs: Arr[] = [];
  let owned: { dispose(): void }[] = [];
  const gn = (jax: Jax, x: Arr, w: Arr, b: Arr) => {
    const np = jax.numpy;
    const xn = jax.nn.standardize(x.reshape([N, G, (C / G) * H * W]), -1, { epsilon: EPS }).reshape([N, C, H, W]);
    return np.add(np.multiply(xn, w.reshape([1, C, 1, 1])), b.reshape([1, C, 1, 1]));
  };
  const mk = (pass: BenchCase['pass'], name: string, make: (jax: Jax, x: Arr, w: Arr, b: Arr, g: Arr) => () => Arr[]): BenchCase => ({
    name,
    shape: shapeStr(s),
    pass,
    bytes: BYTES[pass] * 4 * n,
    library: lib,
    async setup() {
      const jax = await loadJax();
      if (!jax) return null;
      const np = jax.numpy;
      const x = np.array(randn(n, 1).map((v) => 3 * v + 0.5)).reshape([N, C, H, W]);
      const w = np.array(randn(C, 2).map((v) => 1 + 0.1 * v));
      const b = np.array(randn(C, 3).map((v) => 0.1 * v));
      const g = np.array(randn(n, 4)).reshape([N, C, H, W]);
      arrs = [x, w, b, g];
      const run = make(jax, x, w, b, g);
      return async () => jaxDone(run());
    },
    teardown() {
      disposeAll(owned);
      disposeAll(arrs);
    },
  });
  return [
    mk('fwd', 'groupnorm (standardize+affine)', (jax, x, w, b) => () => [gn(jax, x.ref, w.ref, b.ref)]),
    mk('bwd', 'groupnorm (standardize+affine) vjp', (jax, x, w, b, g) => {
      const [y, f] = jax.vjp((a: Arr) => gn(jax, a, w.ref, b.ref), [x.ref]);
      y.dispose();
      owned.push(f);
      return () => f(g.ref) as Arr[];
    }),
    mk('fwd+bwd', 'groupnorm (standardize+affine) vjp', (jax, x, w, b, g) => () => {
      const [y, f] = jax.vjp((a: Arr) => gn(jax, a, w.ref, b.ref), [x.ref]);
      y.dispose();
      const gs = f(g.ref) as Arr[];
      f.dispose();
      return gs;
    }),
  ];
}

const suite: BenchSuite = {
  name: 'groupnorm',
  cases: SHAPES.flatMap((s) => [...oursCases(s, 'f32'), ...oursCases(s, 'f16'), ...tfCases(s), ...jaxCases(s)]),
  notes: ['bytes are our kernels\' traffic (fwd 3, bwd 5, fwd+bwd 8 tensor sizes), used for the peers too; compare rows with the copy row of the same shape'],
};
export default suite;
