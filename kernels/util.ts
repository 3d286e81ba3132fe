// Small helpers shared by the kernel families: shape arithmetic, dispatch grids, the uniform layout of
// shapes/strides (up to MAX_RANK dims, packed as vec4<u32> arrays), and the WGSL that decodes them.
import { DTYPE_BYTES, ShapeError, Tensor } from '../engine/tensor.js';
import { rt, type BufferBinding } from '../engine/runtime.js';

export const MAX_RANK = 8;

export const ceilDiv = (a: number, b: number) => Math.ceil(a / b);
export const prod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

export function stridesOf(shape: readonly number[]): number[] {
  const st = new Array(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    st[i] = s;
    s *= shape[i];
  }
  return st;
}

/** Broadcast two shapes (numpy rules); throws a ShapeError naming the op. */
export function broadcastShapes(op: string, a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out = new Array(n);
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1;
    const y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) throw new ShapeError(`${op}: shapes [${a}] and [${b}] cannot be broadcast (dim ${i}: ${x} vs ${y})`);
    out[i] = x === 1 ? y : x;
  }
  return out;
}

/** Strides of `shape` seen through the broadcast `out` shape (0 where broadcast). */
export function broadcastStrides(shape: readonly number[], out: readonly number[]): number[] {
  const st = stridesOf(shape);
  const off = out.length - shape.length;
  return out.map((d, i) => (i < off || shape[i - off] === 1 ? 0 : st[i - off]));
}

/**
 * Merge adjacent dims that are contiguous for every stride set, so that most index math is rank <= 3.
 * Returns the merged shape and stride sets.
 */
export function collapseDims(shape: readonly number[], strideSets: number[][]): { shape: number[]; strides: number[][] } {
  const outShape: number[] = [];
  const outStrides: number[][] = strideSets.map(() => []);
  for (let i = 0; i < shape.length; i++) {
    if (shape[i] === 1) continue;
    const last = outShape.length - 1;
    if (last >= 0 && strideSets.every((st, k) => outStrides[k][last] === st[i] * shape[i])) {
      outShape[last] *= shape[i];
      strideSets.forEach((st, k) => (outStrides[k][last] = st[i]));
    } else {
      outShape.push(shape[i]);
      strideSets.forEach((st, k) => outStrides[k].push(st[i]));
    }
  }
  if (!outShape.length) {
    outShape.push(1);
    outStrides.forEach((s) => s.push(0));
  }
  return { shape: outShape, strides: outStrides };
}

/** Pad a dims list to MAX_RANK for the uniform block (leading 1s / 0s). */
export function padDims(v: readonly number[], fill: number): number[] {
  if (v.length > MAX_RANK) throw new ShapeError(`rank ${v.length} exceeds the engine's maximum of ${MAX_RANK}`);
  return [...new Array(MAX_RANK - v.length).fill(fill), ...v];
}

/** Workgroup grid for `n` workgroups along x, folding into y beyond the 65535 limit. */
export function grid(n: number, maxX = 65535): [number, number] {
  if (n <= maxX) return [Math.max(1, n), 1];
  const y = Math.ceil(n / maxX);
  return [Math.ceil(n / y), y];
}

/** WGSL: the flat workgroup index for a `grid()` dispatch. */
export const WG_INDEX = /* wgsl */ `fn wg_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.x + wid.y * nwg.x; }`;

/**
 * WGSL: the opening of a 64-wide kernel dispatched with `grid()` (the shader includes WG_INDEX), through its
 * bounds check: `let ${v}` is the invocation's flat index ('invocation') or the workgroup's ('workgroup'), and
 * those at or past `count` (a u32 expression) return. The body and the closing brace follow.
 */
export function flatMain(v: string, count: string, per: 'invocation' | 'workgroup' = 'invocation'): string {
  return `@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let ${v} = wg_index(wid, nwg)${per === 'invocation' ? ' * 64u + li' : ''};
  if (${v} >= ${count}) { return; }`;
}

// ---- storage dtypes of float tensors ----
// Float tensors are stored as f32, or as f16 where the device has `shader-f16` (weights, and activations with
// their gradients). Kernels always compute in f32: a binding is declared with its tensor's storage type
// (`storageType`), every load is widened (`f32(X[i])`, `vec4<f32>(X[i])`: a no-op for f32) and every store
// narrowed (`${storageType(dt)}(v)`, `vec4<${storageType(dt)}>(v)`). A gradient has the dtype of the tensor
// it belongs to.

export type FloatDType = 'f32' | 'f16';

/** WGSL: the load `e` from a binding of dtype `dt` as f32 (a scalar, or a vec4 with `v4`); `e` itself for f32 */
export const widen = (dt: string, e: string, v4 = false) => (dt === 'f16' ? `${v4 ? 'vec4<f32>' : 'f32'}(${e})` : e);
/** WGSL: the f32 value `e` (a scalar, or a vec4 with `v4`) narrowed for a store into a binding of dtype `dt` */
export const narrow = (dt: string, e: string, v4 = false) => (dt === 'f16' ? `${v4 ? 'vec4<f16>' : 'f16'}(${e})` : e);

