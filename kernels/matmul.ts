// Batched matmul C[b] = op(A[b]) @ op(B[b]) (+ bias over N), f32 accumulation, with transposes folded into
// the loads (no transpose copies, except for the K-major tile below, which makes them where they pay). Three
// tilings:
//  - 'subgroup' (CPU adapters such as lavapipe, when the `subgroups` feature is present and the subgroup size
//    is fixed): one workgroup = one subgroup. Each lane owns 4 rows of C, the subgroup shares 32 columns of
//    op(B) through subgroupBroadcast, one k per step (see `subgroupKernelSource`). On lavapipe every memory
//    access that differs between lanes becomes a per-lane loop with bounds checks (~25 instructions per
//    lane and component), so the kernel is built to minimise such loads per FMA; see bench/README.md.
//    With 8-wide subgroups and N a multiple of 4, a K-major tile with vec4 operands is used instead where it
//    pays (see "K-major tile" below).
//  - 'register' (CPU adapters without fixed-size subgroups): each invocation computes a 4x4 block straight
//    from global memory with scalar loads; no workgroup memory and no barriers (barriers serialize lavapipe's
//    lanes).
//  - 'shared' (GPUs): 64x64 workgroup tiles staged in workgroup memory, 4x4 outputs per invocation.
// All are tested; the runtime picks by adapter class unless told otherwise (`setMatmulVariant`).
// Dtypes: A (the activation) f32 or f16, B (an activation or a weight) f32 or f16 independently, the bias f32;
// every tiling reads each operand in its own storage type and computes in f32. The output is f16 when A is
// f16, else f32; in the backward each gradient takes its tensor's dtype (see `matmul`).
import { rt, Uniforms } from '../engine/runtime.js';
import { ShapeError, Tensor, record, wantsGrad } from '../engine/tensor.js';
import { grid, memoKernel, WG_INDEX, flatMain, perRuntime, floatDtype, storageType, enableF16, widen, narrow, type FloatDType } from './util.js';
import { reshape } from './shape.js';
import { sumTo } from './reduce.js';

export type MatmulVariant = 'register' | 'shared' | 'subgroup';
let forced: MatmulVariant | null = null;
/**
 * Force a tiling (tests and benchmarks); null restores the per-adapter default. A forced 'subgroup' falls back
 * to 'register' on adapters without fixed-size subgroups.
 */
export function setMatmulVariant(v: MatmulVariant | null) {
  forced = v;
}
/** The preferred tiling on this adapter (before per-shape fallbacks). */
export function matmulVariant(): MatmulVariant {
  if (forced) return forced;
  if (rt().gpu.adapterClass !== 'cpu') return 'shared';
  return subgroupSize() ? 'subgroup' : 'register';
}

/** The fixed subgroup size when the device has `subgroups` and min == max, else 0. */
function subgroupSize(): number {
  const g = rt().gpu;
  if (!g.features.has('subgroups')) return 0;
  const lo = g.subgroupMinSize ?? 0;
  const hi = g.subgroupMaxSize ?? 0;
  return lo === hi && lo >= 4 && lo <= 64 && (lo & (lo - 1)) === 0 ? lo : 0;
}

const TM = 4;
const TN = 4;

/** Storage dtypes of the bound operands and of the output (the bias is f32). */
interface Dts {
  a: FloatDType;
  b: FloatDType;
  c: FloatDType;
}

function loadExprs(transA: boolean, transB: boolean, d: Dts) {
  // element (m, k) of op(A) and (k, n) of op(B) within the current batch
  const a = transA ? (m: string, k: string) => widen(d.a, `A[aBase + (${k}) * u.M + (${m})]`) : (m: string, k: string) => widen(d.a, `A[aBase + (${m}) * u.K + (${k})]`);
  const b = transB ? (k: string, n: string) => widen(d.b, `B[bBase + (${n}) * u.K + (${k})]`) : (k: string, n: string) => widen(d.b, `B[bBase + (${k}) * u.N + (${n})]`);
  return { a, b };
}

// `last`: the parameter block's last word (padding unless a kernel uses it)
const HEADER = (d: Dts, bias: boolean, last = '_0') => /* wgsl */ `
${enableF16(d.a, d.b, d.c)}
struct P { M: u32, N: u32, K: u32, batch: u32, aStride: u32, bStride: u32, cStride: u32, ${last}: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> A: array<${storageType(d.a)}>;
@group(0) @binding(2) var<storage, read> B: array<${storageType(d.b)}>;
${bias ? '@group(0) @binding(3) var<storage, read> BIAS: array<f32>;' : ''}
@group(0) @binding(${bias ? 4 : 3}) var<storage, read_write> C: array<${storageType(d.c)}>;`;

