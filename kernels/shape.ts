// Data movement: reshape, permute/transpose, slice, concat, pad, broadcastTo and gather (embedding lookup).
// Two strided kernels serve them all: a strided *read* (out[o] = X[base + sum c_d * s_d]) and a strided
// *write* (Y[base + sum c_d * s_d] = X[o]) that places a block inside a larger tensor.
import { rt, Uniforms } from '../engine/runtime.js';
import { ShapeError, Tensor, wantsGrad, record } from '../engine/tensor.js';
import { broadcastStrides, collapseDims, grid, normAxis, prod, sameShape, stridesOf, WG_INDEX, memoKernel, flatMain, floatOf } from './util.js';
import { zeros } from './elementwise.js';
import { sumTo } from './reduce.js';

const stridedKernel = memoKernel(stridedKernelSource);
function stridedKernelSource(rank: number, write: boolean, elem: string): string {
  const lines: string[] = [];
  for (let d = rank - 1; d >= 0; d--) {
    const sh = `u.sh[${d >> 2}][${d & 3}]`;
    const st = `u.st[${d >> 2}][${d & 3}]`;
    lines.push(`{ let c = rem % ${sh}; rem = rem / ${sh}; off += c * ${st}; }`);
  }
  return /* wgsl */ `
${elem === 'f16' ? 'enable f16;' : ''}
${WG_INDEX}
struct P { n: u32, base: u32, _0: u32, _1: u32, sh: array<vec4<u32>, 2>, st: array<vec4<u32>, 2> }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<${elem}>;
@group(0) @binding(2) var<storage, read_write> Y: array<${elem}>;
${flatMain('o', 'u.n')}
  var rem = o;
  var off = u.base;
  ${lines.join('\n  ')}
  ${write ? 'Y[off] = X[o];' : 'Y[o] = X[off];'}
}`;
}

/**
 * Low level: iterate over `shape` (row-major); for strided read, out[o] = src[base + sum c*strides];
 * for strided write, dst[base + sum c*strides] = src[o]. No autodiff.
 */
export function stridedCopy(src: Tensor, dst: Tensor, shape: readonly number[], strides: number[], base: number, write: boolean) {
  const n = prod(shape);
  if (n === 0) return;
  const r = rt();
  for (const t of [src, dst])
    if (t.byteLength > r.maxBindingBytes)
      throw new ShapeError(`strided copy of a ${t.byteLength}-byte tensor exceeds the storage binding limit (${r.maxBindingBytes})`);
  const c = collapseDims(shape, [strides, stridesOf(shape)]);
  const pad = (v: number[], f: number) => [...v, ...new Array(8 - v.length).fill(f)];
  if (c.shape.length > 8) throw new ShapeError(`rank ${c.shape.length} too large`);
  const elem = src.dtype === 'f16' ? 'f16' : src.dtype === 'i32' ? 'i32' : 'f32';
  r.dispatch({
    name: write ? 'strided_write' : 'strided_read',
    code: stridedKernel(c.shape.length, write, elem),
    uniforms: new Uniforms().u32(n, base, 0, 0).u32(...pad(c.shape, 1), ...pad(c.strides[0], 0)).done(),
    bindings: [{ buffer: src.buffer }, { buffer: dst.buffer }],
    workgroups: grid(Math.ceil(n / 64)),
  });
}

export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const s = [...shape];
  const neg = s.indexOf(-1);
  if (neg >= 0) {
    const rest = prod(s.filter((_, i) => i !== neg));
    s[neg] = rest === 0 ? 0 : x.size / rest;
  }
  if (prod(s) !== x.size || s.some((d) => !Number.isInteger(d) || d < 0))
    throw new ShapeError(`reshape: cannot reshape [${x.shape}] (${x.size} elements) to [${shape}]`);
  if (sameShape(s, x.shape)) return x;
  return record(x.view(s), 'reshape', [x], (g) => [reshape(g, x.shape)]);
}

/** A contiguous copy (no autodiff link beyond identity). */
export function contiguousCopy(x: Tensor): Tensor {
  const out = Tensor.empty(x.shape, x.dtype, 'copy');
  if (x.size) rt().copy(x.buffer, 0, out.buffer, 0, Math.ceil(x.byteLength / 4) * 4);
  return out;
}

export function permute(x: Tensor, perm: number[]): Tensor {
  if (perm.length !== x.rank || [...perm].sort((a, b) => a - b).some((p, i) => p !== i))
    throw new ShapeError(`permute: [${perm}] is not a permutation of the ${x.rank} dims of [${x.shape}]`);
  const st = stridesOf(x.shape);
  const shape = perm.map((p) => x.shape[p]);
  const out = Tensor.empty(shape, x.dtype, 'permute');
  stridedCopy(x, out, shape, perm.map((p) => st[p]), 0, false);
  const inv = perm.map((_, i) => perm.indexOf(i));
  return record(out, 'permute', [x], (g) => [permute(g, inv)]);
}

