// Reductions (sum, mean, max) over any set of axes. The input's dims are split into kept and reduced
// dims (adjacent dims merged), and the kernel is specialised on both ranks. Small reductions use one
// invocation per output; large ones a 64-wide workgroup per output with a tree in workgroup memory.
import { rt, Uniforms } from '../engine/runtime.js';
import { ShapeError, Tensor, record } from '../engine/tensor.js';
import { collapseDims, grid, normAxis, prod, stridesOf, WG_INDEX, memoKernel, flatMain, floatDtype, storageType, enableF16, widen, narrow, type FloatDType } from './util.js';
import { broadcastTo, reshape } from './shape.js';
import { mul, scale, equal, div, cast } from './elementwise.js';

type ReduceOp = 'sum' | 'max';

function decode(prefix: string, rank: number, idx: string, field: string): string {
  // emits code accumulating the offset of index `idx` over dims of the given rank into `${prefix}off`
  const lines = [`var ${prefix}rem = ${idx}; var ${prefix}off = 0u;`];
  for (let d = rank - 1; d >= 0; d--) {
    const sh = `u.${field}sh[${d >> 2}][${d & 3}]`;
    const st = `u.${field}st[${d >> 2}][${d & 3}]`;
    lines.push(`{ let c = ${prefix}rem % ${sh}; ${prefix}rem = ${prefix}rem / ${sh}; ${prefix}off += c * ${st}; }`);
  }
  return lines.join('\n  ');
}

const kernel = memoKernel(kernelSource);
function kernelSource(op: ReduceOp, keptRank: number, redRank: number, wide: boolean, xDt: FloatDType, yDt: FloatDType): string {
  const init = op === 'sum' ? '0.0' : '-3.4e38';
  const comb = (a: string, b: string) => (op === 'sum' ? `${a} + ${b}` : `max(${a}, ${b})`);
  const head = /* wgsl */ `${enableF16(xDt, yDt)}
${WG_INDEX}
struct P { nout: u32, nred: u32, _0: u32, _1: u32, ksh: array<vec4<u32>, 2>, kst: array<vec4<u32>, 2>, rsh: array<vec4<u32>, 2>, rst: array<vec4<u32>, 2> }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<${storageType(xDt)}>;
@group(0) @binding(2) var<storage, read_write> Y: array<${storageType(yDt)}>;`;
  if (!wide)
    return /* wgsl */ `${head}
${flatMain('o', 'u.nout')}
  ${decode('k', keptRank, 'o', 'k')}
  var acc = ${init};
  for (var r = 0u; r < u.nred; r++) {
    ${decode('r', redRank, 'r', 'r')}
    acc = ${comb('acc', widen(xDt, 'X[koff + roff]'))};
  }
  Y[o] = ${narrow(yDt, 'acc')};
}`;
  return /* wgsl */ `${head}
var<workgroup> part: array<f32, 64>;
${flatMain('o', 'u.nout', 'workgroup')}
  ${decode('k', keptRank, 'o', 'k')}
  var acc = ${init};
  for (var r = li; r < u.nred; r += 64u) {
    ${decode('r', redRank, 'r', 'r')}
    acc = ${comb('acc', widen(xDt, 'X[koff + roff]'))};
  }
  part[li] = acc;
  workgroupBarrier();
  for (var s = 32u; s > 0u; s = s >> 1u) {
    if (li < s) { part[li] = ${comb('part[li]', 'part[li + s]')}; }
    workgroupBarrier();
  }
  if (li == 0u) { Y[o] = ${narrow(yDt, 'part[0]')}; }
}`;
}

function normAxes(shape: readonly number[], axes: number | number[] | undefined, op: string): number[] {
  if (axes === undefined) return shape.map((_, i) => i);
  const list = (Array.isArray(axes) ? axes : [axes]).map((a) => normAxis(a, shape.length, op));
  return [...new Set(list)].sort((a, b) => a - b);
}

