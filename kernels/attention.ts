// Fused multi-head attention, FlashAttention style: softmax(scale * Q K^T [+ causal mask]) V without ever
// materializing the Sq x Sk score matrix, forward or backward.
//
// Layout: q [B, Sq, H*D], k [B, Sk, H*D], v [B, Sk, H*Dv], out [B, Sq, H*Dv], heads interleaved in the last
// dim (as to_q/to_k/to_v projections produce them), so no permute copies are needed around the op.
// Storage: q, k, v share one dtype, f32 or f16 (with shader-f16); the output and the gradients dQ, dK, dV
// have it too, and so must the output gradient; the kernels compute in f32, and the saved row logsumexp is f32.
//
// Forward: online softmax over key blocks (running max and sum in f32, base-2 exponentials with log2(e)
// folded into the scale); saves the row logsumexp [B, H, Sq] (natural log) for the backward.
// Backward (FlashAttention-2): a small pass packs (lse * log2e, D = rowsum(dO * O)) per query row (the
// subgroup dQ kernel computes them itself, its lanes holding those dO rows already, and stores them for
// dK/dV); the dQ kernel owns query rows and loops over key blocks, recomputing P = exp(S - lse); the dK/dV
// kernel owns key rows and loops over query blocks.
//
// Three variants, chosen by adapter class unless forced (`setAttentionVariant`), all tested:
//  - 'subgroup' (CPU adapters with a fixed 8-wide subgroup, e.g. lavapipe): a workgroup is one subgroup; each
//    lane loads a different row of the current K/V (or Q/dO) block and subgroupBroadcast hands it to the other
//    lanes, so each element is read from memory once per subgroup; every lane owns several query (or key)
//    rows in registers. The running max is rescaled lazily, and exp2 is a polynomial (see FEXP2). The rows the
//    lanes load in turn (and, where the queue copies them, the rows each lane owns) come from read-only
//    storage textures, copied once per call, where WGSL has them (see "Rows from textures").
//  - 'register' (other CPU adapters): each invocation owns one row, K/V rows read straight from global
//    memory at workgroup-uniform addresses, in blocks. No workgroup memory, no barriers.
//  - 'shared' (GPUs): K/V (or Q/dO) tiles staged in workgroup memory by the whole workgroup, with a
//    barrier before each overwrite (write-after-read) and one after the load.
// Shaders are specialised per head dim (unrolled over D/4 vec4 registers), so D and Dv must be multiples of 4.
// Causal masking is top-left aligned (key j is visible to query i when j <= i), as PyTorch's is_causal.
import { rt, Uniforms, type Binding } from '../engine/runtime.js';
import { ShapeError, Tensor, needsGrad, record, wantsGrad } from '../engine/tensor.js';
import { memoKernel, clearKernelMemos, enableF16, sameFloatDtype, storageType, widen, narrow, type FloatDType } from './util.js';
import { setStagingTextureCacheBytes, stagingTexture, stagingFormat, texelBytes } from './staging.js';
import { matmul } from './matmul.js';
import { softmax } from './softmax.js';
import { permute, reshape } from './shape.js';
import { add } from './elementwise.js';

export type AttentionVariant = 'subgroup' | 'register' | 'shared';
let forced: AttentionVariant | null = null;
/** Force a variant (tests and benchmarks); null restores the per-adapter default. */
export function setAttentionVariant(v: AttentionVariant | null) {
  forced = v;
}
export function attentionVariant(): AttentionVariant {
  if (forced) return forced;
  if (rt().gpu.adapterClass !== 'cpu') return 'shared';
  return subgroupsUsable() ? 'subgroup' : 'register';
}
/** The variants this adapter can run. */
export function attentionVariants(): AttentionVariant[] {
  return subgroupsUsable() ? ['subgroup', 'register', 'shared'] : ['register', 'shared'];
}

export interface AttentionOptions {
  heads: number;
  /** default 1/sqrt(D) */
  scale?: number;
  causal?: boolean;
}

const LOG2E = 1.4426950408889634;
/** rows per workgroup (one per invocation) */
const WG = 64;
/** a finite "minus infinity" so that masked scores never produce inf - inf */
const NEG = '-1.0e30';

interface Dims {
  B: number;
  H: number;
  Sq: number;
  Sk: number;
  D: number;
  Dv: number;
  /** storage dtype of q, k, v, the output and every gradient (kernels compute in f32) */
  dt: FloatDType;
}

// f16 storage: bindings of q, k, v, the output and the gradients are declared with the tensors' storage type,
// every vec4 load is widened to f32 and every store narrowed (the generated WGSL is unchanged for f32); the
// row logsumexp and the backward's per-row (lse, D) stay f32.
/** WGSL storage type of the activations */
const ty = (d: Dims) => storageType(d.dt);

const HEADER = /* wgsl */ `
struct P { B: u32, H: u32, Sq: u32, Sk: u32, c: f32, scale: f32, _0: u32, _1: u32 }
@group(0) @binding(0) var<uniform> u: P;`;

/** WGSL: a query row's backward constants (lse * log2e, D) from its lse and the vec4 partial sums of dO * O */
const LD_ROW = /* wgsl */ `
fn ld_row(lse: f32, dd: vec4<f32>) -> vec2<f32> { return vec2<f32>(lse * ${LOG2E}, dd.x + dd.y + dd.z + dd.w); }`;

function consts(d: Dims) {
  return `const D4 = ${d.D / 4}u;\nconst DV4 = ${d.Dv / 4}u;`;
}

/**
 * WGSL exp2 for CPU adapters: llvmpipe's built-in exp2 costs about as much as the rest of the inner loop.
 * 2^x = 2^floor(x) * p(x - floor(x)) with a degree-5 polynomial (relative error < 2e-7 in f32); arguments
 * below -127 give exactly 0 (masked scores), above 127 are clamped. The exponent bits come from adding
 * 2^23 + 2^22 + 127 to floor(x) (the integer lands in the low mantissa bits) rather than from i32(): WGSL's
 * float-to-int conversion saturates, which llvmpipe emits as a scalar compare/convert sequence per lane.
 */
const FEXP2 = /* wgsl */ `
fn fexp2(x: f32) -> f32 {
  let y = clamp(x, -127.0, 127.0);
  let yi = floor(y);
  let f = y - yi;
  let p = fma(fma(fma(fma(fma(0.0018775764619931579, f, 0.008989340625703335), f, 0.05582631751894951), f, 0.24015361070632935), f, 0.6931530833244324), f, 0.9999999403953552);
  return p * bitcast<f32>(bitcast<u32>(yi + 12583039.0) << 23u);
}
fn hsum4(v: vec4<f32>) -> f32 { return (v.x + v.y) + (v.z + v.w); }`;

// ---------------------------------------------------------------------------------------------------------
// key/query block sizes per variant
const KB_REG = 8; // keys per block in the register forward / dQ kernels, queries per block in dK/dV

/** keys per shared tile: fit K and V tiles (f32) in ~12 KiB of workgroup memory */
function sharedTile(D: number, Dv: number): number {
  const limit = Math.min(rt().gpu.limits.maxComputeWorkgroupStorageSize ?? 16384, 16384) - 4096;
  let bc = 64;
  while (bc > 4 && bc * (D + Dv) * 4 > limit) bc /= 2;
  return bc;
}

// ---------------------------------------------------------------------------------------------------------
// forward

const range = (n: number) => [...Array(n).keys()];
/** balanced reduction of expressions with a binary function or operator */
function tree(xs: string[], op: (a: string, b: string) => string): string {
  if (xs.length === 1) return xs[0];
  const h = Math.ceil(xs.length / 2);
  return op(tree(xs.slice(0, h), op), tree(xs.slice(h), op));
}
const hsum = (v: string) => `((${v}.x + ${v}.y) + (${v}.z + ${v}.w))`;
/** acc = sum over t of vec4(w_t) * X[row_t + c], as an fma chain onto `init` */
const fmaChain = (d: Dims, init: string, ws: string[], rows: string[], arr: string, c: number) =>
  ws.reduce((acc, w, t) => `fma(vec4<f32>(${w}), ${widen(d.dt, `${arr}[${rows[t]} + ${c}u]`, true)}, ${acc})`, init);
/** per t: a_t = sum over c of x_c * X[row_t + c] (vec4 partial sums), c outer so each x_c is reused over t */
function dotBlock(d: Dims, out: string, x: string, n4: number, rows: string[], arr: string): string {
  const lines = [rows.map((r, t) => `var ${out}${t} = ${x}0 * ${widen(d.dt, `${arr}[${r}]`, true)};`).join(' ')];
  for (let c = 1; c < n4; c++) lines.push(rows.map((r, t) => `${out}${t} = fma(${x}${c}, ${widen(d.dt, `${arr}[${r} + ${c}u]`, true)}, ${out}${t});`).join(' '));
  return lines.join('\n    ');
}

