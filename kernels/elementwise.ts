// Elementwise ops: unary, binary and ternary with numpy broadcasting. One code generator serves all:
// an op is a WGSL expression over vec4<f32> operands `a`, `b`, `c` (and uniform scalars `p0`, `p1`).
// Same-shape operands take the vec4 fast path (4 elements per invocation, no index math); broadcast
// operands decode the output index with rank-specialised code. Tensors larger than one storage binding
// are processed in chunks bound at offsets. Each op's backward rule sits right below its forward.
// Operands may be f32 or f16 (storage only: expressions compute in f32); the result is f16 when every operand
// is f16, else f32 (as in PyTorch, f16 with f32 gives f32). `cast` converts between the two.
import { rt, Uniforms } from '../engine/runtime.js';
import { ShapeError, Tensor, wantsGrad, record } from '../engine/tensor.js';
import { broadcastShapes, broadcastStrides, collapseDims, grid, prod, sameShape, stridesOf, WG_INDEX, memoKernel, flatMain, floatDtype, needF16, storageType, enableF16, widen, narrow, floatOf, type FloatDType } from './util.js';
import { sumTo } from './reduce.js';

/** WGSL helpers usable in expressions (vec4 versions). */
const PRELUDE = /* wgsl */ `
fn erf4(x: vec4<f32>) -> vec4<f32> {
  // Abramowitz & Stegun 7.1.26 refined with one Newton-free correction; |err| < 1.5e-7
  let s = sign(x);
  let z = abs(x);
  let t = 1.0 / (1.0 + 0.3275911 * z);
  let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-z * z);
  return s * y;
}
fn sigmoid4(x: vec4<f32>) -> vec4<f32> { return 1.0 / (1.0 + exp(-x)); }
fn tanh4(x: vec4<f32>) -> vec4<f32> { let e = exp(-2.0 * abs(x)); return sign(x) * (1.0 - e) / (1.0 + e); }
fn gelu4(x: vec4<f32>) -> vec4<f32> { return 0.5 * x * (1.0 + erf4(x * 0.7071067811865476)); }
fn gelu_grad4(x: vec4<f32>) -> vec4<f32> {
  return 0.5 * (1.0 + erf4(x * 0.7071067811865476)) + x * 0.3989422804014327 * exp(-0.5 * x * x);
}
fn powf4(x: vec4<f32>, p: f32) -> vec4<f32> {
  // pow with the sign of x kept for integer exponents (WGSL pow is undefined for x < 0)
  let m = pow(abs(x), vec4<f32>(p));
  let odd = abs(p - 2.0 * floor(p * 0.5)) == 1.0;
  return select(m, select(m, -m, x < vec4<f32>(0.0)), odd);
}
`;

interface ElementwiseDef {
  arity: 1 | 2 | 3;
  /** WGSL expression over vec4<f32> a, b, c and f32 p0, p1 */
  expr: string;
}

const UNARY: Record<string, string> = {
  neg: '-a',
  exp: 'exp(a)',
  log: 'log(a)',
  sqrt: 'sqrt(a)',
  rsqrt: 'inverseSqrt(a)',
  abs: 'abs(a)',
  sigmoid: 'sigmoid4(a)',
  silu: 'a * sigmoid4(a)',
  gelu: 'gelu4(a)',
  quick_gelu: 'a * sigmoid4(1.702 * a)',
  tanh: 'tanh4(a)',
  relu: 'max(a, vec4<f32>(0.0))',
  clamp: 'clamp(a, vec4<f32>(p0), vec4<f32>(p1))',
  pow: 'powf4(a, p0)',
  affine: 'a * p0 + p1',
  fill: 'vec4<f32>(p0)',
  sin: 'sin(a)',
  cos: 'cos(a)',
};

const BINARY: Record<string, string> = {
  add: 'a + b',
  sub: 'a - b',
  mul: 'a * b',
  div: 'a / b',
  maximum: 'max(a, b)',
  minimum: 'min(a, b)',
  // backward helpers: a = forward input (or output), b = upstream gradient
  silu_bwd: 'b * (sigmoid4(a) * (1.0 + a * (1.0 - sigmoid4(a))))',
  gelu_bwd: 'b * gelu_grad4(a)',
  quick_gelu_bwd: 'b * (sigmoid4(1.702 * a) * (1.0 + 1.702 * a * (1.0 - sigmoid4(1.702 * a))))',
  sigmoid_bwd_y: 'b * a * (1.0 - a)',
  tanh_bwd_y: 'b * (1.0 - a * a)',
  clamp_bwd: 'select(vec4<f32>(0.0), b, (a >= vec4<f32>(p0)) & (a <= vec4<f32>(p1)))',
  pow_bwd: 'b * p0 * powf4(a, p0 - 1.0)',
  relu_bwd: 'select(vec4<f32>(0.0), b, a > vec4<f32>(0.0))',
  eq: 'select(vec4<f32>(0.0), vec4<f32>(1.0), a == b)',
};