/** `outDt`: the result's storage (default the input's); the accumulation is f32 either way */
function reduceRaw(op: ReduceOp, x: Tensor, axes: number[], keepDims: boolean, outDt?: FloatDType): Tensor {
  const xDt = floatDtype(op, 'input', x);
  const dt = outDt ?? xDt;
  const r = rt();
  if (x.byteLength > r.maxBindingBytes) throw new ShapeError(`${op}: input of ${x.byteLength} bytes exceeds the storage binding limit`);
  const st = stridesOf(x.shape);
  const isRed = x.shape.map((_, i) => axes.includes(i));
  const kept = collapseDims(x.shape.filter((_, i) => !isRed[i]), [st.filter((_, i) => !isRed[i])]);
  const red = collapseDims(x.shape.filter((_, i) => isRed[i]), [st.filter((_, i) => isRed[i])]);
  const outShape = keepDims ? x.shape.map((d, i) => (isRed[i] ? 1 : d)) : x.shape.filter((_, i) => !isRed[i]);
  const out = Tensor.empty(outShape, dt, op);
  const nout = prod(outShape);
  const nred = prod(red.shape);
  if (nout === 0) return out;
  const pad = (v: number[], f: number) => [...v, ...new Array(8 - v.length).fill(f)];
  const wide = nred > 256;
  r.dispatch({
    name: op,
    code: kernel(op, kept.shape.length, red.shape.length, wide, xDt, dt),
    uniforms: new Uniforms(64)
      .u32(nout, nred, 0, 0)
      .u32(...pad(kept.shape, 1), ...pad(kept.strides[0], 0), ...pad(red.shape, 1), ...pad(red.strides[0], 0))
      .done(),
    bindings: [{ buffer: x.buffer }, { buffer: out.buffer }],
    workgroups: grid(wide ? nout : Math.ceil(nout / 64)),
  });
  return out;
}

export function sum(x: Tensor, axes?: number | number[], keepDims = false): Tensor {
  const ax = normAxes(x.shape, axes, 'sum');
  const y = reduceRaw('sum', x, ax, keepDims);
  return record(y, 'sum', [x], (g) => {
    const kept = x.shape.map((d, i) => (ax.includes(i) ? 1 : d));
    return [broadcastTo(reshape(g, kept), x.shape)];
  });
}

export function mean(x: Tensor, axes?: number | number[], keepDims = false): Tensor {
  const ax = normAxes(x.shape, axes, 'mean');
  const n = ax.reduce((a, i) => a * x.shape[i], 1);
  return scale(sum(x, ax, keepDims), 1 / n);
}

/** Max over axes; the gradient is shared equally between tied maxima. */
export function max(x: Tensor, axes?: number | number[], keepDims = false): Tensor {
  const ax = normAxes(x.shape, axes, 'max');
  const y = reduceRaw('max', x, ax, keepDims);
  return record(y, 'max', [x], (g) => {
    const kept = x.shape.map((d, i) => (ax.includes(i) ? 1 : d));
    const mask = equal(x, broadcastTo(reshape(y, kept), x.shape));
    const count = reduceRaw('sum', mask, ax, true);
    return [mul(mask, broadcastTo(div(reshape(g, kept), count), x.shape))];
  }, [y]);
}

/**
 * Sum a broadcast gradient back down to `shape` (the inverse of broadcasting). With `dtype` (for backward rules:
 * no autodiff), the sum is stored in that dtype, accumulated in f32 from g's values (an f16 gradient's f32 bias
 * gradient, or an f32 product's f16 operand gradient, rounded once).
 */
export function sumTo(g: Tensor, shape: readonly number[], dtype?: FloatDType): Tensor {
  const off = g.shape.length - shape.length;
  if (off < 0) throw new ShapeError(`sumTo: cannot reduce [${g.shape}] to larger rank [${shape}]`);
  const axes: number[] = [];
  for (let i = 0; i < g.shape.length; i++) if (i < off || (shape[i - off] === 1 && g.shape[i] !== 1)) axes.push(i);
  if (dtype && dtype !== g.dtype) return reshape(axes.length ? reduceRaw('sum', g, axes, true, dtype) : cast(g, dtype), shape);
  const s = axes.length ? sum(g, axes, true) : g;
  return reshape(s, shape);
}