const forwardRegister = memoKernel(forwardRegisterSource);
function forwardRegisterSource(d: Dims, causal: boolean): string {
  const D4 = d.D / 4;
  const DV4 = d.Dv / 4;
  const T = range(KB_REG);
  const kr = T.map((t) => `kr${t}`);
  const vr = T.map((t) => `vr${t}`);
  const p = T.map((t) => `p${t}`);
  return /* wgsl */ `${enableF16(d.dt)}${HEADER}
${FEXP2}
@group(0) @binding(1) var<storage, read> Q: array<vec4<${ty(d)}>>;
@group(0) @binding(2) var<storage, read> K: array<vec4<${ty(d)}>>;
@group(0) @binding(3) var<storage, read> V: array<vec4<${ty(d)}>>;
@group(0) @binding(4) var<storage, read_write> O: array<vec4<${ty(d)}>>;
@group(0) @binding(5) var<storage, read_write> LSE: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let b = wid.y / u.H;
  let h = wid.y % u.H;
  let i = wid.x * ${WG}u + lid.x;
  let iq = min(i, u.Sq - 1u);
  let qb = (b * u.Sq + iq) * u.H * ${D4}u + h * ${D4}u;
  let ks = u.H * ${D4}u;
  let vs = u.H * ${DV4}u;
  let kb = b * u.Sk * ks + h * ${D4}u;
  let vb = b * u.Sk * vs + h * ${DV4}u;
  ${range(D4).map((c) => `let q${c} = ${widen(d.dt, `Q[qb + ${c}u]`, true)} * u.c;`).join(' ')}
  ${range(DV4).map((c) => `var o${c} = vec4<f32>(0.0);`).join(' ')}
  var m = ${NEG};
  var l = 0.0;
  let kend = ${causal ? 'min(u.Sk, iq + 1u)' : 'u.Sk'};
  for (var j0 = 0u; j0 < kend; j0 += ${KB_REG}u) {
    ${T.map((t) => `let kr${t} = kb + min(j0 + ${t}u, u.Sk - 1u) * ks;`).join(' ')}
    ${dotBlock(d, 'a', 'q', D4, kr, 'K')}
    ${T.map((t) => `let s${t} = select(${NEG}, ${hsum(`a${t}`)}, j0 + ${t}u < kend);`).join('\n    ')}
    let mx = max(m, ${tree(T.map((t) => `s${t}`), (x, y) => `max(${x}, ${y})`)});
    let alpha = fexp2(m - mx);
    ${T.map((t) => `let p${t} = fexp2(s${t} - mx);`).join(' ')}
    l = fma(l, alpha, ${tree(p, (x, y) => `(${x} + ${y})`)});
    ${T.map((t) => `let vr${t} = vb + min(j0 + ${t}u, u.Sk - 1u) * vs;`).join(' ')}
    ${range(DV4).map((c) => `o${c} = ${fmaChain(d, `o${c} * alpha`, p, vr, 'V', c)};`).join('\n    ')}
    m = mx;
  }
  if (i < u.Sq) {
    let inv = 1.0 / l;
    let ob = (b * u.Sq + i) * u.H * ${DV4}u + h * ${DV4}u;
    ${range(DV4).map((c) => `O[ob + ${c}u] = ${narrow(d.dt, `o${c} * inv`, true)};`).join(' ')}
    LSE[(b * u.H + h) * u.Sq + i] = (m + log2(l)) * ${1 / LOG2E};
  }
}`;
}
const forwardShared = memoKernel(forwardSharedSource);
function forwardSharedSource(d: Dims, causal: boolean): string {
  const BC = sharedTile(d.D, d.Dv);
  return /* wgsl */ `${enableF16(d.dt)}${HEADER}
@group(0) @binding(1) var<storage, read> Q: array<vec4<${ty(d)}>>;
@group(0) @binding(2) var<storage, read> K: array<vec4<${ty(d)}>>;
@group(0) @binding(3) var<storage, read> V: array<vec4<${ty(d)}>>;
@group(0) @binding(4) var<storage, read_write> O: array<vec4<${ty(d)}>>;
@group(0) @binding(5) var<storage, read_write> LSE: array<f32>;
${consts(d)}
const BC = ${BC}u;
var<workgroup> Ks: array<vec4<f32>, ${BC * (d.D / 4)}>;
var<workgroup> Vs: array<vec4<f32>, ${BC * (d.Dv / 4)}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let b = wid.y / u.H;
  let h = wid.y % u.H;
  let li = lid.x;
  let i = wid.x * ${WG}u + li;
  let iq = min(i, u.Sq - 1u);
  let qb = (b * u.Sq + iq) * u.H * D4 + h * D4;
  let ks = u.H * D4;
  let vs = u.H * DV4;
  let kb = b * u.Sk * ks + h * D4;
  let vb = b * u.Sk * vs + h * DV4;
  var q: array<vec4<f32>, D4>;
  for (var c = 0u; c < D4; c++) { q[c] = ${widen(d.dt, 'Q[qb + c]', true)} * u.c; }
  var o: array<vec4<f32>, DV4>;
  for (var c = 0u; c < DV4; c++) { o[c] = vec4<f32>(0.0); }
  var m = ${NEG};
  var l = 0.0;
  // workgroup-uniform key range (causal: up to the last query row of this workgroup)
  let kendWg = ${causal ? `min(u.Sk, min(wid.x * ${WG}u + ${WG}u, u.Sq))` : 'u.Sk'};
  let kend = ${causal ? 'min(u.Sk, iq + 1u)' : 'u.Sk'};
  for (var j0 = 0u; j0 < kendWg; j0 += BC) {
    // write-after-read: everyone must be done with the previous tile before it is overwritten
    workgroupBarrier();
    for (var e = li; e < BC * D4; e += ${WG}u) {
      let j = min(j0 + e / D4, u.Sk - 1u);
      Ks[e] = ${widen(d.dt, 'K[kb + j * ks + e % D4]', true)};
    }
    for (var e = li; e < BC * DV4; e += ${WG}u) {
      let j = min(j0 + e / DV4, u.Sk - 1u);
      Vs[e] = ${widen(d.dt, 'V[vb + j * vs + e % DV4]', true)};
    }
    workgroupBarrier();
    var s: array<f32, BC>;
    var mx = m;
    for (var jj = 0u; jj < BC; jj++) {
      var acc = 0.0;
      for (var c = 0u; c < D4; c++) { acc += dot(q[c], Ks[jj * D4 + c]); }
      s[jj] = select(${NEG}, acc, j0 + jj < kend);
      mx = max(mx, s[jj]);
    }
    let alpha = exp2(m - mx);
    l *= alpha;
    for (var c = 0u; c < DV4; c++) { o[c] *= alpha; }
    for (var jj = 0u; jj < BC; jj++) {
      let p = exp2(s[jj] - mx);
      l += p;
      for (var c = 0u; c < DV4; c++) { o[c] = fma(vec4<f32>(p), Vs[jj * DV4 + c], o[c]); }
    }
    m = mx;
  }
  if (i < u.Sq) {
    let inv = 1.0 / l;
    let ob = (b * u.Sq + i) * u.H * DV4 + h * DV4;
    for (var c = 0u; c < DV4; c++) { O[ob + c] = ${narrow(d.dt, 'o[c] * inv', true)}; }
    LSE[(b * u.H + h) * u.Sq + i] = (m + log2(l)) * ${1 / LOG2E};
  }
}`;
}

// ---------------------------------------------------------------------------------------------------------
// backward

/** LD[row] = (lse * log2e, rowsum(dO * O)) for each query row, rows ordered [B, H, Sq]. */
const prepKernel = memoKernel(prepKernelSource);
function prepKernelSource(d: Dims): string {
  return /* wgsl */ `${enableF16(d.dt)}${HEADER}
${LD_ROW}
@group(0) @binding(1) var<storage, read> O: array<vec4<${ty(d)}>>;
@group(0) @binding(2) var<storage, read> DO: array<vec4<${ty(d)}>>;
@group(0) @binding(3) var<storage, read> LSE: array<f32>;
@group(0) @binding(4) var<storage, read_write> LD: array<vec2<f32>>;
${consts(d)}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let b = wid.y / u.H;
  let h = wid.y % u.H;
  let i = wid.x * ${WG}u + lid.x;
  if (i >= u.Sq) { return; }
  let ob = (b * u.Sq + i) * u.H * DV4 + h * DV4;
  var acc = vec4<f32>(0.0);
  for (var c = 0u; c < DV4; c++) { acc = fma(${widen(d.dt, 'O[ob + c]', true)}, ${widen(d.dt, 'DO[ob + c]', true)}, acc); }
  let row = (b * u.H + h) * u.Sq + i;
  LD[row] = ld_row(LSE[row], acc);
}`;
}


