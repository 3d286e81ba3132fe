// Softmax over the last axis of 16M floats shaped like self-attention scores at 64x64 latents
// (4096 rows of 4096), with the copy baseline of the same size.
import { Tensor } from '../../engine/index.js';
import { softmax, softmaxBackward } from '../../kernels/softmax.js';
import { copyCase, gpuFn, randn, type BenchSuite } from '../lib.js';

const ROWS = 4096;
const L = 4096;
const N = ROWS * L;
const SHAPE = `${ROWS}x${L}`;

let x: Tensor, y: Tensor, g: Tensor;
const suite: BenchSuite = {
  name: 'softmax',
  cases: [
    copyCase(N, SHAPE),
    {
      name: 'softmax',
      shape: SHAPE,
      pass: 'fwd',
      bytes: 8 * N,
      async setup() {
        x = Tensor.from(randn(N, 1), [ROWS, L]);
        return gpuFn(() => softmax(x));
      },
      teardown: () => x.dispose(),
    },
    {
      name: 'softmax backward',
      shape: SHAPE,
      pass: 'bwd',
      bytes: 12 * N,
      async setup() {
        y = Tensor.from(randn(N, 1), [ROWS, L]);
        g = Tensor.from(randn(N, 2), [ROWS, L]);
        return gpuFn(() => softmaxBackward(y, g));
      },
      teardown: () => [y, g].forEach((t) => t.dispose()),
    },
  ],
};
export default suite;