const TERNARY: Record<string, string> = {
  where: 'select(c, b, a != vec4<f32>(0.0))',
  // a * b + c (fused multiply-add; used by optimizers and scheduler steps)
  fma: 'a * b + c',
};

const contiguousKernel = memoKernel(contiguousKernelSource);
/** `dts`: the storage dtypes of the operands, then of the output */
function contiguousKernelSource(def: ElementwiseDef, per: number, dts: FloatDType[]): string {
  const names = ['a', 'b', 'c'].slice(0, def.arity);
  const yt = storageType(dts[def.arity]);
  return /* wgsl */ `${enableF16(...dts)}
${PRELUDE}
${WG_INDEX}
struct P { n: u32, _0: u32, p0: f32, p1: f32 }
@group(0) @binding(0) var<uniform> u: P;
${names.map((x, i) => `@group(0) @binding(${i + 1}) var<storage, read> ${x.toUpperCase()}: array<vec4<${storageType(dts[i])}>>;`).join('\n')}
@group(0) @binding(${def.arity + 1}) var<storage, read_write> Y: array<vec4<${yt}>>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let base = wg_index(wid, nwg) * ${64 * per}u + li;
  let p0 = u.p0; let p1 = u.p1;
  for (var j = 0u; j < ${per}u; j++) {
    let i = base + j * 64u;
    if (i >= u.n) { return; }
    ${names.map((x, k) => `let ${x} = ${widen(dts[k], `${x.toUpperCase()}[i]`, true)};`).join(' ')}
    Y[i] = ${narrow(yt, def.expr, true)};
  }
}`;
}

/**
 * vec4s per invocation in the contiguous kernels: CPU adapters pay about a microsecond per workgroup, so
 * each invocation loops over many elements there; GPUs want one per invocation.
 */
export function elementsPerInvocation(): number {
  return rt().gpu.adapterClass === 'cpu' ? 16 : 1;
}

const broadcastKernel = memoKernel(broadcastKernelSource);
function broadcastKernelSource(def: ElementwiseDef, rank: number, dts: FloatDType[]): string {
  const names = ['a', 'b', 'c'].slice(0, def.arity);
  const yt = storageType(dts[def.arity]);
  const dims = [...Array(rank).keys()].reverse();
  // shape/strides live in vec4 arrays: sh[d/4][d%4]
  const at = (arr: string, d: number) => `u.${arr}[${d >> 2}][${d & 3}]`;
  return /* wgsl */ `${enableF16(...dts)}
${PRELUDE}
${WG_INDEX}
struct P { n: u32, _0: u32, p0: f32, p1: f32, sh: array<vec4<u32>, 2>, ${names.map((x) => `s${x}: array<vec4<u32>, 2>`).join(', ')} }
@group(0) @binding(0) var<uniform> u: P;
${names.map((x, i) => `@group(0) @binding(${i + 1}) var<storage, read> ${x.toUpperCase()}: array<${storageType(dts[i])}>;`).join('\n')}
@group(0) @binding(${def.arity + 1}) var<storage, read_write> Y: array<${yt}>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i4 = (wg_index(wid, nwg) * 64u + li) * 4u;
  if (i4 >= u.n) { return; }
  let p0 = u.p0; let p1 = u.p1;
  ${names.map((x) => `var ${x} = vec4<f32>(0.0);`).join(' ')}
  for (var k = 0u; k < 4u; k++) {
    let i = min(i4 + k, u.n - 1u);
    var rem = i;
    ${names.map((x) => `var o${x} = 0u;`).join(' ')}
    ${dims
      .map(
        (d) => `{ let c = rem % ${at('sh', d)}; rem = rem / ${at('sh', d)}; ${names.map((x) => `o${x} += c * ${at('s' + x, d)};`).join(' ')} }`,
      )
      .join('\n    ')}
    ${names.map((x, k) => `${x}[k] = ${widen(dts[k], `${x.toUpperCase()}[o${x}]`)};`).join(' ')}
  }
  let y = ${def.expr};
  for (var k = 0u; k < 4u; k++) { if (i4 + k < u.n) { Y[i4 + k] = ${narrow(yt, 'y[k]')}; } }
}`;
}