const dqRegister = memoKernel(dqRegisterSource);
function dqRegisterSource(d: Dims, causal: boolean): string {
  const D4 = d.D / 4;
  const DV4 = d.Dv / 4;
  const T = range(KB_REG);
  const kr = T.map((t) => `kr${t}`);
  const vr = T.map((t) => `vr${t}`);
  return /* wgsl */ `${enableF16(d.dt)}${HEADER}
${FEXP2}
${bwdBindings(d, false, false)}
@group(0) @binding(6) var<storage, read_write> DQ: array<vec4<${ty(d)}>>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let b = wid.y / u.H;
  let h = wid.y % u.H;
  let i = wid.x * ${WG}u + lid.x;
  let iq = min(i, u.Sq - 1u);
  let qb = (b * u.Sq + iq) * u.H * ${D4}u + h * ${D4}u;
  let ob = (b * u.Sq + iq) * u.H * ${DV4}u + h * ${DV4}u;
  let ks = u.H * ${D4}u;
  let vs = u.H * ${DV4}u;
  let kb = b * u.Sk * ks + h * ${D4}u;
  let vb = b * u.Sk * vs + h * ${DV4}u;
  let ld = LD[(b * u.H + h) * u.Sq + iq];
  ${range(D4).map((c) => `let q${c} = ${widen(d.dt, `Q[qb + ${c}u]`, true)} * u.c;`).join(' ')}
  ${range(DV4).map((c) => `let g${c} = ${widen(d.dt, `DO[ob + ${c}u]`, true)};`).join(' ')}
  ${range(D4).map((c) => `var dq${c} = vec4<f32>(0.0);`).join(' ')}
  let kend = ${causal ? 'min(u.Sk, iq + 1u)' : 'u.Sk'};
  for (var j0 = 0u; j0 < kend; j0 += ${KB_REG}u) {
    ${T.map((t) => `let kr${t} = kb + min(j0 + ${t}u, u.Sk - 1u) * ks;`).join(' ')}
    ${T.map((t) => `let vr${t} = vb + min(j0 + ${t}u, u.Sk - 1u) * vs;`).join(' ')}
    ${dotBlock(d, 'a', 'q', D4, kr, 'K')}
    ${dotBlock(d, 'e', 'g', DV4, vr, 'V')}
    ${T.map((t) => `let ds${t} = select(0.0, fexp2(${hsum(`a${t}`)} - ld.x), j0 + ${t}u < kend) * (${hsum(`e${t}`)} - ld.y);`).join('\n    ')}
    ${range(D4).map((c) => `dq${c} = ${fmaChain(d, `dq${c}`, T.map((t) => `ds${t}`), kr, 'K', c)};`).join('\n    ')}
  }
  if (i < u.Sq) {
    ${range(D4).map((c) => `DQ[qb + ${c}u] = ${narrow(d.dt, `dq${c} * u.scale`, true)};`).join(' ')}
  }
}`;
}

const dkvRegister = memoKernel(dkvRegisterSource);
function dkvRegisterSource(d: Dims, causal: boolean): string {
  const D4 = d.D / 4;
  const DV4 = d.Dv / 4;
  const T = range(KB_REG);
  const qr = T.map((t) => `qr${t}`);
  const gr = T.map((t) => `gr${t}`);
  return /* wgsl */ `${enableF16(d.dt)}${HEADER}
${FEXP2}
${bwdBindings(d, false, false)}
@group(0) @binding(6) var<storage, read_write> DK: array<vec4<${ty(d)}>>;
@group(0) @binding(7) var<storage, read_write> DV: array<vec4<${ty(d)}>>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let b = wid.y / u.H;
  let h = wid.y % u.H;
  let j = wid.x * ${WG}u + lid.x;
  let jk = min(j, u.Sk - 1u);
  let kb = (b * u.Sk + jk) * u.H * ${D4}u + h * ${D4}u;
  let vb = (b * u.Sk + jk) * u.H * ${DV4}u + h * ${DV4}u;
  let qs = u.H * ${D4}u;
  let os = u.H * ${DV4}u;
  let qb = b * u.Sq * qs + h * ${D4}u;
  let ob = b * u.Sq * os + h * ${DV4}u;
  let lb = (b * u.H + h) * u.Sq;
  ${range(D4).map((c) => `let k${c} = ${widen(d.dt, `K[kb + ${c}u]`, true)} * u.c;`).join(' ')}
  ${range(DV4).map((c) => `let v${c} = ${widen(d.dt, `V[vb + ${c}u]`, true)};`).join(' ')}
  ${range(D4).map((c) => `var dk${c} = vec4<f32>(0.0);`).join(' ')}
  ${range(DV4).map((c) => `var dv${c} = vec4<f32>(0.0);`).join(' ')}
  // causal: queries before this workgroup's first key see none of its keys
  let istart = ${causal ? `min(wid.x * ${WG}u, u.Sq)` : '0u'};
  for (var i0 = istart; i0 < u.Sq; i0 += ${KB_REG}u) {
    ${T.map((t) => `let ir${t} = min(i0 + ${t}u, u.Sq - 1u);`).join(' ')}
    ${T.map((t) => `let qr${t} = qb + ir${t} * qs;`).join(' ')}
    ${T.map((t) => `let gr${t} = ob + ir${t} * os;`).join(' ')}
    ${T.map((t) => `let ld${t} = LD[lb + ir${t}];`).join(' ')}
    ${dotBlock(d, 'a', 'k', D4, qr, 'Q')}
    ${dotBlock(d, 'e', 'v', DV4, gr, 'DO')}
    ${T.map((t) => `let p${t} = select(0.0, fexp2(${hsum(`a${t}`)} - ld${t}.x), i0 + ${t}u < u.Sq${causal ? ` && jk <= i0 + ${t}u` : ''});`).join('\n    ')}
    ${T.map((t) => `let ds${t} = p${t} * (${hsum(`e${t}`)} - ld${t}.y);`).join('\n    ')}
    ${range(DV4).map((c) => `dv${c} = ${fmaChain(d, `dv${c}`, T.map((t) => `p${t}`), gr, 'DO', c)};`).join('\n    ')}
    ${range(D4).map((c) => `dk${c} = ${fmaChain(d, `dk${c}`, T.map((t) => `ds${t}`), qr, 'Q', c)};`).join('\n    ')}
  }
  if (j < u.Sk) {
    ${range(D4).map((c) => `DK[kb + ${c}u] = ${narrow(d.dt, `dk${c} * u.scale`, true)};`).join(' ')}
    ${range(DV4).map((c) => `DV[vb + ${c}u] = ${narrow(d.dt, `dv${c}`, true)};`).join(' ')}
  }
}`;
}
const dqShared = memoKernel(dqSharedSource);
function dqSharedSource(d: Dims, causal: boolean): string {
  const BC = sharedTile(d.D, d.Dv);
  return /* wgsl */ `${enableF16(d.dt)}${HEADER}
${bwdBindings(d, false, false)}
@group(0) @binding(6) var<storage, read_write> DQ: array<vec4<${ty(d)}>>;
${consts(d)}
const BC = ${BC}u;
var<workgroup> Ks: array<vec4<f32>, ${BC * (d.D / 4)}>;
var<workgroup> Vs: array<vec4<f32>, ${BC * (d.Dv / 4)}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let b = wid.y / u.H;
  let h = wid.y % u.H;
  let li = lid.x;
  let i = wid.x * ${WG}u + li;
  let iq = min(i, u.Sq - 1u);
  let qb = (b * u.Sq + iq) * u.H * D4 + h * D4;
  let ob = (b * u.Sq + iq) * u.H * DV4 + h * DV4;
  let ks = u.H * D4;
  let vs = u.H * DV4;
  let kb = b * u.Sk * ks + h * D4;
  let vb = b * u.Sk * vs + h * DV4;
  let ld = LD[(b * u.H + h) * u.Sq + iq];
  var q: array<vec4<f32>, D4>;
  var dq: array<vec4<f32>, D4>;
  for (var c = 0u; c < D4; c++) { q[c] = ${widen(d.dt, 'Q[qb + c]', true)} * u.c; dq[c] = vec4<f32>(0.0); }
  var g: array<vec4<f32>, DV4>;
  for (var c = 0u; c < DV4; c++) { g[c] = ${widen(d.dt, 'DO[ob + c]', true)}; }
  let kendWg = ${causal ? `min(u.Sk, min(wid.x * ${WG}u + ${WG}u, u.Sq))` : 'u.Sk'};
  let kend = ${causal ? 'min(u.Sk, iq + 1u)' : 'u.Sk'};
  for (var j0 = 0u; j0 < kendWg; j0 += BC) {
    workgroupBarrier();
    for (var e = li; e < BC * D4; e += ${WG}u) {
      let j = min(j0 + e / D4, u.Sk - 1u);
      Ks[e] = ${widen(d.dt, 'K[kb + j * ks + e % D4]', true)};
    }
    for (var e = li; e < BC * DV4; e += ${WG}u) {
      let j = min(j0 + e / DV4, u.Sk - 1u);
      Vs[e] = ${widen(d.dt, 'V[vb + j * vs + e % DV4]', true)};
    }
    workgroupBarrier();
    for (var jj = 0u; jj < BC; jj++) {
      var acc = 0.0;
      for (var c = 0u; c < D4; c++) { acc += dot(q[c], Ks[jj * D4 + c]); }
      var dp = 0.0;
      for (var c = 0u; c < DV4; c++) { dp += dot(g[c], Vs[jj * DV4 + c]); }
      let p = select(0.0, exp2(acc - ld.x), j0 + jj < kend);
      let ds = p * (dp - ld.y);
      for (var c = 0u; c < D4; c++) { dq[c] = fma(vec4<f32>(ds), Ks[jj * D4 + c], dq[c]); }
    }
  }
  if (i < u.Sq) {
    for (var c = 0u; c < D4; c++) { DQ[qb + c] = ${narrow(d.dt, 'dq[c] * u.scale', true)}; }
  }
}`;
}

