// Multi-head attention at the UNet's first level for a 32x32 latent with the CFG batch: B=2, 8 heads of
// d=40, 1024 queries; self-attention (1024 keys) and cross-attention on the 77 text tokens. Ours is the
// fused kernel (kernels/attention.ts: forward, backward from the saved logsumexp, and a full autodiff step).
// The 'f16' rows store q, k, v, the output and the gradients in f16 (f32 arithmetic; needs shader-f16).
// Peers have no usable fused op (tfjs has none; @jax-js/jax's nn.dotProductAttention goes through einsum,
// which needs iterator helpers that Node 20 lacks), so their rows are the unfused composition batched
// matmul -> softmax -> matmul on head-major [B*H, S, D] (the permutes they would need from our layout are
// left out): @tensorflow/tfjs-backend-webgpu with tf.grads for the autodiff step (tfjs cannot run a
// backward on its own), @jax-js/jax with vjp (whose closure also runs the backward alone).
// Nominal flops (the same for every library, so GFLOP/s compare times): forward 4*B*H*Sq*Sk*D,
// backward 10*B*H*Sq*Sk*D (recomputing the scores, as a fused backward does), fwd+bwd the sum.
import { Tensor, grad, rt, tidy } from '../../engine/index.js';
import { attention, attentionBackward, attentionForward, setAttentionTextureLoads } from '../../kernels/attention.js';
import { gpuFn, loadJax, loadTfjs, randn, tfDone, jaxDone, disposeAll, withSetting, type TfT, type BenchCase, type BenchSuite } from '../lib.js';

interface Shape {
  label: string;
  B: number;
  H: number;
  Sq: number;
  Sk: number;
  D: number;
}
const SHAPES: Shape[] = [
  { label: 'self-attention', B: 2, H: 8, Sq: 1024, Sk: 1024, D: 40 },
  { label: 'cross-attention', B: 2, H: 8, Sq: 1024, Sk: 77, D: 40 },
];

const shapeStr = (s: Shape) => `B${s.B} H${s.H} ${s.Sq}x${s.Sk} d${s.D}`;
const unit = (s: Shape) => s.B * s.H * s.Sq * s.Sk * s.D;
const FLOPS = { fwd: 4, bwd: 10, 'fwd+bwd': 14 } as const;

function oursCases(s: Shape): BenchCase[] {
  const { B, H, Sq, Sk, D } = s;
  const opts = { heads: H };
  let q: Tensor, k: Tensor, v: Tensor, g: Tensor;
  let saved: { out: Tensor; lse: Tensor } | null = null;
  const alloc = (dt: 'f32' | 'f16') => {
    q = Tensor.from(randn(B * Sq * H * D, 1), [B, Sq, H * D], dt);
    k = Tensor.from(randn(B * Sk * H * D, 2), [B, Sk, H * D], dt);
    v = Tensor.from(randn(B * Sk * H * D, 3), [B, Sk, H * D], dt);
    g = Tensor.from(randn(B * Sq * H * D, 4), [B, Sq, H * D], dt);
  };
  const free = () => {
    [q, k, v, g].forEach((t) => t?.dispose());
    if (saved) [saved.out, saved.lse].forEach((t) => t.dispose());
    saved = null;
  };
  // dt: the storage dtype of q, k, v, the output and the gradients (f16 where the device has shader-f16)
  const mk = (pass: BenchCase['pass'], name: string, make: () => () => Tensor | Tensor[], dt: 'f32' | 'f16' = 'f32'): BenchCase => ({
    name: `${s.label} ${name}`,
    shape: shapeStr(s),
    pass,
    flops: FLOPS[pass] * unit(s),
    async setup() {
      if (dt === 'f16' && !rt().features.has('shader-f16')) return null;
      alloc(dt);
      return gpuFn(make());
    },
    teardown: free,
  });
  const forward = () => {
    const r = attentionForward(q, k, v, opts);
    return [r.out, r.lse];
  };
  const backward = () => {
    saved = attentionForward(q, k, v, opts);
    return () => attentionBackward(q, k, v, saved!.out, saved!.lse, g, opts).filter((t): t is Tensor => t !== null);
  };
  // the subgroup kernels (CPU adapters) reading their rows from the buffers instead of textures, for comparison
  const fromBuffers = (fn: () => Tensor[]) => () => withSetting(() => setAttentionTextureLoads(false), () => setAttentionTextureLoads(true), fn);
  return [
    mk('fwd', 'attention', () => forward),
    mk('bwd', 'attention backward', backward),
    mk('fwd', 'attention [rows from buffers]', () => fromBuffers(forward)),
    mk('bwd', 'attention backward [rows from buffers]', () => fromBuffers(backward())),
    mk('fwd+bwd', 'attention autodiff', () => () =>
      tidy(() => {
        const [qq, kk, vv] = [q, k, v].map((t) => t.detach().requireGrad());
        return grad(attention(qq, kk, vv, opts), [qq, kk, vv], g);
      }),
    ),
    // f16 storage of q, k, v, the output and the gradients (f32 arithmetic)
    mk('fwd', 'attention f16', () => forward, 'f16'),
    mk('bwd', 'attention backward f16', backward, 'f16'),
  ];
}

