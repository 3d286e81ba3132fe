// Group norm over [N, C, ...spatial] (NCHW) with per-channel affine and an optional fused SiLU.
// A "plane" is one (n, c) slice of S = prod(spatial) contiguous elements; group (n, g) is Cg = C / G
// consecutive planes. Every pass splits each plane over T invocations (invocation `sub` of a plane reads
// elements sub, sub + T, ... so neighbouring invocations read neighbouring vec4s) and needs no barriers:
//
// forward   stats:     per invocation, count / mean / centred sum of squares of its elements (two-pass
//                      over a slice that stays in cache)                               -> partials [N*C*T]
//           combine:   per group, Chan's parallel merge of its partials into mean and rstd, folded with
//                      gamma/beta into a per-plane (scale, shift, mean, rstd)           -> PS [N*C]
//           normalize: y = x * scale + shift (then SiLU), vec4 when S % 4 == 0
// backward  sums:      per invocation, sum(g') and sum(g' * (x - mean)) where g' is the gradient before
//                      the affine (the SiLU derivative is applied on a pre-activation recomputed from x)
//           combine:   per group, the dx coefficients; per channel, dgamma and dbeta
//           dx:        dx = p_c * g' + q * x + r  (p_c = rstd * gamma_c; q, r per group)
// Tensors larger than one storage binding are processed in windows of whole planes bound at aligned
// offsets (the small per-plane arrays are always bound whole). Storage: x, y, dy and dx share one dtype, f32
// or f16 (shader-f16); weight and bias share theirs (f32 or f16), independently of x; dweight and dbias have
// the weight's dtype; the per-plane statistics, partials and coefficients stay f32, and all arithmetic is
// f32 (every load widened, every store narrowed).
import { rt, Uniforms } from '../engine/runtime.js';
import { ShapeError, Tensor, record, wantsGrad } from '../engine/tensor.js';
import { grid, prod, WG_INDEX, memoKernel, flatMain, enableF16, floatDtype, sameFloatDtype, storageType, needF16, bindWindow, alignedRowStep } from './util.js';

/** vec4 loads per invocation in the plane passes (a plane gets ceil(S4 / perInvocation) invocations) */
let perInvocation: number | null = null;
/** Tuning hook for benchmarks and tests: vec4 elements each invocation handles (null: the adapter's preset). */
export function setGroupNormChunk(n: number | null) {
  perInvocation = n === null ? null : Math.max(1, Math.floor(n));
}

/** Shared prelude of the plane passes: V is the f32 compute type, S the storage type of x/y/dy/dx (`dt`). */
function header(vec: boolean, dt: string) {
  const st = storageType(dt);
  return /* wgsl */ `${enableF16(dt)}
${WG_INDEX}
alias V = ${vec ? 'vec4<f32>' : 'f32'};
alias S = ${vec ? `vec4<${st}>` : st};
const WIDTH = ${vec ? 4 : 1}u;
fn hsum(v: V) -> f32 { return ${vec ? 'dot(v, vec4<f32>(1.0))' : 'v'}; }`;
}

// ---- forward ----
const statsKernel = memoKernel((vec: boolean, dt: string) => /* wgsl */ `
${header(vec, dt)}
struct P { planes: u32, S4: u32, T: u32, p0: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<S>;
@group(0) @binding(2) var<storage, read_write> PART: array<vec4<f32>>; // count, mean, M2 per invocation
${flatMain('t', 'u.planes * u.T')}
  let p = t / u.T;
  let sub = t - p * u.T;
  let base = p * u.S4;
  var s = 0.0;
  var cnt = 0u;
  for (var j = sub; j < u.S4; j += u.T) { s += hsum(V(X[base + j])); cnt++; }
  let n = f32(cnt * WIDTH);
  let mean = select(0.0, s / n, cnt > 0u);
  var m2 = 0.0;
  for (var j = sub; j < u.S4; j += u.T) { let d = V(X[base + j]) - V(mean); m2 += hsum(d * d); }
  PART[(u.p0 + p) * u.T + sub] = vec4<f32>(n, mean, m2, 0.0);
}`);