const dkvShared = memoKernel(dkvSharedSource);
function dkvSharedSource(d: Dims, causal: boolean): string {
  const BR = sharedTile(d.D, d.Dv);
  return /* wgsl */ `${enableF16(d.dt)}${HEADER}
${bwdBindings(d, false, false)}
@group(0) @binding(6) var<storage, read_write> DK: array<vec4<${ty(d)}>>;
@group(0) @binding(7) var<storage, read_write> DV: array<vec4<${ty(d)}>>;
${consts(d)}
const BR = ${BR}u;
var<workgroup> Qs: array<vec4<f32>, ${BR * (d.D / 4)}>;
var<workgroup> Gs: array<vec4<f32>, ${BR * (d.Dv / 4)}>;
var<workgroup> Ls: array<vec2<f32>, ${BR}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let b = wid.y / u.H;
  let h = wid.y % u.H;
  let li = lid.x;
  let j = wid.x * ${WG}u + li;
  let jk = min(j, u.Sk - 1u);
  let kb = (b * u.Sk + jk) * u.H * D4 + h * D4;
  let vb = (b * u.Sk + jk) * u.H * DV4 + h * DV4;
  let qs = u.H * D4;
  let os = u.H * DV4;
  let qb = b * u.Sq * qs + h * D4;
  let ob = b * u.Sq * os + h * DV4;
  let lb = (b * u.H + h) * u.Sq;
  var k: array<vec4<f32>, D4>;
  var dk: array<vec4<f32>, D4>;
  for (var c = 0u; c < D4; c++) { k[c] = ${widen(d.dt, 'K[kb + c]', true)} * u.c; dk[c] = vec4<f32>(0.0); }
  var v: array<vec4<f32>, DV4>;
  var dv: array<vec4<f32>, DV4>;
  for (var c = 0u; c < DV4; c++) { v[c] = ${widen(d.dt, 'V[vb + c]', true)}; dv[c] = vec4<f32>(0.0); }
  let istart = ${causal ? `min(wid.x * ${WG}u, u.Sq)` : '0u'};
  for (var i0 = istart; i0 < u.Sq; i0 += BR) {
    workgroupBarrier();
    for (var e = li; e < BR * D4; e += ${WG}u) {
      let i = min(i0 + e / D4, u.Sq - 1u);
      Qs[e] = ${widen(d.dt, 'Q[qb + i * qs + e % D4]', true)};
    }
    for (var e = li; e < BR * DV4; e += ${WG}u) {
      let i = min(i0 + e / DV4, u.Sq - 1u);
      Gs[e] = ${widen(d.dt, 'DO[ob + i * os + e % DV4]', true)};
    }
    for (var e = li; e < BR; e += ${WG}u) { Ls[e] = LD[lb + min(i0 + e, u.Sq - 1u)]; }
    workgroupBarrier();
    for (var ii = 0u; ii < BR; ii++) {
      let ld = Ls[ii];
      var acc = 0.0;
      for (var c = 0u; c < D4; c++) { acc += dot(k[c], Qs[ii * D4 + c]); }
      var dp = 0.0;
      for (var c = 0u; c < DV4; c++) { dp += dot(v[c], Gs[ii * DV4 + c]); }
      let p = select(0.0, exp2(acc - ld.x), i0 + ii < u.Sq${causal ? ' && jk <= i0 + ii' : ''});
      let ds = p * (dp - ld.y);
      for (var c = 0u; c < D4; c++) { dk[c] = fma(vec4<f32>(ds), Qs[ii * D4 + c], dk[c]); }
      for (var c = 0u; c < DV4; c++) { dv[c] = fma(vec4<f32>(p), Gs[ii * DV4 + c], dv[c]); }
    }
  }
  if (j < u.Sk) {
    for (var c = 0u; c < D4; c++) { DK[kb + c] = ${narrow(d.dt, 'dk[c] * u.scale', true)}; }
    for (var c = 0u; c < DV4; c++) { DV[vb + c] = ${narrow(d.dt, 'dv[c]', true)}; }
  }
}`;
}

// ---------------------------------------------------------------------------------------------------------
// subgroup variant (CPU adapters with a fixed subgroup size, e.g. lavapipe's 8 lanes)
//
// Measured on llvmpipe (AVX2, 8 lanes): a storage-buffer load costs about the same whether the lanes read one
// address or eight different ones (a per-lane loop with a bounds check per component, ~35 ns per vec4), while
// subgroupBroadcast from a constant lane is a register shuffle. So lane L loads row j0 + L of the current block
// (a key, or a query in dK/dV) and the rows are handed to every lane in turn: each element is loaded once per
// subgroup and used by SG * R rows. A workgroup is one subgroup; lane L owns rows base + L + SG * r for r < R.
// Private arrays with dynamic indices are as slow as memory there, so everything is unrolled into named vec4
// registers, and so is the walk over the SG rows of a block: subgroupShuffle with a lane index that varies
// (a loop counter) costs a per-lane loop on llvmpipe; unrolled into constant-lane broadcasts the kernels run
// 1.2-1.5x faster than the looped ones did (the same kernel with a dynamic shuffle index measured 9.5 GFLOP/s,
// with constant broadcasts 16.6). The price is compile time: 10-40 s per shader for SD's head dims, cached by
// Mesa afterwards.

const SG = 8;
/** rows per lane, per kernel; tuned on lavapipe */
const ROWS = { fwd: 8, dq: 4, dkv: 2 };
/** slack of the lazily rescaled running max, in log2 units */
const LAZY = 8;
/**
 * bound on rows per lane * (D + Dv): registers per lane, the unrolled shader's size and its compile time (8
 * forward rows at head dim 64 measured 1.18x alone but nothing inside the SD 2.1 UNet, for 3x the compile time)
 */
const DEFAULT_BUDGET = 640;
let ROW_BUDGET = DEFAULT_BUDGET;

function subgroupsUsable(): boolean {
  const g = rt().gpu;
  return rt().features.has('subgroups') && g.subgroupMinSize === SG && g.subgroupMaxSize === SG;
}

/**
 * Rows per lane for `n` rows: fewer when there are few rows, so short sequences do not waste lanes, and fewer
 * for large head dims, which bounds the registers per lane and the (unrolled) shader size and compile time.
 */
function rowsPerLane(n: number, max: number, d: Dims): number {
  let r = max;
  while (r > 1 && r * (d.D + d.Dv) > ROW_BUDGET) r /= 2;
  while (r > 1 && n <= (SG * r) / 2) r /= 2;
  return r;
}

/** dot product of two lists of vec4 names: a vec4 fma chain, summed horizontally at the end */
const dotv = (a: string[], b: string[]) => `hsum4(${a.reduce((acc, x, i) => (i ? `fma(${x}, ${b[i]}, ${acc})` : `${x} * ${b[i]}`), '')})`;

/**
 * Binding `n` of a tensor whose rows lanes load in turn: a storage buffer named `name`, or (`tex`) a
 * read-only storage texture `${name}T` holding the same values (rgba16float for f16 rows; see "Rows from
 * textures" below). Both are read as vec4<f32> (`rowElem`).
 */