type Tf = typeof import('@tensorflow/tfjs-core');


function tfCases(s: Shape): BenchCase[] {
  const { B, H, Sq, Sk, D } = s;
  const lib = '@tensorflow/tfjs-backend-webgpu';
  const scale = 1 / Math.sqrt(D);
  let ts: TfT[] = [];
  const attn = (tf: Tf, q: TfT, k: TfT, v: TfT) =>
    tf.tidy(() => tf.matMul(tf.softmax(tf.mul(tf.matMul(q, k, false, true), scale)), v));
  const mk = (pass: BenchCase['pass'], name: string, run: (tf: Tf, q: TfT, k: TfT, v: TfT, g: TfT) => TfT[]): BenchCase => ({
    name: `${s.label} ${name}`,
    shape: shapeStr(s),
    pass,
    flops: FLOPS[pass] * unit(s),
    library: lib,
    async setup() {
      const tf = await loadTfjs();
      if (!tf) return null;
      const q = tf.tensor3d(randn(B * H * Sq * D, 1), [B * H, Sq, D]);
      const k = tf.tensor3d(randn(B * H * Sk * D, 2), [B * H, Sk, D]);
      const v = tf.tensor3d(randn(B * H * Sk * D, 3), [B * H, Sk, D]);
      const g = tf.tensor3d(randn(B * H * Sq * D, 4), [B * H, Sq, D]);
      ts = [q, k, v, g];
      return async () => tfDone(tf, run(tf, q, k, v, g));
    },
    teardown: () => ts.forEach((t) => t.dispose()),
  });
  return [
    mk('fwd', 'matmul+softmax+matmul', (tf, q, k, v) => [attn(tf, q, k, v)]),
    mk('fwd+bwd', 'matmul+softmax+matmul tf.grads', (tf, q, k, v, g) => tf.grads((a: TfT, b: TfT, c: TfT) => attn(tf, a, b, c))([q, k, v], g)),
  ];
}

type Jax = typeof import('@jax-js/jax');
type Arr = import('@jax-js/jax').Array;

function jaxCases(s: Shape): BenchCase[] {
  const { B, H, Sq, Sk, D } = s;
  const lib = '@jax-js/jax';
  let arrs: Arr[] = [];
  let owned: { dispose(): void }[] = [];
  const scale = 1 / Math.sqrt(D);
  const attn = (jax: Jax, q: Arr, k: Arr, v: Arr) => {
    const np = jax.numpy;
    return np.matmul(jax.nn.softmax(np.multiply(np.matmul(q, k.transpose([0, 2, 1])), scale), -1), v);
  };
  const mk = (pass: BenchCase['pass'], name: string, make: (jax: Jax, q: Arr, k: Arr, v: Arr, g: Arr) => () => Arr[]): BenchCase => ({
    name: `${s.label} ${name}`,
    shape: shapeStr(s),
    pass,
    flops: FLOPS[pass] * unit(s),
    library: lib,
    async setup() {
      const jax = await loadJax();
      if (!jax) return null;
      const np = jax.numpy;
      const q = np.array(randn(B * H * Sq * D, 1)).reshape([B * H, Sq, D]);
      const k = np.array(randn(B * H * Sk * D, 2)).reshape([B * H, Sk, D]);
      const v = np.array(randn(B * H * Sk * D, 3)).reshape([B * H, Sk, D]);
      const g = np.array(randn(B * H * Sq * D, 4)).reshape([B * H, Sq, D]);
      arrs = [q, k, v, g];
      const run = make(jax, q, k, v, g);
      return async () => jaxDone(run());
    },
    teardown() {
      disposeAll(owned);
      disposeAll(arrs);
    },
  });
  return [
    mk('fwd', 'matmul+softmax+matmul', (jax, q, k, v) => () => [attn(jax, q.ref, k.ref, v.ref)]),
    mk('bwd', 'matmul+softmax+matmul vjp', (jax, q, k, v, g) => {
      const [y, f] = jax.vjp((a: Arr, b: Arr, c: Arr) => attn(jax, a, b, c), [q.ref, k.ref, v.ref]);
      y.dispose();
      owned.push(f);
      return () => f(g.ref) as Arr[];
    }),
    mk('fwd+bwd', 'matmul+softmax+matmul vjp', (jax, q, k, v, g) => () => {
      const [y, f] = jax.vjp((a: Arr, b: Arr, c: Arr) => attn(jax, a, b, c), [q.ref, k.ref, v.ref]);
      y.dispose();
      const gs = f(g.ref) as Arr[];
      f.dispose();
      return gs;
    }),
  ];
}

const suite: BenchSuite = {
  name: 'attention',
  cases: SHAPES.flatMap((s) => [...oursCases(s), ...tfCases(s), ...jaxCases(s)]),
  notes: [
    'peers: unfused matmul -> softmax -> matmul on head-major [B*H, S, D] (no permutes); tfjs backward only as fwd+bwd (tf.grads)',
    'flops are nominal (fwd 4, bwd 10, fwd+bwd 14 x B*H*Sq*Sk*D) for every library; an unfused backward does 8 of the 10',
  ],
};
export default suite;
