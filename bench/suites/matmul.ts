// Matmul at the UNet's two biggest linear shapes: forward, the two backward matmuls (dA = dC @ Bᵀ,
// dB = Aᵀ @ dC) and a full autodiff step; the same matmuls through @tensorflow/tfjs-backend-webgpu and
// @jax-js/jax on the same adapter.
import { Tensor, grad, rt, tidy } from '../../engine/index.js';
import { matmul, matmulRaw, setMatmulKMajor, setMatmulSharedTuning, setMatmulVariant, setMatmulWeightCacheBytes, type MatmulVariant } from '../../kernels/matmul.js';
import { gpuFn, gpuOnly, loadJax, loadTfjs, randn, withSetting, type BenchCase, type BenchSuite } from '../lib.js';

const SHAPES: [number, number, number][] = [
  [4096, 320, 1280],
  [1024, 1280, 1280],
];

function oursCases(M: number, K: number, N: number): BenchCase[] {
  const shape = `${M}x${K} @ ${K}x${N}`;
  const flops = 2 * M * N * K;
  let A: Tensor, B: Tensor, G: Tensor;
  let A16: Tensor | undefined;
  const alloc = () => {
    A = Tensor.from(randn(M * K, 1), [M, K]);
    B = Tensor.from(randn(K * N, 2), [K, N]);
    G = Tensor.from(randn(M * N, 3), [M, N]);
    A16 = rt().features.has('shader-f16') ? Tensor.from(randn(M * K, 1), [M, K], 'f16') : undefined;
  };
  const free = () => [A, B, G, A16].forEach((t) => t?.dispose());
  const mk = (name: string, pass: BenchCase['pass'], fl: number, fn: () => Tensor | Tensor[]): BenchCase => ({
    name,
    shape,
    pass,
    flops: fl,
    async setup() {
      alloc();
      return gpuFn(fn);
    },
    teardown: free,
  });
  // the other tilings, forced, and the general 'subgroup' kernel where the default is the K-major tile
  const forced = (v: MatmulVariant): BenchCase =>
    mk(`matmul [${v} tiling]`, 'fwd', flops, () => withSetting(() => setMatmulVariant(v), () => setMatmulVariant(null), () => matmulRaw(A, B)));
  const general = mk('matmul [subgroup, general kernel]', 'fwd', flops, () =>
    withSetting(() => setMatmulKMajor('never'), () => setMatmulKMajor('auto'), () => matmulRaw(A, B)),
  );
  // GPUs only (their default is the 'shared' tiling): the same three matmuls with its options on (coalesced tile
  // loads; split-K where the output has few tiles), so that one run on a GPU compares them with the default
  const tuned = (name: string, pass: BenchCase['pass'], fn: () => Tensor): BenchCase =>
    gpuOnly(
      mk(`${name} [shared tuned]`, pass, flops, () =>
        withSetting(() => setMatmulSharedTuning({ coalesced: true, splitK: 'auto' }), () => setMatmulSharedTuning(null), fn),
      ),
    );
  return [
    mk('matmul', 'fwd', flops, () => matmulRaw(A, B)),
    forced('register'),
    general,
    tuned('matmul', 'fwd', () => matmulRaw(A, B)),
    tuned('matmul dA=dC@Bᵀ', 'bwd', () => matmulRaw(G, B, { transB: true })),
    tuned('matmul dB=Aᵀ@dC', 'bwd', () => matmulRaw(A, G, { transA: true })),
    // B is frozen here: from the second call on its K-major copy is kept (CPU adapters); the second row copies it every call
    mk('matmul dA=dC@Bᵀ', 'bwd', flops, () => matmulRaw(G, B, { transB: true })),
    mk('matmul dA=dC@Bᵀ [no weight cache]', 'bwd', flops, () =>
      withSetting(() => setMatmulWeightCacheBytes(0), () => setMatmulWeightCacheBytes(null), () => matmulRaw(G, B, { transB: true })),
    ),
    mk('matmul dB=Aᵀ@dC', 'bwd', flops, () => matmulRaw(A, G, { transA: true })),
    // A (the activation) stored in f16, output f16, arithmetic f32 (skipped without shader-f16)
    {
      ...mk('matmul f16 A', 'fwd', flops, () => matmulRaw(A16!, B)),
      async setup() {
        alloc();
        return A16 ? gpuFn(() => matmulRaw(A16!, B)) : null;
      },
    },
    mk('matmul autodiff', 'fwd+bwd', 3 * flops, () =>
      tidy(() => {
        const a = A.detach().requireGrad();
        const b = B.detach().requireGrad();
        return grad(matmul(a, b), [a, b], G);
      }),
    ),
  ];
}