function rowSource(d: Dims, n: number, name: string, tex: boolean): string {
  return tex
    ? `@group(0) @binding(${n}) var ${name}T: texture_storage_2d_array<${stagingFormat(d.dt)}, read>;`
    : `@group(0) @binding(${n}) var<storage, read> ${name}: array<vec4<${ty(d)}>>;`;
}
/** WGSL: vec4 c of row `row` of head h in batch item b (n4 vec4s a head), from the buffer (at buffer offset `at`) or the texture */
function rowElem(d: Dims, name: string, tex: boolean, at: string, row: string, n4: number, c: number): string {
  return tex ? `textureLoad(${name}T, vec2<u32>(h * ${n4}u + ${c}u, ${row}), b)` : widen(d.dt, `${name}[${at} + ${c}u]`, true);
}
/** `let ${out}c = ...` for the n4 vec4s of that row */
function rowLoads(d: Dims, out: string, name: string, tex: boolean, at: string, row: string, n4: number): string {
  return `let ${out}r = ${at};\n    ` + range(n4).map((c) => `let ${out}${c} = ${rowElem(d, name, tex, `${out}r`, row, n4, c)};`).join(' ');
}
/** the backward kernels' inputs, with Q and dO (`texQG`) or K and V (`texKV`) as textures */
function bwdBindings(d: Dims, texQG: boolean, texKV: boolean, writeLD = false): string {
  return `${rowSource(d, 1, 'Q', texQG)}
${rowSource(d, 2, 'K', texKV)}
${rowSource(d, 3, 'V', texKV)}
${rowSource(d, 4, 'DO', texQG)}
@group(0) @binding(5) var<storage, ${writeLD ? 'read_write' : 'read'}> LD: array<vec2<f32>>;`;
}

const forwardSubgroup = memoKernel(forwardSubgroupSource);
function forwardSubgroupSource(d: Dims, causal: boolean, R: number, tex: boolean, texQ = false): string {
  const D4 = d.D / 4;
  const DV4 = d.Dv / 4;
  const Rs = range(R);
  const U = range(SG);
  const C = range(D4);
  const CV = range(DV4);
  const body: string[] = [];
  for (const t of U) {
    body.push(C.map((c) => `let k${t}_${c} = subgroupBroadcast(kl${c}, ${t}u);`).join(' '));
    for (const r of Rs)
      body.push(`let s${r}_${t} = select(${NEG}, ${dotv(C.map((c) => `q${r}_${c}`), C.map((c) => `k${t}_${c}`))}, j0 + ${t}u < kend${r});`);
  }
  // lazy rescaling: the running max of a row moves only when a score exceeds it by more than LAZY (log2
  // units), so p <= 2^LAZY and the rescale of o and l (and its exponentials) is skipped on most groups
  const over = Rs.map((r) => `${tree(U.map((t) => `s${r}_${t}`), (x, y) => `max(${x}, ${y})`)} > m${r} + ${LAZY}.0`);
  body.push(`if (subgroupAny(${over.join(' || ')})) {`);
  for (const r of Rs) {
    body.push(`  let mx${r} = max(m${r}, ${tree(U.map((t) => `s${r}_${t}`), (x, y) => `max(${x}, ${y})`)});`);
    body.push(`  let al${r} = fexp2(m${r} - mx${r});`);
    body.push(`  l${r} *= al${r}; m${r} = mx${r};`);
    body.push('  ' + CV.map((c) => `o${r}_${c} *= al${r};`).join(' '));
  }
  body.push('}');
  for (const r of Rs) {
    body.push(U.map((t) => `let p${r}_${t} = fexp2(s${r}_${t} - m${r});`).join(' '));
    body.push(`l${r} += ${tree(U.map((t) => `p${r}_${t}`), (x, y) => `(${x} + ${y})`)};`);
  }
  for (const t of U) body.push(CV.map((c) => `let v${t}_${c} = subgroupBroadcast(vl${c}, ${t}u);`).join(' '));
  for (const r of Rs)
    for (const c of CV) body.push(`o${r}_${c} = ${U.reduce((acc, t) => `fma(vec4<f32>(p${r}_${t}), v${t}_${c}, ${acc})`, `o${r}_${c}`)};`);
  return /* wgsl */ `${enableF16(d.dt)}enable subgroups;
${HEADER}
${FEXP2}
${rowSource(d, 1, 'Q', texQ)}
${rowSource(d, 2, 'K', tex)}
${rowSource(d, 3, 'V', tex)}
@group(0) @binding(4) var<storage, read_write> O: array<vec4<${ty(d)}>>;
@group(0) @binding(5) var<storage, read_write> LSE: array<f32>;
@compute @workgroup_size(${SG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
  let b = wid.y / u.H;
  let h = wid.y % u.H;
  let row0 = wid.x * ${SG * R}u;
  let ks = u.H * ${D4}u;
  let vs = u.H * ${DV4}u;
  let kb = b * u.Sk * ks + h * ${D4}u;
  let vb = b * u.Sk * vs + h * ${DV4}u;
  ${Rs.map(
    (r) => `let i${r} = row0 + ${r * SG}u + lane;
  let ic${r} = min(i${r}, u.Sq - 1u);
  let qb${r} = (b * u.Sq + ic${r}) * ks + h * ${D4}u;
  ${C.map((c) => `let q${r}_${c} = ${rowElem(d, 'Q', texQ, `qb${r}`, `ic${r}`, D4, c)} * u.c;`).join(' ')}
  ${CV.map((c) => `var o${r}_${c} = vec4<f32>(0.0);`).join(' ')}
  var m${r} = ${NEG};
  var l${r} = 0.0;
  let kend${r} = ${causal ? `min(u.Sk, min(i${r}, u.Sq - 1u) + 1u)` : 'u.Sk'};`,
  ).join('\n  ')}
  // subgroup-uniform key range
  let kend = ${causal ? `min(u.Sk, min(row0 + ${SG * R}u, u.Sq))` : 'u.Sk'};
  for (var j0 = 0u; j0 < kend; j0 += ${SG}u) {
    // lane L loads key j0 + L; the keys are then handed to every lane in turn
    let jl = min(j0 + lane, u.Sk - 1u);
    ${rowLoads(d, 'kl', 'K', tex, 'kb + jl * ks', 'jl', D4)}
    ${rowLoads(d, 'vl', 'V', tex, 'vb + jl * vs', 'jl', DV4)}
    {
      ${body.join('\n      ')}
    }
  }
  ${Rs.map(
    (r) => `if (i${r} < u.Sq) {
    let inv = 1.0 / l${r};
    let ob = (b * u.Sq + i${r}) * vs + h * ${DV4}u;
    ${CV.map((c) => `O[ob + ${c}u] = ${narrow(d.dt, `o${r}_${c} * inv`, true)};`).join(' ')}
    LSE[(b * u.H + h) * u.Sq + i${r}] = (m${r} + log2(l${r})) * ${1 / LOG2E};
  }`,
  ).join('\n  ')}
}`;
}