const registerKernel = memoKernel(registerKernelSource);
function registerKernelSource(transA: boolean, transB: boolean, bias: boolean, d: Dts): string {
  const { a, b } = loadExprs(transA, transB, d);
  const rows = [...Array(TM).keys()];
  const cols = [...Array(TN).keys()];
  return /* wgsl */ `${HEADER(d, bias)}
@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let n0 = gid.x * ${TN}u;
  let m0 = gid.y * ${TM}u;
  let bat = gid.z;
  if (n0 >= u.N || m0 >= u.M) { return; }
  let aBase = bat * u.aStride;
  let bBase = bat * u.bStride;
  // clamp rows/cols so that edge tiles read valid memory; their results are not stored
  ${rows.map((i) => `let mi${i} = min(m0 + ${i}u, u.M - 1u);`).join(' ')}
  ${cols.map((j) => `let nj${j} = min(n0 + ${j}u, u.N - 1u);`).join(' ')}
  ${rows.map((i) => `var acc${i} = vec4<f32>(0.0);`).join(' ')}
  for (var k = 0u; k < u.K; k++) {
    let bv = vec4<f32>(${cols.map((j) => b('k', `nj${j}`)).join(', ')});
    ${rows.map((i) => `acc${i} = fma(vec4<f32>(${a(`mi${i}`, 'k')}), bv, acc${i});`).join('\n    ')}
  }
  let cBase = bat * u.cStride;
  ${bias ? `let bb = vec4<f32>(${cols.map((j) => `BIAS[nj${j}]`).join(', ')});` : ''}
  ${rows
    .map(
      (i) => `if (m0 + ${i}u < u.M) {
    let v = acc${i}${bias ? ' + bb' : ''};
    ${cols.map((j) => `if (n0 + ${j}u < u.N) { C[cBase + (m0 + ${i}u) * u.N + n0 + ${j}u] = ${narrow(d.c, `v[${j}]`)}; }`).join(' ')}
  }`,
    )
    .join('\n  ')}
}`;
}

// The 'shared' tiling (GPUs): 64x64 outputs per workgroup of 16x16 invocations (4x4 each), K in steps of 16
// staged in workgroup memory. Two options (`setMatmulSharedTuning`), off by default until measured on a GPU:
//  - coalesced: each tile is loaded along the operand's contiguous dimension (consecutive invocations read
//    consecutive addresses whatever the transposes; by default only op(A) = Aᵀ and op(B) = B are), with the
//    workgroup arrays padded to 65 columns so that those stores do not collide in one memory bank.
//  - split-K: where the output has few tiles and K is long (weight gradients: 320x1280 outputs over 4096 rows
//    are 100 workgroups, fewer than a large GPU has multiprocessors), the K range is cut into slices that run
//    as separate workgroups, each writing f32 partial sums; a second pass adds the slices and the bias.
export interface SharedTuning {
  coalesced: boolean;
  /** 'never', 'auto' (by the output's tile count and K), or a forced number of slices (tests) */
  splitK: 'never' | 'auto' | number;
}
const SHARED_DEFAULT: SharedTuning = { coalesced: false, splitK: 'never' };
let sharedTuning: SharedTuning = { ...SHARED_DEFAULT };
/** Tune the 'shared' tiling (GPUs); null restores the defaults. */
export function setMatmulSharedTuning(t: Partial<SharedTuning> | null) {
  sharedTuning = { ...SHARED_DEFAULT, ...(t ?? {}) };
}
/** 'auto' split-K: below this many output tiles, and with K at least SPLIT_MIN_K, split K */
const SPLIT_TILES = 256;
const SPLIT_MIN_K = 1024;
/** K rows per slice: a multiple of the K step, at least 256 under 'auto' */
function splitSlices(M: number, N: number, K: number, batch: number): { slices: number; chunk: number } {
  const tiles = Math.ceil(M / 64) * Math.ceil(N / 64) * batch;
  const mode = sharedTuning.splitK;
  let want = 1;
  if (typeof mode === 'number') want = Math.max(1, Math.floor(mode));
  else if (mode === 'auto' && tiles < SPLIT_TILES && K >= SPLIT_MIN_K) want = Math.min(Math.ceil(SPLIT_TILES / tiles), Math.floor(K / 256));
  const chunk = Math.ceil(Math.ceil(K / Math.max(1, want)) / 16) * 16;
  return { slices: Math.ceil(K / chunk), chunk };
}