export function transpose(x: Tensor, a = -2, b = -1): Tensor {
  const perm = x.shape.map((_, i) => i);
  const i = normAxis(a, x.rank, 'transpose');
  const j = normAxis(b, x.rank, 'transpose');
  [perm[i], perm[j]] = [perm[j], perm[i]];
  return permute(x, perm);
}

/** Slice [start, end) along each listed axis (step 1). `ranges[axis] = [start, end]`; missing = full. */
export function slice(x: Tensor, ranges: Record<number, [number, number]> | [number, number][]): Tensor {
  const starts = x.shape.map(() => 0);
  const shape = [...x.shape];
  for (const [k, v] of Object.entries(ranges)) {
    if (!v) continue;
    const ax = normAxis(Number(k), x.rank, 'slice');
    let [s, e] = v;
    if (s < 0) s += x.shape[ax];
    if (e < 0) e += x.shape[ax];
    if (s < 0 || e > x.shape[ax] || s > e) throw new ShapeError(`slice: range [${v}] out of bounds for axis ${ax} of [${x.shape}]`);
    starts[ax] = s;
    shape[ax] = e - s;
  }
  const st = stridesOf(x.shape);
  const base = starts.reduce((a, s, i) => a + s * st[i], 0);
  const out = Tensor.empty(shape, x.dtype, 'slice');
  stridedCopy(x, out, shape, st, base, false);
  return record(out, 'slice', [x], (g) => {
    const z = zeros(x.shape, floatOf(g));
    stridedCopy(g, z, shape, st, base, true);
    return [z];
  });
}

/** Split along an axis into pieces of the given sizes (or `n` equal pieces). */
export function split(x: Tensor, sizes: number | number[], axis = 0): Tensor[] {
  const ax = normAxis(axis, x.rank, 'split');
  const list = typeof sizes === 'number' ? new Array(sizes).fill(x.shape[ax] / sizes) : sizes;
  if (list.reduce((a, b) => a + b, 0) !== x.shape[ax] || list.some((s) => !Number.isInteger(s)))
    throw new ShapeError(`split: sizes [${list}] do not divide axis ${ax} of [${x.shape}]`);
  let s = 0;
  return list.map((n) => {
    const r: [number, number][] = [];
    r[ax] = [s, s + n];
    s += n;
    return slice(x, r);
  });
}

export function concat(xs: Tensor[], axis = 0): Tensor {
  if (!xs.length) throw new ShapeError('concat: no tensors');
  const ax = normAxis(axis, xs[0].rank, 'concat');
  for (const t of xs)
    if (t.rank !== xs[0].rank || t.shape.some((d, i) => i !== ax && d !== xs[0].shape[i]))
      throw new ShapeError(`concat: shapes [${xs.map((t) => `[${t.shape}]`).join(', ')}] differ outside axis ${ax}`);
  for (const t of xs)
    if (t.dtype !== xs[0].dtype)
      throw new ShapeError(`concat: dtypes ${xs.map((t) => t.dtype).join(', ')} differ: concatenate tensors of one dtype (cast() converts)`);
  const shape = [...xs[0].shape];
  shape[ax] = xs.reduce((a, t) => a + t.shape[ax], 0);
  const out = Tensor.empty(shape, xs[0].dtype, 'concat');
  const st = stridesOf(shape);
  let off = 0;
  for (const t of xs) {
    stridedCopy(t, out, t.shape, st, off * st[ax], true);
    off += t.shape[ax];
  }
  return record(out, 'concat', xs, (g) => {
    let o = 0;
    return xs.map((t) => {
      const r: [number, number][] = [];
      r[ax] = [o, o + t.shape[ax]];
      o += t.shape[ax];
      return wantsGrad(t) ? slice(g, r) : null;
    });
  });
}

/** Constant zero padding: `pads[axis] = [before, after]`. */
export function pad(x: Tensor, pads: Record<number, [number, number]> | [number, number][]): Tensor {
  const before = x.shape.map(() => 0);
  const shape = [...x.shape];
  for (const [k, v] of Object.entries(pads)) {
    if (!v) continue;
    const ax = normAxis(Number(k), x.rank, 'pad');
    if (v[0] < 0 || v[1] < 0) throw new ShapeError('pad: negative padding');
    before[ax] = v[0];
    shape[ax] += v[0] + v[1];
  }
  const out = zeros(shape, floatOf(x)); // (i32 zeros are f32 zeros' bits)
  const st = stridesOf(shape);
  stridedCopy(x, out, x.shape, st, before.reduce((a, b, i) => a + b * st[i], 0), true);
  return record(out, 'pad', [x], (g) => {
    const r: [number, number][] = before.map((b, i) => [b, b + x.shape[i]]);
    return [slice(g, r)];
  });
}

