// The op table: every op, by family. Forward kernels and backward rules live in kernels/<family>.ts.
export * from '../kernels/elementwise.js';
export * from '../kernels/reduce.js';
export * from '../kernels/shape.js';
export * from '../kernels/matmul.js';
export * from '../kernels/softmax.js';
export * from '../kernels/layernorm.js';