const sharedKernel = memoKernel(sharedKernelSource);
function sharedKernelSource(transA: boolean, transB: boolean, bias: boolean, d: Dts, coalesced = false, split = false): string {
  const { a, b } = loadExprs(transA, transB, d);
  // the tile loads: element e of 1024 is (row kk of K, column mm) along the column by default; along K where
  // coalescing and the operand is contiguous in K (A not transposed, B transposed)
  const alongK = (kContig: boolean) => coalesced && kContig;
  const idx = (kContig: boolean) => (alongK(kContig) ? 'let kk = e % 16u; let mm = e / 16u;' : 'let kk = e / 64u; let mm = e % 64u;');
  const W = coalesced ? 65 : 64;
  // split: workgroup_id.z = slice * batch + batch item; K range [k0s, k1s); f32 partial sums, no bias
  const out = split
    ? `C[(wid.z * u.M + m) * u.N + n] = acc[i][j];`
    : `C[cBase + m * u.N + n] = ${narrow(d.c, `acc[i][j]${bias ? ' + BIAS[n]' : ''}`)};`;
  const header = split ? HEADER({ ...d, c: 'f32' }, false, 'chunk') : HEADER(d, bias);
  return /* wgsl */ `${header}
var<workgroup> As: array<array<f32, ${W}>, 16>;
var<workgroup> Bs: array<array<f32, ${W}>, 16>;
@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let tileN = wid.x * 64u;
  let tileM = wid.y * 64u;
  let bat = wid.z${split ? ' % u.batch' : ''};
  let aBase = bat * u.aStride;
  let bBase = bat * u.bStride;
  let li = lid.y * 16u + lid.x;
  let k0s = ${split ? '(wid.z / u.batch) * u.chunk' : '0u'};
  let k1s = ${split ? 'min(u.K, k0s + u.chunk)' : 'u.K'};
  var acc: array<vec4<f32>, 4>;
  for (var i = 0u; i < 4u; i++) { acc[i] = vec4<f32>(0.0); }
  for (var k0 = k0s; k0 < k1s; k0 += 16u) {
    // write-after-read: every invocation must be done reading the previous tile
    workgroupBarrier();
    for (var e = li; e < 1024u; e += 256u) {
      {
        ${idx(!transA)}
        let gk = k0 + kk;
        let gm = tileM + mm;
        As[kk][mm] = select(0.0, ${a('min(gm, u.M - 1u)', 'min(gk, u.K - 1u)')}, gk < k1s && gm < u.M);
      }
      {
        ${idx(transB)}
        let gk = k0 + kk;
        let gn = tileN + mm;
        Bs[kk][mm] = select(0.0, ${b('min(gk, u.K - 1u)', 'min(gn, u.N - 1u)')}, gk < k1s && gn < u.N);
      }
    }
    workgroupBarrier();
    for (var kk = 0u; kk < 16u; kk++) {
      let bv = vec4<f32>(Bs[kk][lid.x * 4u], Bs[kk][lid.x * 4u + 1u], Bs[kk][lid.x * 4u + 2u], Bs[kk][lid.x * 4u + 3u]);
      for (var i = 0u; i < 4u; i++) { acc[i] = fma(vec4<f32>(As[kk][lid.y * 4u + i]), bv, acc[i]); }
    }
  }
  let cBase = bat * u.cStride;
  for (var i = 0u; i < 4u; i++) {
    let m = tileM + lid.y * 4u + i;
    if (m >= u.M) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let n = tileN + lid.x * 4u + j;
      if (n < u.N) { ${out} }
    }
  }
}`;
}

// the sum of the split-K slices' partials P [slices, total] (+ bias over the last dim), stored in C's dtype
const splitSumKernel = memoKernel(
  (bias: boolean, c: FloatDType) => /* wgsl */ `${enableF16(c)}
${WG_INDEX}
struct P { total: u32, N: u32, slices: u32, _0: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> PS: array<f32>;
${bias ? '@group(0) @binding(2) var<storage, read> BIAS: array<f32>;' : ''}
@group(0) @binding(${bias ? 3 : 2}) var<storage, read_write> C: array<${storageType(c)}>;
${flatMain('i', 'u.total')}
  var v = ${bias ? 'BIAS[i % u.N]' : '0.0'};
  for (var s = 0u; s < u.slices; s++) { v += PS[s * u.total + i]; }
  C[i] = ${narrow(c, 'v')};
}`,
);

const range = (n: number) => [...Array(n).keys()];

/** 'subgroup' tile: SG_T rows of C per lane (strided by the subgroup size), SG_N columns per subgroup */
const SG_T = 4;
const SG_N = 32;

interface SubgroupCfg {
  S: number;
  transA: boolean;
  transB: boolean;
  bias: boolean;
  d: Dts;
}