const combineKernel = memoKernel((f16: boolean) => /* wgsl */ `
${f16 ? 'enable f16;' : ''}
struct P { NG: u32, G: u32, Cg: u32, T: u32, eps: f32, _0: u32, _1: u32, _2: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> PART: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> W: array<${f16 ? 'f16' : 'f32'}>;
@group(0) @binding(3) var<storage, read> B: array<${f16 ? 'f16' : 'f32'}>;
@group(0) @binding(4) var<storage, read_write> PS: array<vec4<f32>>; // scale, shift, mean, rstd per plane
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let ng = gid.x;
  if (ng >= u.NG) { return; }
  let g = ng % u.G;
  let C = u.G * u.Cg;
  let first = ng * u.Cg; // (n * C + g * Cg): the group's planes are consecutive
  var na = 0.0;
  var ma = 0.0;
  var m2 = 0.0;
  let cnt = u.Cg * u.T;
  for (var k = 0u; k < cnt; k++) {
    let q = PART[first * u.T + k];
    if (q.x > 0.0) {
      let n = na + q.x;
      let d = q.y - ma;
      ma += d * (q.x / n);
      m2 += q.z + d * d * (na * q.x / n);
      na = n;
    }
  }
  let rstd = inverseSqrt(m2 / na + u.eps);
  for (var k = 0u; k < u.Cg; k++) {
    let c = g * u.Cg + k;
    let a = rstd * f32(W[c]);
    PS[first + k] = vec4<f32>(a, f32(B[c]) - ma * a, ma, rstd);
  }
}`);

const normalizeKernel = memoKernel((vec: boolean, silu: boolean, dt: string) => /* wgsl */ `
${header(vec, dt)}
struct P { planes: u32, S4: u32, T: u32, p0: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<S>;
@group(0) @binding(2) var<storage, read> PS: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> Y: array<S>;
${flatMain('t', 'u.planes * u.T')}
  let p = t / u.T;
  let sub = t - p * u.T;
  let base = p * u.S4;
  let ps = PS[u.p0 + p];
  for (var j = sub; j < u.S4; j += u.T) {
    let y = V(X[base + j]) * ps.x + V(ps.y);
    Y[base + j] = S(${silu ? 'y / (1.0 + exp(-y))' : 'y'});
  }
}`);

// ---- backward ----
// g' = the gradient at the affine output: g itself, or g * silu'(pre) with pre = x * scale + shift
const gradPre = (silu: boolean) =>
  silu ? 'let pre = xv * ps.x + V(ps.y); let sg = 1.0 / (1.0 + exp(-pre)); let gp = gv * sg * (1.0 + pre * (1.0 - sg));' : 'let gp = gv;';

const bwdSumsKernel = memoKernel((vec: boolean, silu: boolean, dt: string) => /* wgsl */ `
${header(vec, dt)}
struct P { planes: u32, S4: u32, T: u32, p0: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<S>;
@group(0) @binding(2) var<storage, read> G: array<S>;
@group(0) @binding(3) var<storage, read> PS: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> PB: array<vec2<f32>>; // sum g', sum g' * (x - mean)
${flatMain('t', 'u.planes * u.T')}
  let p = t / u.T;
  let sub = t - p * u.T;
  let base = p * u.S4;
  let ps = PS[u.p0 + p];
  var sa = V(0.0);
  var sb = V(0.0);
  for (var j = sub; j < u.S4; j += u.T) {
    let xv = V(X[base + j]);
    let gv = V(G[base + j]);
    ${gradPre(silu)}
    sa += gp;
    sb += gp * (xv - V(ps.z));
  }
  PB[(u.p0 + p) * u.T + sub] = vec2<f32>(hsum(sa), hsum(sb));
}`);