/** The float dtype of `t`'s values: f16 for f16 tensors, else f32 (an i32 tensor's zeros and gradients are f32). */
export const floatOf = (t: Tensor): FloatDType => (t.dtype === 'f16' ? 'f16' : 'f32');

/** WGSL scalar type that stores a float tensor of dtype `dt` */
export const storageType = (dt: string) => (dt === 'f16' ? 'f16' : 'f32');

/** WGSL: the `enable f16;` directive when any of `dts` is f16 (else nothing) */
export const enableF16 = (...dts: string[]) => (dts.includes('f16') ? 'enable f16;' : '');

/**
 * Checks that `t` (the op's argument `arg`) is a float tensor that this device can compute with: f32, or f16
 * with `shader-f16`. Returns its dtype.
 */
export function floatDtype(op: string, arg: string, t: Tensor): FloatDType {
  if (t.dtype !== 'f32' && t.dtype !== 'f16') throw new ShapeError(`${op}: ${arg} must be f32 or f16, got ${t.dtype} [${t.shape}]`);
  if (t.dtype === 'f16') needF16(op, arg);
  return t.dtype;
}

/** Throws a ShapeError naming `op` and `what` unless the device has `shader-f16` (which f16 storage needs). */
export function needF16(op: string, what: string) {
  if (!rt().features.has('shader-f16'))
    throw new ShapeError(`${op}: ${what} is f16, which needs the device feature shader-f16 (this adapter has none): use f32 tensors`);
}

/** Checks that every tensor in `ts` (named by `args`) has one float dtype, and returns it. */
export function sameFloatDtype(op: string, ts: Tensor[], args: string[]): FloatDType {
  const dt = floatDtype(op, args[0], ts[0]);
  for (let i = 1; i < ts.length; i++)
    if (floatDtype(op, args[i], ts[i]) !== dt)
      throw new ShapeError(`${op}: ${args[i]} is ${ts[i].dtype} but ${args[0]} is ${dt}: the activations and their gradients must share one dtype (cast() converts)`);
  return dt;
}

// ---- binding windows of tensors larger than one storage binding ----

/** Bind elements [start, start + count) of `t` at an aligned offset; `shift` is the element index of `start` in the window. */
export function bindWindow(t: Tensor, start: number, count: number): { bind: BufferBinding; shift: number } {
  const r = rt();
  const eb = DTYPE_BYTES[t.dtype];
  const byte = start * eb;
  const offset = Math.floor(byte / r.offsetAlign) * r.offsetAlign;
  const shift = (byte - offset) / eb;
  // binding sizes are whole 4-byte words: an odd number of f16 elements binds one more (the pooled buffer has it)
  const size = Math.min(t.buffer.size - offset, Math.ceil(((count + shift) * eb) / 4) * 4);
  return { bind: { buffer: t.buffer, offset, size }, shift };
}

/** Largest element count (of `eb` bytes each) that a window may hold, leaving room for the alignment shift. */
export function windowLimit(eb: number): number {
  const r = rt();
  return Math.floor((r.maxBindingBytes - r.offsetAlign) / eb);
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** The fewest rows of `elems` elements of `bytes` bytes each whose multiples all start at aligned binding offsets. */
export function alignedRowStep(elems: number, bytes: number): number {
  const alignElems = rt().offsetAlign / bytes;
  return alignElems / gcd(elems, alignElems);
}

export function assertDtype(op: string, t: Tensor, ...allowed: string[]) {
  if (!allowed.includes(t.dtype)) throw new ShapeError(`${op}: expected dtype ${allowed.join(' or ')}, got ${t.dtype} for [${t.shape}]`);
}

export function sameShape(a: readonly number[], b: readonly number[]) {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

export function normAxis(axis: number, rank: number, op: string): number {
  const a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) throw new ShapeError(`${op}: axis ${axis} out of range for rank ${rank}`);
  return a;
}

/**
 * Memoize a WGSL generator by its (JSON-serializable) arguments. Besides saving the string building, the
 * runtime's pipeline cache is keyed by the source: handing it the same string object every time lets V8
 * reuse the string's hash instead of rehashing kilobytes of WGSL on every dispatch.
 */
const kernelMemos: Map<string, string>[] = [];
export function memoKernel<A extends unknown[]>(gen: (...args: A) => string): (...args: A) => string {
  const cache = new Map<string, string>();
  kernelMemos.push(cache);
  return (...args: A) => {
    const key = JSON.stringify(args);
    let code = cache.get(key);
    if (code === undefined) cache.set(key, (code = gen(...args)));
    return code;
  };
}

/** Forget every memoized kernel source (after changing a module-level tuning that generators read). */
export function clearKernelMemos() {
  for (const m of kernelMemos) m.clear();
}

/**
 * A value a kernel module keeps per runtime (its cache of textures or buffers), made on first use; `drop` frees
 * what it holds when the runtime's `releasePool()` runs (which flushes first: submitted work keeps destroyed
 * resources alive until it is done).
 */
export function perRuntime<T>(make: () => T, drop: (v: T) => void): () => T {
  const store = new WeakMap<object, T>();
  return () => {
    const r = rt();
    let v = store.get(r);
    if (v === undefined) {
      const made = make();
      store.set(r, (v = made));
      r.onReleasePool(() => drop(made));
    }
    return v;
  };
}