// One workgroup = one subgroup of S lanes computing a (SG_T * S) x SG_N tile of C, one k per step: lane L loads
// op(A)[m0 + t S + L, k] for its SG_T rows (scalar loads) and op(B)[k, n0 + 4 j .. 4 j + 3] for its share of
// the 32 columns; every column's value reaches all lanes through subgroupBroadcast, so a step is 4 x 32 FMAs
// per lane for 8 scalar loads (S = 8). This is the tiling of conv2d's subgroup kernel; the previous one read A
// and B as vec4 along K (2 rows x 32 columns per lane, 24 scalars per 256 FMAs) and ran 1.1-1.6x slower on
// lavapipe. Scalar loads with clamped indices take any shape and either transpose.
const subgroupKernel = memoKernel(subgroupKernelSource);
function subgroupKernelSource(c: SubgroupCfg): string {
  const { S, transA, transB, bias, d } = c;
  const T = range(SG_T);
  const G = range(Math.max(1, SG_N / (4 * S))); // vec4 of columns per lane
  const cols = range(SG_N);
  // column j lives in component j % 4 of vec4 number (j / 4) / S of lane (j / 4) % S
  const bc = (v: string, j: number) => `subgroupBroadcast(${v}${Math.floor((j >> 2) / S)}[${j % 4}], ${(j >> 2) % S}u)`;
  const aLoad = (t: number) => widen(d.a, transA ? `A[aB + k * u.M + mc${t}]` : `A[aB + mc${t} * u.K + k]`);
  const bLoad = (col: string) => widen(d.b, transB ? `B[bB + ${col} * u.K + k]` : `B[bB + k * u.N + ${col}]`);
  return /* wgsl */ `enable subgroups;
${enableF16(d.a, d.b, d.c)}
struct P { M: u32, N: u32, K: u32, aS: u32, bS: u32, cS: u32, _0: u32, _1: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> A: array<${storageType(d.a)}>;
@group(0) @binding(2) var<storage, read> B: array<${storageType(d.b)}>;
${bias ? '@group(0) @binding(3) var<storage, read> BIAS: array<f32>;' : ''}
@group(0) @binding(${bias ? 4 : 3}) var<storage, read_write> C: array<${storageType(d.c)}>;
@compute @workgroup_size(${S}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) sl: u32) {
  // row blocks vary fastest so that consecutive workgroups reuse the same columns of B from cache
  let m0 = wid.x * ${SG_T * S}u;
  let n0 = wid.y * ${SG_N}u;
  let aB = wid.z * u.aS;
  let bB = wid.z * u.bS;
  // rows and columns clamped into range: their results are computed but never stored
  ${T.map((t) => `let mi${t} = m0 + ${t * S}u + sl; let mc${t} = min(mi${t}, u.M - 1u);`).join('\n  ')}
  ${G.map((g) => [0, 1, 2, 3].map((j) => `let nc${g}_${j} = min(n0 + ${4 * S * g}u + sl * 4u + ${j}u, u.N - 1u);`).join(' ')).join('\n  ')}
  ${cols.map((j) => T.map((t) => `var c${j}_${t} = 0.0;`).join(' ')).join('\n  ')}
  for (var k = 0u; k < u.K; k++) {
    ${T.map((t) => `let a${t} = ${aLoad(t)};`).join(' ')}
    ${G.map((g) => `let bv${g} = vec4<f32>(${[0, 1, 2, 3].map((j) => bLoad(`nc${g}_${j}`)).join(', ')});`).join(' ')}
    ${cols.map((j) => `{ let b = ${bc('bv', j)}; ${T.map((t) => `c${j}_${t} = fma(a${t}, b, c${j}_${t});`).join(' ')} }`).join('\n    ')}
  }
  ${G.map((g) => `let bias${g} = ${bias ? `vec4<f32>(${[0, 1, 2, 3].map((j) => `BIAS[nc${g}_${j}]`).join(', ')})` : 'vec4<f32>(0.0)'};`).join(' ')}
  // the epilogue runs as a loop over columns (small code); the accumulators are staged in a private array
  var acc: array<vec4<f32>, ${SG_N}>;
  ${cols.map((j) => `acc[${j}] = vec4<f32>(${T.map((t) => `c${j}_${t}`).join(', ')}) + ${bc('bias', j)};`).join('\n  ')}
  let cB = wid.z * u.cS;
  let jn = min(${SG_N}u, u.N - n0);
  for (var j = 0u; j < jn; j++) {
    let v = acc[j];
    ${T.map((t) => `if (mi${t} < u.M) { C[cB + mi${t} * u.N + n0 + j] = ${narrow(d.c, `v[${t}]`)}; }`).join('\n    ')}
  }
}`;
}

// K-major tile (CPU adapters with 8-wide subgroups, N a multiple of 4). The general 'subgroup' kernel above
// loads 8 scalars a step because op(A) and op(B) may have any layout. When both operands are stored K-major,
// A as [K, M] and B as [K, N], a lane's 4 rows and its 4 columns are one vec4 each: per k, two vec4 loads, the
// 32 rows' values handed round by constant-lane subgroupBroadcast, 32 vec4 FMAs into accumulators over the
// lane's 4 columns. Operands stored the other way are first copied K-major by a 4x4-block transpose (vec4
// loads and stores, rows padded to a multiple of 4 with zeros): x @ Wᵀ transposes both, dY @ W only A, and
// Aᵀ @ B (weight gradients and conv2d's Winograd GEMMs) neither. On lavapipe, for the UNet's linear layers, the
// kernel alone is 1.3-1.7x faster than the general one, 1.2-1.5x with the copies; see `kmajorPays`.
const KM_ROWS = 32;
// f16 operands: the K-major copies are f32 whatever the operand's dtype; an operand bound as stored (A
// transposed, B not) is read as vec4<f16> and widened; an f16 output is narrowed at the store.
const kmajorKernel = memoKernel((bias: boolean, d: Dts) => {
  const R = range(KM_ROWS);
  const f16 = enableF16(d.a, d.b, d.c);
  return /* wgsl */ `enable subgroups;${f16 ? `\n${f16}` : ''}
struct P { M: u32, M4: u32, N4: u32, K: u32, aS: u32, bS: u32, cS: u32, _0: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> A: array<vec4<${storageType(d.a)}>>;
@group(0) @binding(2) var<storage, read> B: array<vec4<${storageType(d.b)}>>;
${bias ? '@group(0) @binding(3) var<storage, read> BIAS: array<vec4<f32>>;' : ''}
@group(0) @binding(${bias ? 4 : 3}) var<storage, read_write> C: array<vec4<${storageType(d.c)}>>;
@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
  let n4 = wid.x * 8u + lane;
  let m0 = wid.y * ${KM_ROWS}u;
  // A[k] holds M4 vec4s of rows, B[k] N4 vec4s of columns; out-of-range vec4s are clamped (never stored)
  let aB = wid.z * u.aS + min(m0 / 4u + lane, u.M4 - 1u);
  let bB = wid.z * u.bS + min(n4, u.N4 - 1u);
  ${R.map((r) => `var c${r} = vec4<f32>(0.0);`).join(' ')}
  for (var k = 0u; k < u.K; k++) {
    let av = ${widen(d.a, 'A[aB + k * u.M4]', true)};
    let bv = ${widen(d.b, 'B[bB + k * u.N4]', true)};
    ${R.map((r) => `c${r} = fma(vec4<f32>(subgroupBroadcast(av[${r % 4}], ${r >> 2}u)), bv, c${r});`).join('\n    ')}
  }
  if (n4 < u.N4) {
    let bb = ${bias ? 'BIAS[n4]' : 'vec4<f32>(0.0)'};
    let cB = wid.z * u.cS + m0 * u.N4 + n4;
    ${R.map((r) => `if (m0 + ${r}u < u.M) { C[cB + ${r}u * u.N4] = ${narrow(d.c, `c${r} + bb`, true)}; }`).join('\n    ')}
  }
}`;
});