/**
 * Run an elementwise op (no autodiff). Inputs are broadcast to a common shape. The result is f16 when every
 * input is f16 (or `outDtype` says so), else f32.
 */
export function elementwise(name: string, def: ElementwiseDef, inputs: Tensor[], p0 = 0, p1 = 0, outShape?: number[], outDtype?: FloatDType): Tensor {
  const dts = inputs.map((t, i) => floatDtype(name, inputs.length > 1 ? `operand ${i}` : 'input', t));
  const yt: FloatDType = outDtype ?? (dts.length && dts.every((d) => d === 'f16') ? 'f16' : 'f32');
  if (yt === 'f16') needF16(name, 'the output');
  dts.push(yt);
  const shape = outShape ?? inputs.map((t) => [...t.shape]).reduce((s, t) => broadcastShapes(name, s, t));
  const out = Tensor.empty(shape, yt, name);
  const n = prod(shape);
  if (n === 0) return out;
  const r = rt();
  if (inputs.every((t) => sameShape(t.shape, shape))) {
    // contiguous: 4 elements per invocation, chunked by binding size
    const n4 = Math.ceil(n / 4);
    const chunk = Math.floor(r.maxBindingBytes / 16 / 64) * 64; // vec4s per chunk, 256-byte aligned offsets
    const per = elementsPerInvocation();
    const code = contiguousKernel(def, per, dts);
    for (let start = 0; start < n4; start += chunk) {
      const cnt = Math.min(chunk, n4 - start);
      const bind = (t: Tensor) => {
        const v4 = t.dtype === 'f16' ? 8 : 16;
        return { buffer: t.buffer, offset: start * v4, size: Math.min(cnt * v4, t.buffer.size - start * v4) };
      };
      r.dispatch({
        name,
        code,
        uniforms: new Uniforms().u32(cnt, 0).f32(p0, p1).done(),
        bindings: [...inputs.map(bind), bind(out)],
        workgroups: grid(Math.ceil(cnt / 64 / per)),
      });
    }
    return out;
  }
  for (const t of [...inputs, out])
    if (t.byteLength > r.maxBindingBytes)
      throw new ShapeError(`${name}: broadcasting a tensor of ${t.byteLength} bytes exceeds the storage binding limit (${r.maxBindingBytes}); make the operands the same shape`);
  const { shape: cs, strides } = collapseDims(shape, [...inputs.map((t) => broadcastStrides(t.shape, shape)), stridesOf(shape)]);
  const pad = (v: number[]) => [...v, ...new Array(8 - v.length).fill(v === cs ? 1 : 0)];
  const uni = new Uniforms().u32(n, 0).f32(p0, p1).u32(...pad(cs));
  for (let k = 0; k < inputs.length; k++) uni.u32(...pad(strides[k]));
  r.dispatch({
    name,
    code: broadcastKernel(def, cs.length, dts),
    uniforms: uni.done(),
    bindings: [...inputs.map((t) => ({ buffer: t.buffer })), { buffer: out.buffer }],
    workgroups: grid(Math.ceil(n / 256)),
  });
  return out;
}

const un = (op: string) => ({ arity: 1 as const, expr: UNARY[op] });
const bin = (op: string) => ({ arity: 2 as const, expr: BINARY[op] });

function unary(op: string, x: Tensor, p0 = 0, p1 = 0): Tensor {
  return elementwise(op, un(op), [x], p0, p1);
}
function binaryRaw(op: string, a: Tensor, b: Tensor, p0 = 0, p1 = 0): Tensor {
  return elementwise(op, bin(op), [a, b], p0, p1);
}