const dqSubgroup = memoKernel(dqSubgroupSource);
function dqSubgroupSource(d: Dims, causal: boolean, R: number, tex: boolean, texQG = false, prep = false): string {
  const D4 = d.D / 4;
  const DV4 = d.Dv / 4;
  const Rs = range(R);
  const U = range(SG);
  const C = range(D4);
  const CV = range(DV4);
  const body: string[] = [];
  for (const t of U) {
    body.push(C.map((c) => `let k${t}_${c} = subgroupBroadcast(kl${c}, ${t}u);`).join(' '));
    body.push(CV.map((c) => `let v${t}_${c} = subgroupBroadcast(vl${c}, ${t}u);`).join(' '));
    for (const r of Rs) {
      body.push(`let a${r}_${t} = ${dotv(C.map((c) => `q${r}_${c}`), C.map((c) => `k${t}_${c}`))};`);
      body.push(`let e${r}_${t} = ${dotv(CV.map((c) => `g${r}_${c}`), CV.map((c) => `v${t}_${c}`))};`);
      body.push(`let ds${r}_${t} = select(0.0, fexp2(a${r}_${t} - ld${r}.x), j0 + ${t}u < kend${r}) * (e${r}_${t} - ld${r}.y);`);
    }
  }
  for (const r of Rs)
    for (const c of C) body.push(`dq${r}_${c} = ${U.reduce((acc, t) => `fma(vec4<f32>(ds${r}_${t}), k${t}_${c}, ${acc})`, `dq${r}_${c}`)};`);
  return /* wgsl */ `${enableF16(d.dt)}enable subgroups;
${HEADER}
${FEXP2}${prep ? LD_ROW : ''}
${bwdBindings(d, texQG, tex, prep)}
@group(0) @binding(6) var<storage, read_write> DQ: array<vec4<${ty(d)}>>;
${prep ? `@group(0) @binding(7) var<storage, read> O: array<vec4<${ty(d)}>>;
@group(0) @binding(8) var<storage, read> LSE: array<f32>;` : ''}
@compute @workgroup_size(${SG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
  let b = wid.y / u.H;
  let h = wid.y % u.H;
  let row0 = wid.x * ${SG * R}u;
  let ks = u.H * ${D4}u;
  let vs = u.H * ${DV4}u;
  let kb = b * u.Sk * ks + h * ${D4}u;
  let vb = b * u.Sk * vs + h * ${DV4}u;
  ${Rs.map(
    (r) => `let i${r} = row0 + ${r * SG}u + lane;
  let ic${r} = min(i${r}, u.Sq - 1u);
  let qb${r} = (b * u.Sq + ic${r}) * ks + h * ${D4}u;
  let gb${r} = (b * u.Sq + ic${r}) * vs + h * ${DV4}u;
  ${C.map((c) => `let q${r}_${c} = ${rowElem(d, 'Q', texQG, `qb${r}`, `ic${r}`, D4, c)} * u.c;`).join(' ')}
  ${CV.map((c) => `let g${r}_${c} = ${rowElem(d, 'DO', texQG, `gb${r}`, `ic${r}`, DV4, c)};`).join(' ')}
  ${
    prep
      ? // the backward's per-row (lse * log2e, rowsum(dO * O)) here, as the prep kernel computes it, stored for dK/dV
        `let dd${r} = ${CV.reduce((acc, c) => `fma(${widen(d.dt, `O[gb${r} + ${c}u]`, true)}, g${r}_${c}, ${acc})`, 'vec4<f32>(0.0)')};
  let ld${r} = ld_row(LSE[(b * u.H + h) * u.Sq + ic${r}], dd${r});
  if (i${r} < u.Sq) { LD[(b * u.H + h) * u.Sq + i${r}] = ld${r}; }`
      : `let ld${r} = LD[(b * u.H + h) * u.Sq + ic${r}];`
  }
  ${C.map((c) => `var dq${r}_${c} = vec4<f32>(0.0);`).join(' ')}
  let kend${r} = ${causal ? `min(u.Sk, ic${r} + 1u)` : 'u.Sk'};`,
  ).join('\n  ')}
  let kend = ${causal ? `min(u.Sk, min(row0 + ${SG * R}u, u.Sq))` : 'u.Sk'};
  for (var j0 = 0u; j0 < kend; j0 += ${SG}u) {
    let jl = min(j0 + lane, u.Sk - 1u);
    ${rowLoads(d, 'kl', 'K', tex, 'kb + jl * ks', 'jl', D4)}
    ${rowLoads(d, 'vl', 'V', tex, 'vb + jl * vs', 'jl', DV4)}
    {
      ${body.join('\n      ')}
    }
  }
  ${Rs.map((r) => `if (i${r} < u.Sq) { ${C.map((c) => `DQ[qb${r} + ${c}u] = ${narrow(d.dt, `dq${r}_${c} * u.scale`, true)};`).join(' ')} }`).join('\n  ')}
}`;
}

const dkvSubgroup = memoKernel(dkvSubgroupSource);
function dkvSubgroupSource(d: Dims, causal: boolean, R: number, tex: boolean): string {
  const D4 = d.D / 4;
  const DV4 = d.Dv / 4;
  const Rs = range(R);
  const U = range(SG);
  const C = range(D4);
  const CV = range(DV4);
  const body: string[] = [];
  for (const t of U) {
    body.push(`let ld${t} = subgroupBroadcast(ldl, ${t}u);`);
    body.push(C.map((c) => `let q${t}_${c} = subgroupBroadcast(ql${c}, ${t}u);`).join(' '));
    body.push(CV.map((c) => `let g${t}_${c} = subgroupBroadcast(gl${c}, ${t}u);`).join(' '));
    for (const r of Rs) {
      body.push(`let a${r}_${t} = ${dotv(C.map((c) => `k${r}_${c}`), C.map((c) => `q${t}_${c}`))};`);
      body.push(`let e${r}_${t} = ${dotv(CV.map((c) => `v${r}_${c}`), CV.map((c) => `g${t}_${c}`))};`);
      const ok = `i0 + ${t}u < u.Sq${causal ? ` && jc${r} <= i0 + ${t}u` : ''}`;
      body.push(`let p${r}_${t} = select(0.0, fexp2(a${r}_${t} - ld${t}.x), ${ok});`);
      body.push(`let ds${r}_${t} = p${r}_${t} * (e${r}_${t} - ld${t}.y);`);
    }
  }
  for (const r of Rs) {
    for (const c of CV) body.push(`dv${r}_${c} = ${U.reduce((acc, t) => `fma(vec4<f32>(p${r}_${t}), g${t}_${c}, ${acc})`, `dv${r}_${c}`)};`);
    for (const c of C) body.push(`dk${r}_${c} = ${U.reduce((acc, t) => `fma(vec4<f32>(ds${r}_${t}), q${t}_${c}, ${acc})`, `dk${r}_${c}`)};`);
  }
  return /* wgsl */ `${enableF16(d.dt)}enable subgroups;
${HEADER}
${FEXP2}
${bwdBindings(d, tex, false)}
@group(0) @binding(6) var<storage, read_write> DK: array<vec4<${ty(d)}>>;
@group(0) @binding(7) var<storage, read_write> DV: array<vec4<${ty(d)}>>;
@compute @workgroup_size(${SG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
  let b = wid.y / u.H;
  let h = wid.y % u.H;
  let key0 = wid.x * ${SG * R}u;
  let qs = u.H * ${D4}u;
  let os = u.H * ${DV4}u;
  let qb = b * u.Sq * qs + h * ${D4}u;
  let ob = b * u.Sq * os + h * ${DV4}u;
  let lb = (b * u.H + h) * u.Sq;
  ${Rs.map(
    (r) => `let j${r} = key0 + ${r * SG}u + lane;
  let jc${r} = min(j${r}, u.Sk - 1u);
  let kb${r} = (b * u.Sk + jc${r}) * qs + h * ${D4}u;
  let vb${r} = (b * u.Sk + jc${r}) * os + h * ${DV4}u;
  ${C.map((c) => `let k${r}_${c} = ${widen(d.dt, `K[kb${r} + ${c}u]`, true)} * u.c;`).join(' ')}
  ${CV.map((c) => `let v${r}_${c} = ${widen(d.dt, `V[vb${r} + ${c}u]`, true)};`).join(' ')}
  ${C.map((c) => `var dk${r}_${c} = vec4<f32>(0.0);`).join(' ')}
  ${CV.map((c) => `var dv${r}_${c} = vec4<f32>(0.0);`).join(' ')}`,
  ).join('\n  ')}
  // causal: queries before this subgroup's first key see none of its keys
  let istart = ${causal ? 'min(key0, u.Sq)' : '0u'};
  for (var i0 = istart; i0 < u.Sq; i0 += ${SG}u) {
    // lane L loads query i0 + L (row, output gradient, lse and D); then handed to every lane in turn
    let il = min(i0 + lane, u.Sq - 1u);
    let ldl = LD[lb + il];
    ${rowLoads(d, 'ql', 'Q', tex, 'qb + il * qs', 'il', D4)}
    ${rowLoads(d, 'gl', 'DO', tex, 'ob + il * os', 'il', DV4)}
    {
      ${body.join('\n      ')}
    }
  }
  ${Rs.map(
    (r) => `if (j${r} < u.Sk) {
    ${C.map((c) => `DK[kb${r} + ${c}u] = ${narrow(d.dt, `dk${r}_${c} * u.scale`, true)};`).join(' ')}
    ${CV.map((c) => `DV[vb${r} + ${c}u] = ${narrow(d.dt, `dv${r}_${c}`, true)};`).join(' ')}
  }`,
  ).join('\n  ')}
}`;
}

// ---------------------------------------------------------------------------------------------------------
// launch