function tfCases(M: number, K: number, N: number): BenchCase[] {
  const shape = `${M}x${K} @ ${K}x${N}`;
  const flops = 2 * M * N * K;
  const lib = '@tensorflow/tfjs-backend-webgpu';
  type T = import('@tensorflow/tfjs-core').Tensor;
  let ts: T[] = [];
  const mk = (name: string, pass: BenchCase['pass'], run: (tf: typeof import('@tensorflow/tfjs-core'), a: T, b: T, g: T) => T): BenchCase => ({
    name,
    shape,
    pass,
    flops,
    library: lib,
    async setup() {
      const tf = await loadTfjs();
      if (!tf) return null;
      const [a, b, g] = [tf.tensor2d(randn(M * K, 1), [M, K]), tf.tensor2d(randn(K * N, 2), [K, N]), tf.tensor2d(randn(M * N, 3), [M, N])];
      ts = [a, b, g];
      return async () => {
        const c = run(tf, a, b, g);
        // reading one element waits for the whole matmul without timing a large download
        await tf.slice(c, [0, 0], [1, 1]).data();
        c.dispose();
      };
    },
    teardown() {
      ts.forEach((t) => t.dispose());
    },
  });
  return [
    mk('matmul', 'fwd', (tf, a, b) => tf.matMul(a, b)),
    mk('matmul dA=dC@Bᵀ', 'bwd', (tf, _a, b, g) => tf.matMul(g, b, false, true)),
    mk('matmul dB=Aᵀ@dC', 'bwd', (tf, a, _b, g) => tf.matMul(a, g, true, false)),
  ];
}

function jaxCases(M: number, K: number, N: number): BenchCase[] {
  const shape = `${M}x${K} @ ${K}x${N}`;
  const flops = 2 * M * N * K;
  const lib = '@jax-js/jax';
  type J = typeof import('@jax-js/jax');
  type Arr = import('@jax-js/jax').Array;
  let arrs: Arr[] = [];
  const mk = (name: string, pass: BenchCase['pass'], run: (jax: J, a: Arr, b: Arr, g: Arr) => Arr): BenchCase => ({
    name,
    shape,
    pass,
    flops,
    library: lib,
    async setup() {
      const jax = await loadJax();
      if (!jax) return null;
      const np = jax.numpy;
      const a = np.array(randn(M * K, 1)).reshape([M, K]);
      const b = np.array(randn(K * N, 2)).reshape([K, N]);
      const g = np.array(randn(M * N, 3)).reshape([M, N]);
      arrs = [a, b, g];
      return async () => {
        // jax-js arrays are consumed by operations: pass new references
        const c = run(jax, a.ref, b.ref, g.ref);
        await c.blockUntilReady();
        c.dispose();
      };
    },
    teardown() {
      arrs.forEach((x) => x.dispose());
    },
  });
  return [
    mk('matmul', 'fwd', (jax, a, b) => jax.numpy.matmul(a, b)),
    mk('matmul dA=dC@Bᵀ', 'bwd', (jax, _a, b, g) => jax.numpy.matmul(g, b.transpose())),
    mk('matmul dB=Aᵀ@dC', 'bwd', (jax, a, _b, g) => jax.numpy.matmul(a.transpose(), g)),
  ];
}

const suite: BenchSuite = {
  name: 'matmul',
  cases: SHAPES.flatMap(([M, K, N]) => [...oursCases(M, K, N), ...tfCases(M, K, N), ...jaxCases(M, K, N)]),
};
export default suite;