// ---------------- unary ops with their backward rules ----------------
export function neg(x: Tensor): Tensor {
  return record(unary('neg', x), 'neg', [x], (g) => [neg(g)]);
}
export function exp(x: Tensor): Tensor {
  const y = unary('exp', x);
  return record(y, 'exp', [x], (g) => [mul(g, y)], [y]);
}
export function log(x: Tensor) {
  return record(unary('log', x), 'log', [x], (g) => [div(g, x)]);
}
export function sqrt(x: Tensor): Tensor {
  const y = unary('sqrt', x);
  return record(y, 'sqrt', [x], (g) => [div(scale(g, 0.5), y)], [y]);
}
export function rsqrt(x: Tensor): Tensor {
  const y = unary('rsqrt', x);
  // d/dx x^-1/2 = -1/2 x^-3/2 = -1/2 y^3
  return record(y, 'rsqrt', [x], (g) => [mul(g, scale(pow(y, 3), -0.5))], [y]);
}
export function abs(x: Tensor) {
  return record(unary('abs', x), 'abs', [x], (g) => [mul(g, sign(x))]);
}
function sign(x: Tensor) {
  // sign(x) = x / |x| with 0 at 0, built from where
  return elementwise('sign', { arity: 1, expr: 'sign(a)' }, [x]);
}
export function sigmoid(x: Tensor): Tensor {
  const y = unary('sigmoid', x);
  return record(y, 'sigmoid', [x], (g) => [binaryRaw('sigmoid_bwd_y', y, g)], [y]);
}
export function silu(x: Tensor) {
  return record(unary('silu', x), 'silu', [x], (g) => [binaryRaw('silu_bwd', x, g)]);
}
export function gelu(x: Tensor) {
  return record(unary('gelu', x), 'gelu', [x], (g) => [binaryRaw('gelu_bwd', x, g)]);
}
export function quickGelu(x: Tensor) {
  return record(unary('quick_gelu', x), 'quick_gelu', [x], (g) => [binaryRaw('quick_gelu_bwd', x, g)]);
}
export function tanh(x: Tensor): Tensor {
  const y = unary('tanh', x);
  return record(y, 'tanh', [x], (g) => [binaryRaw('tanh_bwd_y', y, g)], [y]);
}
export function relu(x: Tensor) {
  return record(unary('relu', x), 'relu', [x], (g) => [binaryRaw('relu_bwd', x, g)]);
}
export function clamp(x: Tensor, lo: number, hi: number) {
  return record(unary('clamp', x, lo, hi), 'clamp', [x], (g) => [binaryRaw('clamp_bwd', x, g, lo, hi)]);
}
/** x^p for a scalar exponent (integer exponents keep the sign of x). */
export function pow(x: Tensor, p: number): Tensor {
  if (p === 1) return record(unary('affine', x, 1, 0), 'pow', [x], (g) => [g]);
  return record(unary('pow', x, p), 'pow', [x], (g) => [binaryRaw('pow_bwd', x, g, p)]);
}
/** x * s + t for scalars s, t. */
export function affine(x: Tensor, s: number, t = 0): Tensor {
  return record(unary('affine', x, s, t), 'affine', [x], (g) => [scale(g, s)]);
}
export function scale(x: Tensor, s: number): Tensor {
  return affine(x, s, 0);
}
export function addScalar(x: Tensor, t: number) {
  return affine(x, 1, t);
}
/** sin/cos without autodiff (used by timestep embeddings on host-reduced arguments). */
export function sin(x: Tensor) {
  return unary('sin', x);
}
export function cos(x: Tensor) {
  return unary('cos', x);
}

// ---------------- creation ----------------
const fullKernel = memoKernel(
  (dt: FloatDType) => /* wgsl */ `${enableF16(dt)}
${WG_INDEX}
struct P { n: u32, _0: u32, v: f32, _1: f32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read_write> Y: array<vec4<${storageType(dt)}>>;
${flatMain('i', 'u.n')}
  Y[i] = ${narrow(dt, 'vec4<f32>(u.v)', true)};
}`,
);

/** A tensor of `shape` filled with `v` (f32, or f16 storage). */
export function full(shape: readonly number[], v: number, dtype: FloatDType = 'f32'): Tensor {
  if (dtype === 'f16') needF16('full', 'the dtype');
  const out = Tensor.empty(shape, dtype, 'full');
  const n = prod(shape);
  if (n === 0) return out;
  const r = rt();
  const n4 = Math.ceil(n / 4);
  const v4 = dtype === 'f16' ? 8 : 16;
  const chunk = Math.floor(r.maxBindingBytes / 16 / 64) * 64;
  const code = fullKernel(dtype);
  for (let start = 0; start < n4; start += chunk) {
    const cnt = Math.min(chunk, n4 - start);
    r.dispatch({
      name: 'full',
      code,
      uniforms: new Uniforms().u32(cnt, 0).f32(v, 0).done(),
      bindings: [{ buffer: out.buffer, offset: start * v4, size: Math.min(cnt * v4, out.buffer.size - start * v4) }],
      workgroups: grid(Math.ceil(cnt / 64)),
    });
  }
  return out;
}
export const zeros = (shape: readonly number[], dtype: FloatDType = 'f32') => full(shape, 0, dtype);
export const ones = (shape: readonly number[], dtype: FloatDType = 'f32') => full(shape, 1, dtype);
/** zeros / ones of `t`'s shape and dtype */
export const zerosLike = (t: Tensor) => full(t.shape, 0, floatOf(t));
export const onesLike = (t: Tensor) => full(t.shape, 1, floatOf(t));