function dimsOf(q: Tensor, k: Tensor, v: Tensor, heads: number): Dims {
  const what = `attention: q [${q.shape}], k [${k.shape}], v [${v.shape}], heads ${heads}`;
  if (q.rank !== 3 || k.rank !== 3 || v.rank !== 3) throw new ShapeError(`${what}: expected rank-3 tensors [B, S, H*D]`);
  // f32 or f16 (with shader-f16), one dtype for all three
  const dt = sameFloatDtype('attention', [q, k, v], ['q', 'k', 'v']);
  const [B, Sq, HD] = q.shape;
  const [Bk, Sk, HDk] = k.shape;
  const [Bv, Sv, HDv] = v.shape;
  if (!Number.isInteger(heads) || heads < 1) throw new ShapeError(`${what}: heads must be a positive integer`);
  if (Bk !== B || Bv !== B) throw new ShapeError(`${what}: batch sizes differ`);
  if (Sv !== Sk) throw new ShapeError(`${what}: k and v sequence lengths differ`);
  if (HDk !== HD) throw new ShapeError(`${what}: q and k channel counts differ`);
  if (HD % heads || HDv % heads) throw new ShapeError(`${what}: channels are not divisible by heads`);
  const D = HD / heads;
  const Dv = HDv / heads;
  if (D % 4 || Dv % 4) throw new ShapeError(`${what}: head dims must be multiples of 4 (got D=${D}, Dv=${Dv})`);
  if (Sk === 0 && Sq > 0) throw new ShapeError(`${what}: no keys`);
  if (B * heads > rt().maxWorkgroups) throw new ShapeError(`${what}: batch * heads exceeds ${rt().maxWorkgroups}`);
  for (const t of [q, k, v])
    if (t.byteLength > rt().maxBindingBytes) throw new ShapeError(`${what}: an operand of ${t.byteLength} bytes exceeds the storage binding limit; split the batch`);
  if (B * Sq * HDv * (dt === 'f16' ? 2 : 4) > rt().maxBindingBytes) throw new ShapeError(`${what}: the output exceeds the storage binding limit; split the batch`);
  return { B, H: heads, Sq, Sk, D, Dv, dt };
}

function uniforms(d: Dims, scale: number) {
  return new Uniforms().u32(d.B, d.H, d.Sq, d.Sk).f32(scale * LOG2E, scale).u32(0, 0).done();
}

const DEFAULT_ROWS = { ...ROWS };
/** Tune the subgroup kernels (benchmarks): rows per lane; null restores the defaults. */
export function setAttentionTuning(t: { rows?: Partial<typeof ROWS>; budget?: number } | null) {
  Object.assign(ROWS, t?.rows ?? DEFAULT_ROWS);
  ROW_BUDGET = t?.budget ?? DEFAULT_BUDGET;
  clearKernelMemos();
}

// ---------------------------------------------------------------------------------------------------------
// Rows from textures (subgroup variant)
//
// In the subgroup kernels every lane loads one row of the current block (a key and a value, or a query and
// its output gradient) at an address that differs per lane. On llvmpipe such a storage-buffer load is a loop
// over the 8 lanes with a bounds-check branch per component, about half of the forward kernel's time at head
// dim 40 (measured by replacing the loads with arithmetic: 2x). A read-only storage texture is fetched by a
// branchless gather instead, so those rows are first copied (once per call, a pass over K and V or Q and dO)
// into rgba32float textures [H * D/4, S, B] (rgba16float for f16 tensors: the same values, read back as
// vec4<f32> by textureLoad) and read from there: 1.3-1.4x faster kernels on lavapipe
// (paired runs; bench/README.md). Needs WGSL's read-only storage textures and S, H * D/4 <= the 2D texture
// limit and B <= the array-layer limit; otherwise the kernels read the buffers.
//
// The copy is the queue's (copyBufferToTexture, a memcpy on llvmpipe) where a row of H * D values is a
// multiple of 256 bytes (H * D a multiple of 64 in f32, as in Stable Diffusion; of 128 in f16, which leaves
// SD's first UNet level, H * D = 320, to the copy kernel), else a copy kernel (a buffer load and a texture
// store per texel: 2-10% of the attention time before the queue copy took over). Where the queue
// copies them, the rows a lane owns (its queries in the forward; queries and output gradients in dQ, whose
// textures dK/dV needs anyway) are read from textures too: 1.1-1.2x on cross-attention (77 keys, where those
// rows are a fifth of the work), within the noise on self-attention.

let textureRows = true;
/** Read the subgroup kernels' per-lane rows from textures where possible (default) or always from buffers. */
export function setAttentionTextureLoads(on: boolean) {
  textureRows = on;
}

/** whether the kernels of this call read rows from textures */
function rowsFromTextures(d: Dims): boolean {
  if (!textureRows || attentionVariant() !== 'subgroup') return false;
  const g = rt().gpu;
  const lim = g.limits as GPUSupportedLimits & Record<string, number>;
  return (
    !g.compat && // compatibility mode restricts storage textures
    g.wgslFeatures.has('readonly_and_readwrite_storage_textures') &&
    (lim.maxStorageTexturesPerShaderStage ?? 0) >= 4 && // dQ reading its own rows too binds Q, K, V and dO
    d.H * Math.max(d.D, d.Dv) / 4 <= lim.maxTextureDimension2D &&
    Math.max(d.Sq, d.Sk) <= lim.maxTextureDimension2D &&
    d.B <= lim.maxTextureArrayLayers
  );
}

/** WGSL: the copy of rows of dtype `dt` into a staging texture (where the queue cannot copy them) */
const textureCopyKernel = memoKernel(
  (dt: FloatDType) => /* wgsl */ `${enableF16(dt)}
struct P { W: u32, S: u32, _0: u32, _1: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<vec4<${storageType(dt)}>>;
@group(0) @binding(2) var T: texture_storage_2d_array<${stagingFormat(dt)}, write>;
@compute @workgroup_size(32)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  if (g.x >= u.W) { return; }
  textureStore(T, vec2<u32>(g.x, g.y), g.z, ${widen(dt, 'X[(g.z * u.S + g.y) * u.W + g.x]', true)});
}`,
);

/** The staging textures' cap (bytes), shared with the other kernels' staging textures (`setStagingTextureCacheBytes`). */
export function setAttentionTextureCacheBytes(bytes: number) {
  setStagingTextureCacheBytes(bytes);
}

/** bytes of one vec4 of dtype `dt` (one texel of its staging texture) */
const vec4Bytes = (dt: FloatDType) => texelBytes(stagingFormat(dt));
/**
 * whether rows of W vec4s of dtype `dt` are copied by the queue (a buffer-to-texture copy needs rows of a
 * multiple of 256 bytes: W * 16 in f32, W * 8 in f16)
 */
const queueCopies = (W: number, dt: FloatDType) => (W * vec4Bytes(dt)) % 256 === 0;

/**
 * The values of t [B, S, W*4] copied into a staging texture [W, S, B] for role `role` (a view of it;
 * rgba32float for f32 tensors, rgba16float for f16): a buffer-to-texture copy where a row's W*16 bytes (f16:
 * W*8) are a multiple of 256 (H * D a multiple of 64, as in Stable Diffusion; f16: of 128), else a copy kernel.
 */
function rowTexture(t: Tensor, B: number, S: number, W: number, role: string): GPUTextureView {
  const r = rt();
  const dt = t.dtype as FloatDType;
  const tex = stagingTexture(`attention_${role}`, [W, S, B], stagingFormat(dt));
  const view = tex.createView({ dimension: '2d-array' });
  if (queueCopies(W, dt)) r.copyToTexture(t.buffer, 0, W * vec4Bytes(dt), S, tex, [W, S, B]);
  else
    r.dispatch({
      name: 'attention_rows_to_texture',
      code: textureCopyKernel(dt),
      uniforms: new Uniforms().u32(W, S, 0, 0).done(),
      bindings: [{ buffer: t.buffer }, { texture: view }],
      workgroups: [Math.ceil(W / 32), S, B],
    });
  return view;
}

/** WGSL and workgroup grid of one kernel for the current variant; `n` is the number of rows it owns */
function plan(kind: 'fwd' | 'dq' | 'dkv', d: Dims, causal: boolean, n: number, tex = false, texQ = false, prep = false): { name: string; code: string; workgroups: [number, number] } {
  const variant = attentionVariant();
  const name = `attention_${kind}_${variant}${tex ? (texQ ? '_texq' : '_tex') : ''}${prep ? '_prep' : ''}`;
  if (variant === 'subgroup') {
    const R = rowsPerLane(n, ROWS[kind], d);
    const code = kind === 'fwd' ? forwardSubgroup(d, causal, R, tex, texQ) : kind === 'dq' ? dqSubgroup(d, causal, R, tex, texQ, prep) : dkvSubgroup(d, causal, R, tex);
    return { name, code, workgroups: [Math.ceil(n / (SG * R)), d.B * d.H] };
  }
  const gen =
    variant === 'register'
      ? { fwd: forwardRegister, dq: dqRegister, dkv: dkvRegister }[kind]
      : { fwd: forwardShared, dq: dqShared, dkv: dkvShared }[kind];
  return { name, code: gen(d, causal), workgroups: [Math.ceil(n / WG), d.B * d.H] };
}

/**
 * Forward only: returns the output [B, Sq, H*Dv] in the dtype of q, k, v (f32 or f16) and the row logsumexp
 * [B, H, Sq] (natural log, f32).
 */
