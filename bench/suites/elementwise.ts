// Elementwise bandwidth on 16M floats (64 MiB per tensor), next to a vec4 copy kernel measured in the same run:
// an elementwise op that reads k tensors and writes one cannot beat (k + 1) / 2 copies.
import { Tensor } from '../../engine/index.js';
import { add, mul, silu } from '../../kernels/elementwise.js';
import { copyCase, gpuFn, randn, type BenchCase, type BenchSuite } from '../lib.js';

const N = 16 * 1024 * 1024;
const SHAPE = `${N} (16M)`;

function op(name: string, arity: 1 | 2, fn: (a: Tensor, b: Tensor) => Tensor): BenchCase {
  let a: Tensor, b: Tensor;
  return {
    name,
    shape: SHAPE,
    pass: 'fwd',
    bytes: 4 * N * (arity + 1),
    async setup() {
      a = Tensor.from(randn(N, 1), [N]);
      b = arity === 2 ? Tensor.from(randn(N, 2), [N]) : a;
      return gpuFn(() => fn(a, b));
    },
    teardown() {
      a.dispose();
      if (b !== a) b.dispose();
    },
  };
}

const suite: BenchSuite = {
  name: 'elementwise',
  cases: [
    copyCase(N, SHAPE),
    op('add', 2, (a, b) => add(a, b)),
    op('mul', 2, (a, b) => mul(a, b)),
    op('silu', 1, (a) => silu(a)),
  ],
};
export default suite;