export function broadcastTo(x: Tensor, shape: readonly number[]): Tensor {
  if (sameShape(x.shape, shape)) return x;
  const out = Tensor.empty(shape, x.dtype, 'broadcast');
  stridedCopy(x, out, shape, broadcastStrides(x.shape, shape), 0, false);
  return record(out, 'broadcastTo', [x], (g) => [sumTo(g, x.shape)]);
}

/**
 * Embedding lookup: rows of `table` [V, D] picked by integer ids (host array), giving [...ids.shape, D].
 * The ids are kept on the host so the backward can add rows without atomics.
 */
export function gather(table: Tensor, ids: ArrayLike<number>, idsShape: number[] = [ids.length]): Tensor {
  if (table.rank !== 2) throw new ShapeError(`gather: table must be [V, D], got [${table.shape}]`);
  const [V, D] = table.shape;
  for (let i = 0; i < ids.length; i++)
    if (!(ids[i] >= 0 && ids[i] < V)) throw new ShapeError(`gather: id ${ids[i]} at position ${i} is outside the table's ${V} rows`);
  const idT = Tensor.from(Int32Array.from(ids), [ids.length], 'i32');
  const out = Tensor.empty([...idsShape, D], 'f32', 'gather');
  const code = /* wgsl */ `
${WG_INDEX}
struct P { n: u32, d: u32, _0: u32, _1: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> T: array<f32>;
@group(0) @binding(2) var<storage, read> I: array<i32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;
${flatMain('o', 'u.n')}
  let row = o / u.d;
  Y[o] = T[u32(I[row]) * u.d + o % u.d];
}`;
  const n = ids.length * D;
  if (n)
    rt().dispatch({
      name: 'gather',
      code,
      uniforms: new Uniforms().u32(n, D, 0, 0).done(),
      bindings: [{ buffer: table.buffer }, { buffer: idT.buffer }, { buffer: out.buffer }],
      workgroups: grid(Math.ceil(n / 64)),
    });
  idT.dispose();
  return record(out, 'gather', [table], (g) => [gatherBackward(g, ids, V, D)]);
}

function gatherBackward(g: Tensor, ids: ArrayLike<number>, V: number, D: number): Tensor {
  // rows that occur: for each, the list of positions; one invocation per (unique row, column)
  const pos = new Map<number, number[]>();
  for (let i = 0; i < ids.length; i++) {
    const l = pos.get(ids[i]);
    if (l) l.push(i);
    else pos.set(ids[i], [i]);
  }
  const rows = [...pos.keys()];
  const starts = [0];
  const flat: number[] = [];
  for (const r of rows) {
    flat.push(...pos.get(r)!);
    starts.push(flat.length);
  }
  const out = zeros([V, D]);
  const rowsT = Tensor.from(Int32Array.from(rows), [rows.length], 'i32');
  const startsT = Tensor.from(Int32Array.from(starts), [starts.length], 'i32');
  const flatT = Tensor.from(Int32Array.from(flat), [flat.length], 'i32');
  const code = /* wgsl */ `
${WG_INDEX}
struct P { n: u32, d: u32, _0: u32, _1: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> G: array<f32>;
@group(0) @binding(2) var<storage, read> R: array<i32>;
@group(0) @binding(3) var<storage, read> S: array<i32>;
@group(0) @binding(4) var<storage, read> F: array<i32>;
@group(0) @binding(5) var<storage, read_write> Y: array<f32>;
${flatMain('o', 'u.n')}
  let k = o / u.d;
  let c = o % u.d;
  var acc = 0.0;
  for (var j = S[k]; j < S[k + 1u]; j++) { acc += G[u32(F[j]) * u.d + c]; }
  Y[u32(R[k]) * u.d + c] = acc;
}`;
  const n = rows.length * D;
  rt().dispatch({
    name: 'gather_backward',
    code,
    uniforms: new Uniforms().u32(n, D, 0, 0).done(),
    bindings: [{ buffer: g.buffer }, { buffer: rowsT.buffer }, { buffer: startsT.buffer }, { buffer: flatT.buffer }, { buffer: out.buffer }],
    workgroups: grid(Math.ceil(n / 64)),
  });
  rowsT.dispose();
  startsT.dispose();
  flatT.dispose();
  return out;
}