/**
 * `x` stored as `dtype` ('f32' or 'f16'; f16 needs the device's shader-f16): values are rounded to nearest
 * when narrowing. The gradient is cast back to x's dtype. Returns x itself when it already has the dtype.
 */
export function cast(x: Tensor, dtype: FloatDType): Tensor {
  const from = floatDtype('cast', 'input', x);
  if (from === dtype) return x;
  const y = elementwise('cast', { arity: 1, expr: 'a' }, [x], 0, 0, undefined, dtype);
  return record(y, 'cast', [x], (g) => [cast(g, from)]);
}

// ---------------- binary ops ----------------
function reduceGrad(g: Tensor, shape: readonly number[]): Tensor {
  return sameShape(g.shape, shape) ? g : sumTo(g, shape);
}

export function add(a: Tensor, b: Tensor): Tensor {
  return record(binaryRaw('add', a, b), 'add', [a, b], (g) => [
    wantsGrad(a) ? reduceGrad(g, a.shape) : null,
    wantsGrad(b) ? reduceGrad(g, b.shape) : null,
  ]);
}
export function sub(a: Tensor, b: Tensor): Tensor {
  return record(binaryRaw('sub', a, b), 'sub', [a, b], (g) => [
    wantsGrad(a) ? reduceGrad(g, a.shape) : null,
    wantsGrad(b) ? reduceGrad(neg(g), b.shape) : null,
  ]);
}
export function mul(a: Tensor, b: Tensor): Tensor {
  return record(binaryRaw('mul', a, b), 'mul', [a, b], (g) => [
    wantsGrad(a) ? reduceGrad(mul(g, b), a.shape) : null,
    wantsGrad(b) ? reduceGrad(mul(g, a), b.shape) : null,
  ]);
}
export function div(a: Tensor, b: Tensor): Tensor {
  return record(binaryRaw('div', a, b), 'div', [a, b], (g) => [
    wantsGrad(a) ? reduceGrad(div(g, b), a.shape) : null,
    wantsGrad(b) ? reduceGrad(neg(div(mul(g, a), mul(b, b))), b.shape) : null,
  ]);
}
export function maximum(a: Tensor, b: Tensor): Tensor {
  const y = binaryRaw('maximum', a, b);
  return record(y, 'maximum', [a, b], (g) => {
    const ma = binaryRaw('eq', y, a);
    return [wantsGrad(a) ? reduceGrad(mul(g, ma), a.shape) : null, wantsGrad(b) ? reduceGrad(mul(g, affine(ma, -1, 1)), b.shape) : null];
  }, [y]);
}
export function minimum(a: Tensor, b: Tensor): Tensor {
  const y = binaryRaw('minimum', a, b);
  return record(y, 'minimum', [a, b], (g) => {
    const ma = binaryRaw('eq', y, a);
    return [wantsGrad(a) ? reduceGrad(mul(g, ma), a.shape) : null, wantsGrad(b) ? reduceGrad(mul(g, affine(ma, -1, 1)), b.shape) : null];
  }, [y]);
}
/** 1 where a == b else 0 (no gradient). */
export function equal(a: Tensor, b: Tensor) {
  return binaryRaw('eq', a, b);
}

/** cond != 0 ? a : b, broadcasting all three; no gradient to cond. */
export function where(cond: Tensor, a: Tensor, b: Tensor): Tensor {
  // the result's dtype follows a and b (the condition's storage does not matter)
  const sel = (x: Tensor, y: Tensor) =>
    elementwise('where', { arity: 3, expr: TERNARY.where }, [cond, x, y], 0, 0, undefined, x.dtype === 'f16' && y.dtype === 'f16' ? 'f16' : 'f32');
  const y = sel(a, b);
  return record(y, 'where', [a, b], (g) => {
    const z = zerosLike(g);
    return [wantsGrad(a) ? reduceGrad(sel(g, z), a.shape) : null, wantsGrad(b) ? reduceGrad(sel(z, g), b.shape) : null];
  });
}

/** a * b + c without autodiff (optimizer and scheduler arithmetic). */
export function fmaRaw(a: Tensor, b: Tensor, c: Tensor) {
  return elementwise('fma', { arity: 3, expr: TERNARY.fma }, [a, b, c]);
}

/** Custom elementwise expression without autodiff (used by optimizers and fused updates). */
export function mapRaw(name: string, expr: string, inputs: Tensor[], p0 = 0, p1 = 0) {
  return elementwise(name, { arity: inputs.length as 1 | 2 | 3, expr }, inputs, p0, p1);
}
