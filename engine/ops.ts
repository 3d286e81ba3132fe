// The op table: every op, by family. Forward kernels and backward rules live in kernels/<family>.ts.
export * from '../kernels/elementwise.js';
export * from '../kernels/reduce.js';
export * from '../kernels/shape.js';
export * from '../kernels/matmul.js';
export * from '../kernels/softmax.js';
export * from '../kernels/layernorm.js';
export * from '../kernels/attention.js';
export * from '../kernels/groupnorm.js';
export * from '../kernels/geglu.js';
export * from '../kernels/conv2d.js';
export * from '../kernels/resample.js';