export function attentionForward(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): { out: Tensor; lse: Tensor } {
  const d = dimsOf(q, k, v, opts.heads);
  const scale = opts.scale ?? 1 / Math.sqrt(d.D);
  const out = Tensor.empty([d.B, d.Sq, d.H * d.Dv], d.dt, 'attention');
  const lse = Tensor.empty([d.B, d.H, d.Sq], 'f32', 'attention_lse');
  if (d.B * d.Sq * d.H === 0) return { out, lse };
  const tex = rowsFromTextures(d);
  const kv: Binding[] = tex
    ? [{ texture: rowTexture(k, d.B, d.Sk, (d.H * d.D) / 4, 'k') }, { texture: rowTexture(v, d.B, d.Sk, (d.H * d.Dv) / 4, 'v') }]
    : [{ buffer: k.buffer }, { buffer: v.buffer }];
  // each lane reads its own query rows once: from a texture only where the queue copies them (no copy kernel)
  const texQ = tex && queueCopies((d.H * d.D) / 4, d.dt);
  rt().dispatch({
    ...plan('fwd', d, !!opts.causal, d.Sq, tex, texQ),
    uniforms: uniforms(d, scale),
    bindings: [texQ ? { texture: rowTexture(q, d.B, d.Sq, (d.H * d.D) / 4, 'q') } : { buffer: q.buffer }, ...kv, { buffer: out.buffer }, { buffer: lse.buffer }],
  });
  return { out, lse };
}

/**
 * Gradients of attention from the forward's output and row logsumexp; `want` selects which of dQ, dK, dV
 * to compute (null for the others). The output gradient has the output's dtype (that of q, k, v); the
 * gradients come back in that dtype.
 */
export function attentionBackward(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  out: Tensor,
  lse: Tensor,
  dOut: Tensor,
  opts: AttentionOptions,
  want: [boolean, boolean, boolean] = [true, true, true],
): [Tensor | null, Tensor | null, Tensor | null] {
  const d = dimsOf(q, k, v, opts.heads);
  if (dOut.size !== out.size) throw new ShapeError(`attention backward: gradient [${dOut.shape}] does not match the output [${out.shape}]`);
  sameFloatDtype('attention backward', [q, out, dOut], ['q', 'the output', 'the output gradient']);
  const scale = opts.scale ?? 1 / Math.sqrt(d.D);
  const causal = !!opts.causal;
  const r = rt();
  const uni = uniforms(d, scale);
  const dq = want[0] ? Tensor.empty(q.shape, d.dt, 'attention_dq') : null;
  const dk = want[1] || want[2] ? Tensor.empty(k.shape, d.dt, 'attention_dk') : null;
  const dv = want[1] || want[2] ? Tensor.empty(v.shape, d.dt, 'attention_dv') : null;
  if (d.B * d.Sq * d.H === 0) {
    // no queries: dK and dV are zero
    for (const t of [dk, dv]) if (t && t.size) r.write(t.buffer, new Uint8Array(Math.ceil(t.byteLength / 4) * 4));
  } else if (dq || dk) {
    const ld = Tensor.empty([d.B, d.H, d.Sq, 2], 'f32', 'attention_ld');
    // the subgroup dQ kernel computes the per-row (lse, D) itself (its lanes hold dO's rows already) and
    // stores them for dK/dV; otherwise a small pass does
    const prep = !!dq && attentionVariant() === 'subgroup';
    if (!prep)
      r.dispatch({
        name: 'attention_prep',
        code: prepKernel(d),
        uniforms: uni,
        bindings: [{ buffer: out.buffer }, { buffer: dOut.buffer }, { buffer: lse.buffer }, { buffer: ld.buffer }],
        workgroups: [Math.ceil(d.Sq / WG), d.B * d.H],
      });
    const tex = rowsFromTextures(d);
    const [bq, bk, bv, bg, bl]: Binding[] = [q, k, v, dOut, ld].map((t) => ({ buffer: t.buffer }));
    // Q and dO as textures: for dK/dV (lanes load them in turn) and then also for dQ's own rows, or for dQ alone
    // where the queue copies them
    const texQG = tex && (!!dk || (queueCopies((d.H * d.D) / 4, d.dt) && queueCopies((d.H * d.Dv) / 4, d.dt)));
    const [tq, tg]: Binding[] = texQG ? [{ texture: rowTexture(q, d.B, d.Sq, (d.H * d.D) / 4, 'q') }, { texture: rowTexture(dOut, d.B, d.Sq, (d.H * d.Dv) / 4, 'dout') }] : [bq, bg];
    if (dq) {
      // dQ: lanes load keys and values in turn
      const kv = tex ? [{ texture: rowTexture(k, d.B, d.Sk, (d.H * d.D) / 4, 'k') }, { texture: rowTexture(v, d.B, d.Sk, (d.H * d.Dv) / 4, 'v') }] : [bk, bv];
      const prepIn: Binding[] = prep ? [{ buffer: out.buffer }, { buffer: lse.buffer }] : [];
      r.dispatch({ ...plan('dq', d, causal, d.Sq, tex, texQG, prep), uniforms: uni, bindings: [tq, ...kv, tg, bl, { buffer: dq.buffer }, ...prepIn] });
    }
    if (dk && dv) {
      // dK, dV: lanes load queries and output gradients in turn
      r.dispatch({ ...plan('dkv', d, causal, d.Sk, tex), uniforms: uni, bindings: [tq, bk, bv, tg, bl, { buffer: dk.buffer }, { buffer: dv.buffer }] });
    }
    ld.dispose();
  }
  let gk = dk;
  let gv = dv;
  if (!want[1] && dk) (dk.dispose(), (gk = null));
  if (!want[2] && dv) (dv.dispose(), (gv = null));
  return [dq, gk, gv];
}

/**
 * Head dims above this take the unfused path: the fused kernels keep a row in D/4 unrolled vec4 registers,
 * which for the VAE's single 512-wide head is a shader that does not compile (nesting depth) or runs out of
 * registers. Stable Diffusion's UNet and CLIP heads are 40..160 wide.
 */
export const MAX_FUSED_HEAD_DIM = 160;

/**
 * softmax(scale * Q K^T) V from batched matmuls and a row softmax, materializing the [B*H, Sq, Sk] scores;
 * gradients by the ops' own backward rules. Used for head dims above MAX_FUSED_HEAD_DIM (the VAE's
 * mid-block attention), where a single head makes the score matrix affordable. f16 inputs stay f16 through
 * the composition (scores, probabilities and output in f16 storage): it takes f16 where matmul (with f16
 * activations as A and B), softmax and add do.
 */
function attentionUnfused(q: Tensor, k: Tensor, v: Tensor, d: Dims, opts: AttentionOptions): Tensor {
  const { B, H, Sq, Sk, D, Dv } = d;
  const heads = (x: Tensor, S: number, E: number) => reshape(permute(reshape(x, [B, S, H, E]), [0, 2, 1, 3]), [B * H, S, E]);
  let scores = matmul(heads(q, Sq, D), heads(k, Sk, D), { transB: true });
  if (opts.causal) {
    // the mask in the scores' dtype; for f16 the most negative finite value (a masked score may round to
    // -inf: exp gives 0 either way, and causal rows always keep key 0, so no row is all -inf)
    const mask = new Float32Array(Sq * Sk);
    const neg = scores.dtype === 'f16' ? -65504 : -1e30;
    for (let i = 0; i < Sq; i++) for (let j = i + 1; j < Sk; j++) mask[i * Sk + j] = neg;
    scores = add(scores, Tensor.from(mask, [1, Sq, Sk], scores.dtype));
  }
  const p = softmax(scores, opts.scale ?? 1 / Math.sqrt(D));
  const o = matmul(p, heads(v, Sk, Dv));
  return reshape(permute(reshape(o, [B, H, Sq, Dv]), [0, 2, 1, 3]), [B, Sq, H * Dv]);
}

/**
 * Multi-head attention softmax(scale * Q K^T) V on the interleaved-heads layout: q [B, Sq, H*D],
 * k [B, Sk, H*D], v [B, Sk, H*Dv] -> [B, Sq, H*Dv]. Gradients for q, k and v.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): Tensor {
  const d = dimsOf(q, k, v, opts.heads);
  if (d.D > MAX_FUSED_HEAD_DIM || d.Dv > MAX_FUSED_HEAD_DIM) return attentionUnfused(q, k, v, d, opts);
  const { out, lse } = attentionForward(q, k, v, opts);
  if (!needsGrad(q, k, v)) {
    lse.dispose();
    return out;
  }
  return record(
    out,
    'attention',
    [q, k, v],
    (g) => attentionBackward(q, k, v, out, lse, g, opts, [wantsGrad(q), wantsGrad(k), wantsGrad(v)]),
    [lse, out],
  );
}