const bwdCombineKernel = memoKernel((f16: boolean) => /* wgsl */ `
${f16 ? 'enable f16;' : ''}
struct P { N: u32, G: u32, Cg: u32, T: u32, M: f32, _0: u32, _1: u32, _2: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> PB: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> PS: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> W: array<${f16 ? 'f16' : 'f32'}>;
@group(0) @binding(4) var<storage, read_write> CO: array<vec4<f32>>; // p_c, q, r per plane
@group(0) @binding(5) var<storage, read_write> DG: array<${f16 ? 'f16' : 'f32'}>; // [C] dgamma, in the weight's dtype
@group(0) @binding(6) var<storage, read_write> DB: array<${f16 ? 'f16' : 'f32'}>; // [C] dbeta
fn plane_sums(pl: u32) -> vec2<f32> {
  var s = vec2<f32>(0.0);
  for (var t = 0u; t < u.T; t++) { s += PB[pl * u.T + t]; }
  return s;
}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let C = u.G * u.Cg;
  let NG = u.N * u.G;
  let i = gid.x;
  if (i < NG) {
    let g = i % u.G;
    let first = i * u.Cg;
    let st = PS[first];
    let mean = st.z;
    let rstd = st.w;
    var sa = 0.0;
    var sb = 0.0;
    for (var k = 0u; k < u.Cg; k++) {
      let s = plane_sums(first + k);
      let gam = f32(W[g * u.Cg + k]);
      sa += gam * s.x;
      sb += gam * s.y;
    }
    let ma = sa / u.M;
    let mb = sb * rstd / u.M;
    let q = -rstd * rstd * mb;
    let r = rstd * (rstd * mb * mean - ma);
    for (var k = 0u; k < u.Cg; k++) {
      CO[first + k] = vec4<f32>(rstd * f32(W[g * u.Cg + k]), q, r, 0.0);
    }
  } else if (i < NG + C) {
    let c = i - NG;
    var dg = 0.0;
    var db = 0.0;
    for (var n = 0u; n < u.N; n++) {
      let pl = n * C + c;
      let s = plane_sums(pl);
      dg += s.y * PS[pl].w;
      db += s.x;
    }
    DG[c] = ${f16 ? 'f16(dg)' : 'dg'};
    DB[c] = ${f16 ? 'f16(db)' : 'db'};
  }
}`);

const bwdDxKernel = memoKernel((vec: boolean, silu: boolean, dt: string) => /* wgsl */ `
${header(vec, dt)}
struct P { planes: u32, S4: u32, T: u32, p0: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<S>;
@group(0) @binding(2) var<storage, read> G: array<S>;
${silu ? '@group(0) @binding(3) var<storage, read> PS: array<vec4<f32>>;' : ''}
@group(0) @binding(${silu ? 4 : 3}) var<storage, read> CO: array<vec4<f32>>;
@group(0) @binding(${silu ? 5 : 4}) var<storage, read_write> DX: array<S>;
${flatMain('t', 'u.planes * u.T')}
  let p = t / u.T;
  let sub = t - p * u.T;
  let base = p * u.S4;
  let co = CO[u.p0 + p];
  ${silu ? 'let ps = PS[u.p0 + p];' : ''}
  for (var j = sub; j < u.S4; j += u.T) {
    let xv = V(X[base + j]);
    let gv = V(G[base + j]);
    ${gradPre(silu)}
    DX[base + j] = S(gp * co.x + xv * co.y + V(co.z));
  }
}`);

/**
 * Windows [p0, p1) of whole planes of `S` elements of `bytes` bytes each (4: f32, 2: f16) that fit one
 * binding and start at aligned offsets.
 */