// out[b, c, r] = in[b, r, c] for in [batch, R, Cc] (f32 or f16) -> out [batch, Cc, Rp] f32, Rp = R rounded up to 4
// (zero rows). One invocation per 4x4 block: 4 loads (vec4 when Cc is a multiple of 4), 4 vec4 stores.
const transposeKernel = memoKernel((f16: boolean, vec: boolean) => {
  const J = [0, 1, 2, 3];
  const ty = f16 ? 'f16' : 'f32';
  return /* wgsl */ `${f16 ? 'enable f16;' : ''}
${WG_INDEX}
struct P { R: u32, Cc: u32, Rq: u32, Cq: u32, inS: u32, outS: u32, _0: u32, _1: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<${vec ? `vec4<${ty}>` : ty}>;
@group(0) @binding(2) var<storage, read_write> Y: array<vec4<f32>>;
${flatMain('i', 'u.Rq * u.Cq')}
  let cq = i / u.Rq;
  let rq = i - cq * u.Rq;
  let b = wid.z;
  ${J.map((t) => {
    const row = `4u * rq + ${t}u`;
    return vec
      ? `let ok${t} = ${row} < u.R; let v${t} = select(vec4<f32>(0.0), vec4<f32>(X[select(0u, b * u.inS / 4u + (${row}) * u.Cq + cq, ok${t})]), ok${t});`
      : `let ok${t} = ${row} < u.R; let v${t} = vec4<f32>(${J.map((j) => `select(0.0, f32(X[select(0u, b * u.inS + (${row}) * u.Cc + 4u * cq + ${j}u, ok${t} && 4u * cq + ${j}u < u.Cc)]), ok${t} && 4u * cq + ${j}u < u.Cc)`).join(', ')});`;
  }).join('\n  ')}
  let o = b * u.outS / 4u + 4u * cq * u.Rq + rq;
  ${J.map((j) => `if (4u * cq + ${j}u < u.Cc) { Y[o + ${j}u * u.Rq] = vec4<f32>(v0[${j}], v1[${j}], v2[${j}], v3[${j}]); }`).join('\n  ')}
}`;
});

/** K-major copy [batch, Cc, ceil4(R)] of t [batch, R, Cc]. */
function kmajorCopy(t: Tensor, batch: number, R: number, Cc: number): Tensor {
  const out = Tensor.empty([batch, Cc, Math.ceil(R / 4) * 4], 'f32', 'matmul_kmajor');
  kmajorCopyInto(t, batch, R, Cc, out.buffer);
  return out;
}

function kmajorCopyInto(t: Tensor, batch: number, R: number, Cc: number, out: GPUBuffer) {
  const Rp = Math.ceil(R / 4) * 4;
  const vec = Cc % 4 === 0;
  const Rq = Rp / 4;
  const Cq = Math.ceil(Cc / 4);
  const [x, y] = grid(Math.ceil((Rq * Cq) / 64));
  rt().dispatch({
    name: 'matmul_transpose',
    code: transposeKernel(t.dtype === 'f16', vec),
    uniforms: new Uniforms().u32(R, Cc, Rq, Cq, R * Cc, Cc * Rp, 0, 0).done(),
    bindings: [{ buffer: t.buffer }, { buffer: out }],
    workgroups: [x, y, batch],
  });
}

// K-major weight copies. x @ Wᵀ (every linear layer) needs W [N, K] copied K-major for the K-major tile, and at
// small M (the UNet's 8x8 level, the text context's 154 rows) that copy costs as much as the tile saves, so the
// general kernel ran there. A model's weights are multiplied many times unchanged (every UNet call of a sampler),
// so from the second multiplication by the same frozen f32 weight (requiresGrad false, same data version) its
// K-major copy is kept and reused: on lavapipe 1.2-1.8x faster than the general kernel at M = 32..154, and no
// per-call copy at larger M (bench/README.md). The copies count as pooled memory and are freed by
// `rt().releasePool()` (which the runtime also calls when an allocation would pass its memory cap), with the
// weight, or when the weight changes in place (`Tensor.markModified`); none are made past the cap
// (`setMatmulWeightCacheBytes`, default 1.5 GiB: the SD 2.1 UNet needs 1.15 GiB; 0 turns the cache off). No
// eviction: weights come back in a fixed cycle, where evicting the least recently used would evict every copy
// before its reuse.
interface WeightEntry {
  /** the operand's layout the copy is for: batch, N, K */
  dims: string;
  version: number;
  uses: number;
  copy: GPUBuffer | null;
  bytes: number;
}
const WEIGHT_CACHE_DEFAULT = 1.5 * 2 ** 30;
let weightCacheCap = WEIGHT_CACHE_DEFAULT;
/** Cap on the K-major weight copies kept between calls (bytes; 0: none are kept; null: the default, 1.5 GiB). */
export function setMatmulWeightCacheBytes(bytes: number | null) {
  weightCacheCap = bytes ?? WEIGHT_CACHE_DEFAULT;
}
/** Bytes of K-major weight copies currently kept (tests, memory reports). */
export function matmulWeightCacheBytes(): number {
  let n = 0;
  for (const e of weightCache().values()) if (e.copy) n += e.bytes;
  return n;
}

// the entries stay on releasePool (each removes itself when its weight is freed); their copies go
const weightCache = perRuntime(
  () => new Map<object, WeightEntry>(),
  (m) => {
    for (const e of m.values()) (drop(e), (e.uses = 0));
  },
);
function drop(e: WeightEntry) {
  if (!e.copy) return;
  e.copy.destroy(); // releasePool and the callers below flush first: queued kernels keep it alive
  rt().cacheBytes(-e.bytes);
  e.copy = null;
}

/**
 * The kept K-major copy [batch, K, ceil4(N)] of weight b [batch, N, K], made now if this is its second use, else
 * null: b may change (requires grad) or is f16, it is its first use (since it last changed), or the cap is reached.
 */
function cachedWeight(b: Tensor, batch: number, N: number, K: number): GPUBuffer | null {
  // f16 weights are not copied: their f32 copies would take back the memory the user chose f16 to save
  if (b.requiresGrad || b.dtype !== 'f32' || weightCacheCap <= 0) return null;
  const c = weightCache();
  const key = b.storageKey;
  const dims = `${batch} ${N} ${K}`;
  let e = c.get(key);
  if (e && e.dims !== dims) return null; // the same data seen with another shape: not cached
  if (!e) {
    const entry: WeightEntry = { dims, version: b.version, uses: 0, copy: null, bytes: 4 * batch * K * Math.ceil(N / 4) * 4 };
    c.set(key, (e = entry));
    b.onStorageRelease(() => {
      if (entry.copy) rt().flush();
      drop(entry);
      c.delete(key);
    });
  } else if (e.version !== b.version) {
    // changed in place since the copy was made: start over
    if (e.copy) rt().flush();
    drop(e);
    e.version = b.version;
    e.uses = 0;
  }
  e.uses++;
  if (e.copy) return e.copy;
  if (e.uses < 2 || matmulWeightCacheBytes() + e.bytes > weightCacheCap) return null;
  const r = rt();
  e.copy = r.device.createBuffer({ size: e.bytes, usage: GPUBufferUsage.STORAGE, label: 'matmul_kmajor_weight' });
  r.cacheBytes(e.bytes);
  kmajorCopyInto(b, batch, N, K, e.copy);
  return e.copy;
}

export type KMajorMode = 'auto' | 'always' | 'never';
let kmajorMode: KMajorMode = 'auto';
/** The K-major tile on 8-wide subgroups: 'auto' (where it pays), 'always' (wherever the shape allows), 'never' (tests, benchmarks). */
export function setMatmulKMajor(m: KMajorMode) {
  kmajorMode = m;
}

/**
 * Whether the K-major tile with its copies beats the general kernel: measured on lavapipe (paired, with the
 * copies) 1.2-1.5x where the multiply-adds are at least 128 per copied element (x @ Wᵀ with 154 to 4096 rows,
 * dY @ W, Aᵀ @ B), 0.6-0.9x below (x @ Wᵀ with 8 to 128 rows: the weight copy dominates).
 */
function kmajorPays(M: number, N: number, K: number, copyA: boolean, copyB: boolean): boolean {
  if (kmajorMode !== 'auto') return kmajorMode === 'always';
  const copied = (copyA ? M * K : 0) + (copyB ? N * K : 0);
  return copied * 128 <= M * N * K;
}

export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
  bias?: Tensor;
}

/**
 * Raw batched matmul on 2D/3D operands, no autodiff. A: [Ba, M, K] (or [Ba, K, M] transposed), B likewise.
 * A is the activation (f32, or f16 with `shader-f16`), B an activation or a weight (f32 or f16, independently
 * of A), the bias f32; arithmetic is f32. The output has A's dtype: f16 when A is f16, else f32 (an f32
 * activation times an f16 weight gives f32).
 */
export function matmulRaw(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  return matmulInto(a, b, opts, floatDtype('matmul', 'A', a));
}