function planeWindows(op: string, planes: number, S: number, bytes: number): [number, number][] {
  const r = rt();
  const planeBytes = S * bytes;
  if (planes * planeBytes <= r.maxBindingBytes) return [[0, planes]];
  const step = alignedRowStep(S, bytes); // planes per aligned offset step
  const per = Math.floor(r.maxBindingBytes / planeBytes / step) * step;
  if (per < 1)
    throw new ShapeError(`${op}: ${step} plane(s) of ${planeBytes} bytes exceed the storage binding limit (${r.maxBindingBytes}); cannot split`);
  const out: [number, number][] = [];
  for (let p = 0; p < planes; p += per) out.push([p, Math.min(planes, p + per)]);
  return out;
}

/**
 * Group norm with per-channel affine: x [N, C, ...spatial] (f32, or f16 storage when the device has
 * shader-f16; y has x's dtype), weight/bias [C] (both f32 or both f16, independently of x). Statistics per
 * (n, group) in f32. `silu` fuses SiLU on the output (its backward recomputes the pre-activation from x).
 * Gradients for x (in x's dtype; dy must have y's), weight and bias (in their dtype).
 */
export function groupNorm(x: Tensor, groups: number, weight: Tensor, bias: Tensor, eps = 1e-5, opts: { silu?: boolean } = {}): Tensor {
  const silu = !!opts.silu;
  if (x.rank < 2) throw new ShapeError(`groupNorm: input must be [N, C, ...], got [${x.shape}]`);
  const dt = floatDtype('groupNorm', 'x', x);
  const [N, C] = x.shape;
  const S = prod(x.shape.slice(2));
  if (!Number.isInteger(groups) || groups < 1 || C % groups)
    throw new ShapeError(`groupNorm: ${C} channels are not divisible into ${groups} groups (input [${x.shape}])`);
  if (weight.size !== C || bias.size !== C)
    throw new ShapeError(`groupNorm: input [${x.shape}] needs weight and bias of size ${C}, got [${weight.shape}] and [${bias.shape}]`);
  const wf16 = weight.dtype === 'f16'; // weight/bias storage (independent of x's dtype)
  if (weight.dtype !== bias.dtype || (weight.dtype !== 'f32' && weight.dtype !== 'f16'))
    throw new ShapeError(`groupNorm: weight and bias must both be f32 or both f16, got ${weight.dtype} and ${bias.dtype}`);
  if (wf16) needF16('groupNorm', 'weight/bias');
  const y = Tensor.empty(x.shape, dt, 'group_norm');
  if (x.size === 0) return y;

  const r = rt();
  const G = groups;
  const Cg = C / G;
  const planes = N * C;
  const vec = S % 4 === 0;
  const S4 = vec ? S / 4 : S;
  // invocations per plane: ~128 vec4 each on CPU adapters (per-workgroup overhead dominates there), ~8 on GPUs;
  // at most 256 so that the combine passes stay short, and the partials [planes * T] must fit one binding
  const perInv = perInvocation ?? (r.gpu.adapterClass === 'cpu' ? 128 : 8);
  const T = Math.max(1, Math.min(Math.ceil(S4 / perInv), perInvocation ? Infinity : 256, Math.floor(r.maxBindingBytes / (planes * 16))));
  const bytes = dt === 'f16' ? 2 : 4;
  const windows = planeWindows('groupNorm', planes, S, bytes);
  // windows start at aligned offsets (planeWindows), so their shift is 0; the kernels never index past their planes
  const bindX = (t: Tensor, p0: number, p1: number) => bindWindow(t, p0 * S, (p1 - p0) * S).bind;

  const ps = Tensor.empty([planes, 4], 'f32', 'group_norm_stats');
  const part = Tensor.empty([planes * T, 4], 'f32', 'group_norm_partials');
  for (const [p0, p1] of windows)
    r.dispatch({
      name: 'group_norm_stats',
      code: statsKernel(vec, dt),
      uniforms: new Uniforms().u32(p1 - p0, S4, T, p0).done(),
      bindings: [bindX(x, p0, p1), { buffer: part.buffer }],
      workgroups: grid(Math.ceil(((p1 - p0) * T) / 64)),
    });
  r.dispatch({
    name: 'group_norm_combine',
    code: combineKernel(wf16),
    uniforms: new Uniforms().u32(N * G, G, Cg, T).f32(eps).u32(0, 0, 0).done(),
    bindings: [part, weight, bias, ps].map((t) => ({ buffer: t.buffer })),
    workgroups: [Math.ceil((N * G) / 64)],
  });
  part.dispose();
  for (const [p0, p1] of windows)
    r.dispatch({
      name: 'group_norm',
      code: normalizeKernel(vec, silu, dt),
      uniforms: new Uniforms().u32(p1 - p0, S4, T, p0).done(),
      bindings: [bindX(x, p0, p1), { buffer: ps.buffer }, bindX(y, p0, p1)],
      workgroups: grid(Math.ceil(((p1 - p0) * T) / 64)),
    });

  const out = record(
    y,
    silu ? 'group_norm_silu' : 'group_norm',
    [x, weight, bias],
    (g) => {
      const wantX = wantsGrad(x);
      const wantW = wantsGrad(weight) || wantsGrad(bias);
      if (!wantX && !wantW) return [null, null, null];
      sameFloatDtype('groupNorm backward', [x, g], ['x', 'dy']); // dy arrives in y's dtype, which is x's
      const pb = Tensor.empty([planes * T, 2], 'f32', 'group_norm_bwd_partials');
      for (const [p0, p1] of windows)
        r.dispatch({
          name: 'group_norm_bwd_sums',
          code: bwdSumsKernel(vec, silu, dt),
          uniforms: new Uniforms().u32(p1 - p0, S4, T, p0).done(),
          bindings: [bindX(x, p0, p1), bindX(g, p0, p1), { buffer: ps.buffer }, { buffer: pb.buffer }],
          workgroups: grid(Math.ceil(((p1 - p0) * T) / 64)),
        });
      const co = Tensor.empty([planes, 4], 'f32', 'group_norm_bwd_coef');
      // dweight and dbias in the weight's (and bias's) dtype, written directly by the combine pass
      let gw: Tensor | null = Tensor.empty([...weight.shape], weight.dtype, 'group_norm_dweight');
      let gb: Tensor | null = Tensor.empty([...bias.shape], bias.dtype, 'group_norm_dbias');
      r.dispatch({
        name: 'group_norm_bwd_combine',
        code: bwdCombineKernel(wf16),
        uniforms: new Uniforms().u32(N, G, Cg, T).f32(Cg * S).u32(0, 0, 0).done(),
        bindings: [pb, ps, weight, co, gw, gb].map((t) => ({ buffer: t.buffer })),
        workgroups: [Math.ceil((N * G + C) / 64)],
      });
      let dx: Tensor | null = null;
      if (wantX) {
        dx = Tensor.empty(x.shape, dt, 'group_norm_bwd');
        for (const [p0, p1] of windows)
          r.dispatch({
            name: 'group_norm_bwd_dx',
            code: bwdDxKernel(vec, silu, dt),
            uniforms: new Uniforms().u32(p1 - p0, S4, T, p0).done(),
            bindings: [bindX(x, p0, p1), bindX(g, p0, p1), ...(silu ? [{ buffer: ps.buffer }] : []), { buffer: co.buffer }, bindX(dx, p0, p1)],
            workgroups: grid(Math.ceil(((p1 - p0) * T) / 64)),
          });
      }
      if (!wantsGrad(weight)) {
        gw.dispose();
        gw = null;
      }
      if (!wantsGrad(bias)) {
        gb.dispose();
        gb = null;
      }
      return [dx, gw, gb];
    },
    [ps],
  );
  if (!out.node) ps.dispose();
  return out;
}