/** matmulRaw with the output's dtype chosen by the caller (the backward: a gradient takes its tensor's dtype). */
function matmulInto(a: Tensor, b: Tensor, opts: MatmulOptions, cDt: FloatDType): Tensor {
  const { transA = false, transB = false, bias } = opts;
  if (a.rank < 2 || b.rank < 2) throw new ShapeError(`matmul: operands must have rank >= 2, got [${a.shape}] and [${b.shape}]`);
  const [M, K] = transA ? [a.shape[a.rank - 1], a.shape[a.rank - 2]] : [a.shape[a.rank - 2], a.shape[a.rank - 1]];
  const [K2, N] = transB ? [b.shape[b.rank - 1], b.shape[b.rank - 2]] : [b.shape[b.rank - 2], b.shape[b.rank - 1]];
  if (K !== K2) throw new ShapeError(`matmul: inner dims differ: [${a.shape}]${transA ? 'ᵀ' : ''} @ [${b.shape}]${transB ? 'ᵀ' : ''} (${K} vs ${K2})`);
  const batchA = a.shape.slice(0, -2);
  const batchB = b.shape.slice(0, -2);
  const Ba = batchA.reduce((x, y) => x * y, 1);
  const Bb = batchB.reduce((x, y) => x * y, 1);
  if (Ba !== Bb && Ba !== 1 && Bb !== 1) throw new ShapeError(`matmul: batch dims [${batchA}] and [${batchB}] do not broadcast`);
  const aDt = floatDtype('matmul', 'A', a);
  const bDt = floatDtype('matmul', 'B', b);
  if (bias && (bias.size !== N || bias.dtype !== 'f32')) throw new ShapeError(`matmul: bias must be f32 [${N}], got ${bias.dtype} [${bias.shape}]`);
  const batch = Math.max(Ba, Bb);
  const outBatch = Ba >= Bb ? batchA : batchB;
  const out = Tensor.empty([...outBatch, M, N], cDt, 'matmul');
  if (M * N * batch === 0) return out;
  const r = rt();
  for (const t of [a, b, out])
    if (t.byteLength > r.maxBindingBytes) throw new ShapeError(`matmul: operand of ${t.byteLength} bytes exceeds the storage binding limit; split the batch`);
  const d: Dts = { a: aDt, b: bDt, c: cDt };
  let variant = matmulVariant();
  const S = subgroupSize();
  if (variant === 'subgroup' && !S) variant = 'register';
  const aS = Ba === 1 ? 0 : M * K;
  const bS = Bb === 1 ? 0 : K * N;
  const bindings = [{ buffer: a.buffer }, { buffer: b.buffer }, ...(bias ? [{ buffer: bias.buffer }] : []), { buffer: out.buffer }];
  // the K-major tile: A is K-major as stored when transposed (then M must be a multiple of 4), B when not
  // transposed; otherwise a K-major copy (f32, whatever the operand's dtype) is made. Operands bound as stored
  // are read in their dtype (vec4<f16> for f16): an f16 B [K, N] runs 1.3-1.4x faster so than through the
  // general kernel (4096x320 @ 320x1280 on lavapipe, paired).
  if (variant === 'subgroup' && S === 8 && N % 4 === 0 && !(transA && M % 4 !== 0) && kmajorMode !== 'never') {
    const copyA = !transA;
    // the copies (rows padded to 4, f32) must fit a binding like the operands themselves
    const fits = 4 * Math.max(Ba * K * Math.ceil(M / 4) * 4, Bb * K * N) <= r.maxBindingBytes;
    // a frozen weight's K-major copy, kept from an earlier call or made now to keep (x @ Wᵀ)
    const cached = fits && transB && kmajorMode === 'auto' && kmajorPays(M, N, K, copyA, false) ? cachedWeight(b, Bb, N, K) : null;
    const copyB = transB && !cached;
    if (fits && kmajorPays(M, N, K, copyA, copyB)) {
      const ak = copyA ? kmajorCopy(a, Ba, M, K) : a;
      const bk = copyB ? kmajorCopy(b, Bb, N, K) : b;
      const M4 = Math.ceil(M / 4);
      r.dispatch({
        name: 'matmul_kmajor',
        code: kmajorKernel(!!bias, { a: ak.dtype as FloatDType, b: cached ? 'f32' : (bk.dtype as FloatDType), c: cDt }),
        uniforms: new Uniforms().u32(M, M4, N / 4, K, Ba === 1 ? 0 : K * M4, Bb === 1 ? 0 : (K * N) / 4, (M * N) / 4, 0).done(),
        bindings: [{ buffer: ak.buffer }, { buffer: cached ?? bk.buffer }, ...(bias ? [{ buffer: bias.buffer }] : []), { buffer: out.buffer }],
        workgroups: [Math.ceil(N / 32), Math.ceil(M / KM_ROWS), batch],
      });
      if (ak !== a) ak.dispose();
      if (bk !== b) bk.dispose();
      return out;
    }
  }
  if (variant === 'subgroup') {
    r.dispatch({
      name: 'matmul_subgroup',
      code: subgroupKernel({ S, transA, transB, bias: !!bias, d }),
      uniforms: new Uniforms().u32(M, N, K, aS, bS, M * N, 0, 0).done(),
      bindings,
      workgroups: [Math.ceil(M / (S * SG_T)), Math.ceil(N / SG_N), batch],
    });
    return out;
  }
  if (variant === 'shared') {
    const { coalesced } = sharedTuning;
    const { slices, chunk } = splitSlices(M, N, K, batch);
    const partBytes = slices * batch * M * N * 4;
    if (slices > 1 && partBytes <= r.maxBindingBytes && slices * batch <= r.maxWorkgroups) {
      const part = Tensor.empty([slices * batch * M * N], 'f32', 'matmul_split');
      r.dispatch({
        name: 'matmul_shared_split',
        code: sharedKernel(transA, transB, false, d, coalesced, true),
        uniforms: new Uniforms().u32(M, N, K, batch, aS, bS, M * N, chunk).done(),
        bindings: [{ buffer: a.buffer }, { buffer: b.buffer }, { buffer: part.buffer }],
        workgroups: [Math.ceil(N / 64), Math.ceil(M / 64), slices * batch],
      });
      const total = batch * M * N;
      r.dispatch({
        name: 'matmul_split_sum',
        code: splitSumKernel(!!bias, cDt),
        uniforms: new Uniforms().u32(total, N, slices, 0).done(),
        bindings: [{ buffer: part.buffer }, ...(bias ? [{ buffer: bias.buffer }] : []), { buffer: out.buffer }],
        workgroups: grid(Math.ceil(total / 64)),
      });
      part.dispose();
      return out;
    }
  }
  const code = variant === 'register' ? registerKernel(transA, transB, !!bias, d) : sharedKernel(transA, transB, !!bias, d, sharedTuning.coalesced);
  const wg: [number, number, number] =
    variant === 'register' ? [Math.ceil(N / TN / 8), Math.ceil(M / TM / 8), batch] : [Math.ceil(N / 64), Math.ceil(M / 64), batch];
  r.dispatch({
    name: `matmul_${variant}`,
    code,
    uniforms: new Uniforms().u32(M, N, K, batch, aS, bS, M * N, 0).done(),
    bindings,
    workgroups: wg,
  });
  return out;
}

/**
 * The gradient of operand t (dtype dt) from `full`, computed per batch of the output by f: summed over the
 * batch when t was broadcast over it. An f16 operand's per-batch products stay f32 until the sum is stored.
 */
function operandGrad(t: Tensor, batch: number, f: (outDt: FloatDType) => Tensor): Tensor {
  const dt = t.dtype as FloatDType;
  const full = f(batch > 1 && dt === 'f16' ? 'f32' : dt);
  return full.size === t.size ? full : sumTo(full, t.shape, dt);
}

/**
 * op(A) @ op(B) with batch broadcasting (batch dims flattened; one side may have batch 1), optional bias
 * added over the last dim. A is the activation (f32 or f16), B an activation or a weight (f32 or f16), the
 * bias f32; the output is f16 when A is f16, else f32 (see matmulRaw). Gradients for A, B and bias, each in
 * its tensor's dtype.
 */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const { transA = false, transB = false, bias } = opts;
  const out = matmulRaw(a, b, opts);
  return record(out, 'matmul', bias ? [a, b, bias] : [a, b], (g) => {
    let ga: Tensor | null = null;
    let gb: Tensor | null = null;
    const Ba = a.shape.slice(0, -2).reduce((x, y) => x * y, 1);
    const Bb = b.shape.slice(0, -2).reduce((x, y) => x * y, 1);
    if (wantsGrad(a)) {
      // dA = dC @ op(B)^T  (or its transpose when A was transposed); summed over the batch when A was broadcast
      ga = operandGrad(a, Ba < Bb ? Bb : 1, (dt) =>
        transA ? matmulInto(b, g, { transA: transB, transB: true }, dt) : matmulInto(g, b, { transB: !transB }, dt),
      );
    }
    if (wantsGrad(b)) {
      if (Bb === 1 && Ba > 1 && !transA) {
        // shared weight: fold the batch into M (one big GEMM instead of a batch then a sum)
        const a2 = reshape(a, [Ba * a.shape[a.rank - 2], a.shape[a.rank - 1]]);
        const g2 = reshape(g, [Ba * g.shape[g.rank - 2], g.shape[g.rank - 1]]);
        const dt = b.dtype as FloatDType;
        gb = transB ? matmulInto(g2, a2, { transA: true }, dt) : matmulInto(a2, g2, { transA: true }, dt);
        gb = reshape(gb, b.shape);
      } else {
        gb = operandGrad(b, Bb < Ba ? Ba : 1, (dt) =>
          transB ? matmulInto(g, a, { transA: true, transB: transA }, dt) : matmulInto(a, g, { transA: !transA }, dt),
        );
      }
    }
    // the bias is f32: an f16 dC is summed in f32
    const gBias = bias && wantsGrad(bias) ? sumTo(g, [bias.size], 'f32') : null;
    return [ga, gb, gBias];
  });
}

/** y = x @ W^T + bias for x [..., in] and W [out, in] (PyTorch Linear layout). */
export function linear(x: Tensor, w: Tensor, bias?: Tensor): Tensor {
  if (x.shape[x.rank - 1] !== w.shape[1])
    throw new ShapeError(`linear: input [${x.shape}] does not match weight [${w.shape}] (expected last dim ${w.shape[1]})`);
  const lead = x.shape.slice(0, -1);
  const x2 = reshape(x, [lead.reduce((p, q) => p * q, 1), x.shape[x.rank - 1]]);
  const y = matmul(x2, w, { transB: true, bias });
  return reshape(y, [...lead, w.shape[0]]);
}
