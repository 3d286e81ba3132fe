// 2D convolution (NCHW activations, OIHW weights) as implicit GEMMs: no im2col buffer is ever built.
//  - forward:          Y[n, o, p]      = sum_{c,ky,kx} W[o, c, ky, kx] * X[n, c, iy(p,ky), ix(p,kx)]  (+ bias[o])
//  - backward-data:    dX[n, c, iy, ix] = sum_{o,ky,kx} W[o, c, ky, kx] * dY[n, o, oy, ox], a gather over the
//    output positions that read (iy, ix): per input pixel only the taps with (i + pad - k) % stride == 0
//    contribute, so each invocation owns pixels of one stride phase and loops over exactly those taps.
//  - backward-weight:  dW[o, c, ky, kx] = sum_{n,oy,ox} dY[n, o, oy, ox] * X[n, c, iy, ix], a GEMM with the
//    reduction over the output positions; each invocation has one tap (ky, kx), so the valid output range
//    is computed once and the inner loop has no bounds checks.
//  - bias gradient:    sum of dY over n, oy, ox.
// 3x3 stride-1 convolutions on CPU adapters go through Winograd F(4x4, 3x3) or F(2x2, 3x3) where the image is
// large enough (winograd.ts: 4x or 2.25x fewer multiply-adds, all three passes; `setConv2dWinograd`). The
// direct kernels:
// three tilings, picked per adapter (`conv2dVariant`), all tested on every adapter:
//  - 'subgroup' (CPU adapters with 8-wide subgroups, e.g. lavapipe): a workgroup is one subgroup computing a
//    32 x 32 tile; weights are shared between lanes with subgroupBroadcast (see the section below).
//  - 'register' (everything else, the default on GPUs): each invocation computes a 4x4 block straight from
//    global memory, without workgroup memory or barriers.
//  - 'shared' (opt-in, for GPUs): the forward pass and stride-1 backward-data on matmul's workgroup-memory
//    tiling (64 x 64 outputs per workgroup); backward-weight and strided backward-data stay 'register'.
// Kernel size, stride and padding are uniforms, so one pipeline per kernel serves every convolution.
// Tensors larger than one storage binding are processed in chunks of batch items, or of channels within one
// item, each bound at a 256-byte aligned offset with the remainder passed as an element shift.
import { rt, Uniforms, type BufferBinding } from '../engine/runtime.js';
import { DTYPE_BYTES, ShapeError, Tensor, record, wantsGrad } from '../engine/tensor.js';
import { grid, WG_INDEX, memoKernel, flatMain, storageType, enableF16, floatDtype, sameFloatDtype, bindWindow, windowLimit, widen, narrow, type FloatDType } from './util.js';
import { cast } from './elementwise.js';
import { winogradBackwardData, winogradBackwardWeight, winogradFits, winogradForward, type WinogradTile } from './winograd.js';

export interface Conv2dOptions {
  stride?: number | [number, number];
  /** symmetric, [vertical, horizontal], or [top, bottom, left, right] */
  padding?: number | [number, number] | [number, number, number, number];
}

interface Geom {
  N: number;
  C: number;
  H: number;
  W: number;
  O: number;
  KH: number;
  KW: number;
  SH: number;
  SW: number;
  PT: number;
  PB: number;
  PL: number;
  PR: number;
  Ho: number;
  Wo: number;
}

function geometry(x: Tensor, w: Tensor, opts: Conv2dOptions): Geom {
  if (x.rank !== 4) throw new ShapeError(`conv2d: input must be [N, C, H, W], got [${x.shape}]`);
  if (w.rank !== 4) throw new ShapeError(`conv2d: weight must be [O, C, kh, kw], got [${w.shape}]`);
  const [N, C, H, W] = x.shape;
  const [O, C2, KH, KW] = w.shape;
  if (C !== C2) throw new ShapeError(`conv2d: input [${x.shape}] has ${C} channels but weight [${w.shape}] expects ${C2}`);
  const s = opts.stride ?? 1;
  const [SH, SW] = typeof s === 'number' ? [s, s] : s;
  const p = opts.padding ?? 0;
  const [PT, PB, PL, PR] = typeof p === 'number' ? [p, p, p, p] : p.length === 2 ? [p[0], p[0], p[1], p[1]] : p;
  for (const v of [SH, SW]) if (!Number.isInteger(v) || v < 1) throw new ShapeError(`conv2d: invalid stride ${s}`);
  for (const v of [PT, PB, PL, PR]) if (!Number.isInteger(v) || v < 0) throw new ShapeError(`conv2d: invalid padding ${p}`);
  const Ho = Math.floor((H + PT + PB - KH) / SH) + 1;
  const Wo = Math.floor((W + PL + PR - KW) / SW) + 1;
  if (Ho < 1 || Wo < 1) throw new ShapeError(`conv2d: kernel ${KH}x${KW} is larger than the padded input [${x.shape}]`);
  return { N, C, H, W, O, KH, KW, SH, SW, PT, PB, PL, PR, Ho, Wo };
}

// ---------------- storage dtypes ----------------
// Activations (x, y) and their gradients (dY, dX) are f32 or f16; weights f32 or f16 independently; bias and
// the weight/bias gradients' accumulation f32. Kernels compute in f32: a load of an f16 tensor is widened and a
// store narrowed. For f32 tensors the helpers return the expression unchanged, so the f32 kernels' WGSL is
// what it was. Every path takes f16 activations (direct, subgroup with or without the weight repack, Winograd
// with texture or buffer reads); dW is summed in f32 and rounded once where w is f16. Where a tensor exceeds one
// binding, the partial sums over channel chunks are accumulated in y / dX itself, so with f16 activations they
// are rounded to f16 once per chunk (bias gradient and dW accumulate in f32).


// ---------------- binding windows for tensors larger than one storage binding ----------------


/**
 * Chunking of two per-item operands A [N, CA, SA] and B [N, CB, SB] with `eb` bytes per element (4: f32, 2:
 * f16): `nb` whole items per chunk when an item of each fits a binding, else one item per chunk with `ca`/`cb`
 * channels per window.
 */
function plan(op: string, N: number, CA: number, SA: number, CB: number, SB: number, eb = 4) {
  const lim = windowLimit(eb);
  if (CA * SA <= lim && CB * SB <= lim) return { nb: Math.max(1, Math.min(N, Math.floor(lim / Math.max(CA * SA, CB * SB, 1)))), ca: CA, cb: CB };
  const ca = Math.min(CA, Math.floor(lim / SA));
  const cb = Math.min(CB, Math.floor(lim / SB));
  if (ca < 1 || cb < 1) throw new ShapeError(`${op}: one channel plane exceeds the storage binding limit (${rt().maxBindingBytes} bytes)`);
  return { nb: 1, ca, cb };
}

function checkWeightBinding(op: string, w: Tensor) {
  if (w.byteLength > rt().maxBindingBytes) throw new ShapeError(`${op}: weight of ${w.byteLength} bytes exceeds the storage binding limit`);
}

/** The binding window of channels [c0, c0 + cc) of batch items [n0, n0 + nn) of an NCHW tensor (one span: the
 * channels between the first item's window and the last item's are bound too and left alone). */
function channelWindow(t: Tensor, n0: number, nn: number, c0: number, cc: number) {
  const [, Ct, H, W] = t.shape;
  const S = H * W;
  return bindWindow(t, n0 * Ct * S + c0 * S, (nn - 1) * Ct * S + cc * S);
}

/** One visit of `eachWindow`: batch items [n0, n0 + nn), the outer tensor's channels [o0, o0 + oc) in window `ow`
 * and the inner tensor's [i0, i0 + ic) in `iw`. */
interface WindowPair {
  n0: number;
  nn: number;
  ow: ReturnType<typeof bindWindow>;
  o0: number;
  oc: number;
  iw: ReturnType<typeof bindWindow>;
  i0: number;
  ic: number;
}

/**
 * The binding windows of a pass over two NCHW tensors of one batch (of the activations' dtype), as `plan`
 * chunks them: batch chunks, then windows of `outer`'s channels, then of `inner`'s; `visit` dispatches each.
 */
function eachWindow(op: string, outer: Tensor, inner: Tensor, visit: (w: WindowPair) => void) {
  const [N, CO, HO, WO] = outer.shape;
  const [, CI, HI, WI] = inner.shape;
  const { nb, ca: ib, cb: ob } = plan(op, N, CI, HI * WI, CO, HO * WO, DTYPE_BYTES[outer.dtype]);
  for (let n0 = 0; n0 < N; n0 += nb) {
    const nn = Math.min(nb, N - n0);
    for (let o0 = 0; o0 < CO; o0 += ob) {
      const oc = Math.min(ob, CO - o0);
      const ow = channelWindow(outer, n0, nn, o0, oc);
      for (let i0 = 0; i0 < CI; i0 += ib) {
        const ic = Math.min(ib, CI - i0);
        visit({ n0, nn, ow, o0, oc, iw: channelWindow(inner, n0, nn, i0, ic), i0, ic });
      }
    }
  }
}

function checkGrid(op: string, wg: number[]) {
  const m = rt().maxWorkgroups;
  if (wg.some((v) => v > m)) throw new ShapeError(`${op}: dispatch [${wg}] exceeds ${m} workgroups per dimension`);
}

// kernel geometry as uniforms (appended to each register kernel's parameter block): one pipeline per kernel
const GEOM_FIELDS = 'KH: i32, KW: i32, SH: i32, SW: i32, PT: i32, PL: i32, _g0: i32, _g1: i32';
const GEOM_LETS = 'let KH = u.KH; let KW = u.KW; let KHW = u32(u.KH * u.KW); let SH = u.SH; let SW = u.SW; let PT = u.PT; let PL = u.PL;';
const geomUniforms = (un: Uniforms, g: Geom) => un.i32(g.KH, g.KW, g.SH, g.SW, g.PT, g.PL, 0, 0).done();

// ---------------- forward ----------------

// uniforms: Cc (channels in this window), Ctot, c0, Oc, o0, H, W, Ho, Wo, xBS, yBS, xShift, yShift, accum
const forwardKernel = memoKernel(forwardKernelSource);
function forwardKernelSource(f16: boolean, bias: boolean, ad: FloatDType): string {
  const J = [0, 1, 2, 3];
  return /* wgsl */ `${enableF16(f16 ? 'f16' : 'f32', ad)}
struct P { Cc: u32, Ctot: u32, c0: u32, Oc: u32, o0: u32, H: u32, W: u32, Ho: u32, Wo: u32, xBS: u32, yBS: u32, xShift: u32, yShift: u32, accum: u32, _0: u32, _1: u32, ${GEOM_FIELDS} }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<${storageType(ad)}>;
@group(0) @binding(2) var<storage, read> WT: array<${f16 ? 'f16' : 'f32'}>;
${bias ? '@group(0) @binding(3) var<storage, read> BIAS: array<f32>;' : ''}
@group(0) @binding(${bias ? 4 : 3}) var<storage, read_write> Y: array<${storageType(ad)}>;
@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  ${GEOM_LETS}
  let P = u.Ho * u.Wo;
  let HW = u.H * u.W;
  let p0 = gid.x * 4u;
  let ol = gid.y * 4u;
  let n = gid.z;
  if (p0 >= P || ol >= u.Oc) { return; }
  let pj = min(vec4<u32>(p0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(P - 1u));
  let oy = vec4<i32>(pj / u.Wo);
  let ox = vec4<i32>(pj % u.Wo);
  let iy0 = oy * SH - PT;
  let ix0 = ox * SW - PL;
  let Hi = i32(u.H);
  let Wi = i32(u.W);
  let xb = u.xShift + n * u.xBS;
  // weight rows of the 4 output channels (clamped; their results are not stored)
  let og = vec4<u32>(u.o0) + min(vec4<u32>(ol) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(u.Oc - 1u));
  let wrow = (og * u.Ctot + u.c0) * KHW;
  var acc0 = vec4<f32>(0.0); var acc1 = vec4<f32>(0.0); var acc2 = vec4<f32>(0.0); var acc3 = vec4<f32>(0.0);
  for (var ky = 0; ky < KH; ky++) {
    let iy = iy0 + ky;
    let rowOk = (iy >= vec4<i32>(0)) & (iy < vec4<i32>(Hi));
    for (var kx = 0; kx < KW; kx++) {
      let ix = ix0 + kx;
      let ok = rowOk & (ix >= vec4<i32>(0)) & (ix < vec4<i32>(Wi));
      let m = select(vec4<f32>(0.0), vec4<f32>(1.0), ok);
      let a = vec4<u32>(select(vec4<i32>(0), iy * Wi + ix, ok)) + xb;
      let wk = wrow + u32(ky * KW + kx);
      for (var c = 0u; c < u.Cc; c++) {
        let xo = c * HW;
        let xv = vec4<f32>(${['x', 'y', 'z', 'w'].map((c) => widen(ad, `X[a.${c} + xo]`)).join(', ')}) * m;
        let wc = wk + c * KHW;
        acc0 = fma(vec4<f32>(f32(WT[wc.x])), xv, acc0);
        acc1 = fma(vec4<f32>(f32(WT[wc.y])), xv, acc1);
        acc2 = fma(vec4<f32>(f32(WT[wc.z])), xv, acc2);
        acc3 = fma(vec4<f32>(f32(WT[wc.w])), xv, acc3);
      }
    }
  }
  let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
  for (var i = 0u; i < 4u; i++) {
    if (ol + i >= u.Oc) { break; }
    let base = u.yShift + n * u.yBS + (ol + i) * P + p0;
    var v = accs[i];
    ${bias ? 'if (u.accum == 0u) { v += vec4<f32>(BIAS[u.o0 + ol + i]); }' : ''}
    ${J.map((j) => `if (p0 + ${j}u < P) { Y[base + ${j}u] = ${narrow(ad, `select(v[${j}], v[${j}] + ${widen(ad, `Y[base + ${j}u]`)}, u.accum != 0u)`)}; }`).join('\n    ')}
  }
}`;
}

function forwardRaw(x: Tensor, w: Tensor, bias: Tensor | undefined, g: Geom): Tensor {
  const { N, C, H, W, O, Ho, Wo } = g;
  const ad = x.dtype as FloatDType;
  const y = Tensor.empty([N, O, Ho, Wo], ad, 'conv2d');
  if (y.size === 0) return y;
  checkWeightBinding('conv2d', w);
  const wt = winogradTile(g, ad);
  if (wt) {
    winogradForward(x, w, bias, g, y, wt);
    return y;
  }
  if (useSubgroup(O)) {
    forwardSg(x, w, bias, g, y);
    return y;
  }
  if (conv2dVariant() === 'shared') {
    sharedConv(x, w, bias, y, g, false);
    return y;
  }
  const r = rt();
  const f16 = w.dtype === 'f16';
  const code = forwardKernel(f16, !!bias, ad);
  eachWindow('conv2d', y, x, ({ nn, ow: yw, o0, oc, iw: xw, i0: c0, ic: cc }) => {
    const wg: [number, number, number] = [Math.ceil((Ho * Wo) / 32), Math.ceil(oc / 32), nn];
    checkGrid('conv2d', wg);
    r.dispatch({
      name: 'conv2d',
      code,
      uniforms: geomUniforms(new Uniforms().u32(cc, C, c0, oc, o0, H, W, Ho, Wo, C * H * W, O * Ho * Wo, xw.shift, yw.shift, c0 > 0 ? 1 : 0, 0, 0), g),
      bindings: [xw.bind, { buffer: w.buffer }, ...(bias ? [{ buffer: bias.buffer }] : []), yw.bind],
      workgroups: wg,
    });
  });
  return y;
}

// ---------------- 'shared' tiling: implicit GEMM on workgroup-memory tiles ----------------
// The matmul 'shared' kernel's tiling (64 x 64 outputs per workgroup, 16 x 16 invocations of 4 x 4, K steps of 16
// staged in workgroup memory) with the GEMM operands generated from the convolution: rows = output channels,
// columns = output positions over (batch item, pixel), reduction = source channels x taps. The A tile is the
// im2col gather (zero outside the padded image), the B tile the weights. It serves the forward pass and, for
// stride 1, backward-data: dX is the convolution of dY with the weights transposed (o and c swapped) and
// flipped (tap kh*kw - 1 - t), with padding kh - 1 - pt, kw - 1 - pl. Meant for GPUs, where each loaded value
// is reused 64 times from workgroup memory; the other passes keep the 'register' kernels.
// uniforms: Cc (reduction channels in this window), ci0 (first of them, for the weight index), Oc, o0 (output
// channels and the first one), H, W (source), Ho, Wo (output), xBS, yBS, xShift, yShift, accum, nn (batch
// items in this window), wOut, wIn (weight strides of an output and a reduction channel), flip, and the step
// of 16 reduction rows as (channels, tap rows, tap columns) = (q, ry, rx): each invocation walks its rows'
// (channel, ky, kx) by additions and carries, with no integer division in the loop.
const sharedKernel = memoKernel(sharedKernelSource);
function sharedKernelSource(f16: boolean, bias: boolean, ad: FloatDType): string {
  const I = [0, 1, 2, 3];
  // (channel, ky, kx) of reduction row k and its step to row k + 16
  const start = (v: string, k: string) => `var ${v}c = ${k} / KHW; var ${v}y = i32((${k} % KHW) / u32(KW)); var ${v}x = i32(${k} % u32(KW));`;
  const step = (v: string) =>
    `${v}x += u.rx; if (${v}x >= KW) { ${v}x -= KW; ${v}y += 1; } ${v}y += u.ry; if (${v}y >= KH) { ${v}y -= KH; ${v}c += 1u; } ${v}c += u.q;`;
  return /* wgsl */ `${enableF16(f16 ? 'f16' : 'f32', ad)}
struct P { Cc: u32, ci0: u32, Oc: u32, o0: u32, H: u32, W: u32, Ho: u32, Wo: u32, xBS: u32, yBS: u32, xShift: u32, yShift: u32, accum: u32, nn: u32, wOut: u32, wIn: u32, flip: u32, q: u32, ry: i32, rx: i32, ${GEOM_FIELDS} }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<${storageType(ad)}>;
@group(0) @binding(2) var<storage, read> WT: array<${f16 ? 'f16' : 'f32'}>;
${bias ? '@group(0) @binding(3) var<storage, read> BIAS: array<f32>;' : ''}
@group(0) @binding(${bias ? 4 : 3}) var<storage, read_write> Y: array<${storageType(ad)}>;
var<workgroup> As: array<array<f32, 64>, 16>;
// consecutive invocations store consecutive rows of the weight tile (contiguous weights): 65 columns keep
// those stores out of one memory bank
var<workgroup> Bs: array<array<f32, 65>, 16>;
@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  ${GEOM_LETS}
  let P = u.Ho * u.Wo;
  let M = u.nn * P;
  let HW = u.H * u.W;
  let tileM = wid.x * 64u;
  let tileO = wid.y * 64u;
  let li = lid.y * 16u + lid.x;
  // A-tile loads: this invocation's position (column am of the tile), reduction rows ak + 4i
  let am = li % 64u;
  let ak = li / 64u;
  let gm = tileM + am;
  let mOk = gm < M;
  let mc = min(gm, M - 1u);
  let pa = mc % P;
  let iy0 = i32(pa / u.Wo) * SH - PT;
  let ix0 = i32(pa % u.Wo) * SW - PL;
  let xb = u.xShift + (mc / P) * u.xBS;
  ${I.map((i) => start(`a${i}`, `(ak + ${4 * i}u)`)).join('\n  ')}
  // B-tile loads: reduction row bk, output channels bo + 16i
  let bk = li % 16u;
  let bo = li / 16u;
  ${start('b', 'bk')}
  var acc: array<vec4<f32>, 4>;
  for (var i = 0u; i < 4u; i++) { acc[i] = vec4<f32>(0.0); }
  for (var k0 = 0u; k0 < u.Cc * KHW; k0 += 16u) {
    // write-after-read: every invocation must be done reading the previous tile
    workgroupBarrier();
    ${I.map(
      (i) => `{
      let iy = iy0 + a${i}y;
      let ix = ix0 + a${i}x;
      let ok = mOk && a${i}c < u.Cc && iy >= 0 && iy < i32(u.H) && ix >= 0 && ix < i32(u.W);
      let xi = select(0u, xb + a${i}c * HW + u32(iy) * u.W + u32(ix), ok);
      As[ak + ${4 * i}u][am] = select(0.0, ${widen(ad, 'X[xi]')}, ok);
      ${step(`a${i}`)}
    }`,
    ).join('\n    ')}
    {
      let t = u32(by * KW + bx);
      let wk = (u.ci0 + bc) * u.wIn + select(t, KHW - 1u - t, u.flip != 0u);
      ${I.map(
        (i) => `{
        let oo = bo + ${16 * i}u;
        let ok = bc < u.Cc && tileO + oo < u.Oc;
        Bs[bk][oo] = select(0.0, f32(WT[select(0u, (u.o0 + tileO + oo) * u.wOut + wk, ok)]), ok);
      }`,
      ).join('\n      ')}
      ${step('b')}
    }
    workgroupBarrier();
    for (var kk = 0u; kk < 16u; kk++) {
      let av = vec4<f32>(As[kk][lid.x * 4u], As[kk][lid.x * 4u + 1u], As[kk][lid.x * 4u + 2u], As[kk][lid.x * 4u + 3u]);
      for (var i = 0u; i < 4u; i++) { acc[i] = fma(vec4<f32>(Bs[kk][lid.y * 4u + i]), av, acc[i]); }
    }
  }
  for (var j = 0u; j < 4u; j++) {
    let m = tileM + lid.x * 4u + j;
    if (m >= M) { break; }
    let yb = u.yShift + (m / P) * u.yBS + m % P;
    for (var i = 0u; i < 4u; i++) {
      let o = tileO + lid.y * 4u + i;
      if (o >= u.Oc) { break; }
      let k = yb + o * P;
      var v = acc[i][j];
      ${bias ? 'if (u.accum == 0u) { v += BIAS[u.o0 + o]; }' : ''}
      Y[k] = ${narrow(ad, `select(v, v + ${widen(ad, 'Y[k]')}, u.accum != 0u)`)};
    }
  }
}`;
}

/**
 * One pass of the 'shared' tiling: out [N, Oo, Ho, Wo] = conv(src [N, Cs, H, W]) over the weights w, for the
 * forward pass (geometry g) or, with `flip`, backward-data (src = dY, out = dX, stride 1). Windows of batch
 * items and channels as for the other kernels.
 */
function sharedConv(src: Tensor, w: Tensor, bias: Tensor | undefined, out: Tensor, g: Geom, flip: boolean) {
  const r = rt();
  const ad = src.dtype as FloatDType;
  const [, Cs, H, W] = src.shape;
  const [, Oo, Ho, Wo] = out.shape;
  const KHW = g.KH * g.KW;
  // the pass's geometry: forward as given; backward-data a stride-1 convolution of dY padded by k - 1 - p
  const pg: Geom = flip ? { ...g, PT: g.KH - 1 - g.PT, PL: g.KW - 1 - g.PL } : g;
  // weight strides of an output and a reduction channel: w is [O, C, kh, kw]
  const [wOut, wIn] = flip ? [KHW, g.C * KHW] : [g.C * KHW, KHW];
  // the step of 16 reduction rows (channel-major, then ky, kx) as whole channels, tap rows and tap columns
  const [q, r16] = [Math.floor(16 / KHW), 16 % KHW];
  const [ry, rx] = [Math.floor(r16 / g.KW), r16 % g.KW];
  const code = sharedKernel(w.dtype === 'f16', !!bias, ad);
  const name = flip ? 'conv2d_shared_bwd_data' : 'conv2d_shared';
  const op = flip ? 'conv2d backward' : 'conv2d';
  eachWindow(op, out, src, ({ nn, ow: yw, o0, oc, iw: xw, i0: c0, ic: cc }) => {
    const wg: [number, number, number] = [Math.ceil((nn * Ho * Wo) / 64), Math.ceil(oc / 64), 1];
    checkGrid(op, wg);
    r.dispatch({
      name,
      code,
      uniforms: geomUniforms(
        new Uniforms().u32(cc, c0, oc, o0, H, W, Ho, Wo, Cs * H * W, Oo * Ho * Wo, xw.shift, yw.shift, c0 > 0 ? 1 : 0, nn, wOut, wIn, flip ? 1 : 0, q).i32(ry, rx),
        pg,
      ),
      bindings: [xw.bind, { buffer: w.buffer }, ...(bias ? [{ buffer: bias.buffer }] : []), yw.bind],
      workgroups: wg,
    });
  });
}

// ---------------- backward-data ----------------

// uniforms: Cc, c0, Oc, o0, Ctot, H, W, Ho, Wo, xBS, gBS, xShift, gShift, accum, QB (blocks of 4 per phase row)
const backwardDataKernel = memoKernel(backwardDataKernelSource);
function backwardDataKernelSource(f16: boolean, ad: FloatDType): string {
  const J = [0, 1, 2, 3];
  return /* wgsl */ `${enableF16(f16 ? 'f16' : 'f32', ad)}
struct P { Cc: u32, c0: u32, Oc: u32, o0: u32, Ctot: u32, H: u32, W: u32, Ho: u32, Wo: u32, xBS: u32, gBS: u32, xShift: u32, gShift: u32, accum: u32, QB: u32, _0: u32, ${GEOM_FIELDS} }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> G: array<${storageType(ad)}>;
@group(0) @binding(2) var<storage, read> WT: array<${f16 ? 'f16' : 'f32'}>;
@group(0) @binding(3) var<storage, read_write> DX: array<${storageType(ad)}>;
@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  ${GEOM_LETS}
  // gid.x enumerates (iy, stride phase px, block qb of 4 pixels ix = px + SW * (4 qb + j))
  let qb = gid.x % u.QB;
  let t = gid.x / u.QB;
  let px = t % u32(SW);
  let iy = t / u32(SW);
  let cl = gid.y * 4u;
  let n = gid.z;
  if (iy >= u.H || cl >= u.Cc) { return; }
  let ix = vec4<u32>(px + u32(SW) * 4u * qb) + vec4<u32>(0u, 1u, 2u, 3u) * u32(SW);
  let colOk = ix < vec4<u32>(u.W);
  let HoWo = u.Ho * u.Wo;
  let gb = u.gShift + n * u.gBS;
  let cg = vec4<u32>(u.c0) + min(vec4<u32>(cl) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(u.Cc - 1u));
  let wrow = (u.o0 * u.Ctot + cg) * KHW;
  let wo = u.Ctot * KHW;
  var acc0 = vec4<f32>(0.0); var acc1 = vec4<f32>(0.0); var acc2 = vec4<f32>(0.0); var acc3 = vec4<f32>(0.0);
  let ky0 = (i32(iy) + PT) % SH;
  let kx0 = (i32(px) + PL) % SW;
  for (var ky = ky0; ky < KH; ky += SH) {
    let ny = i32(iy) + PT - ky;
    if (ny < 0) { break; }
    let oy = u32(ny / SH);
    if (oy >= u.Ho) { continue; }
    for (var kx = kx0; kx < KW; kx += SW) {
      let nx = vec4<i32>(ix) + (PL - kx);
      let ox = nx / SW;
      let ok = colOk & (nx >= vec4<i32>(0)) & (ox < vec4<i32>(i32(u.Wo)));
      let m = select(vec4<f32>(0.0), vec4<f32>(1.0), ok);
      let a = vec4<u32>(select(vec4<i32>(0), ox, ok)) + (gb + oy * u.Wo);
      let wk = wrow + u32(ky * KW + kx);
      for (var o = 0u; o < u.Oc; o++) {
        let go = o * HoWo;
        let gv = vec4<f32>(${['x', 'y', 'z', 'w'].map((c) => widen(ad, `G[a.${c} + go]`)).join(', ')}) * m;
        let wc = wk + o * wo;
        acc0 = fma(vec4<f32>(f32(WT[wc.x])), gv, acc0);
        acc1 = fma(vec4<f32>(f32(WT[wc.y])), gv, acc1);
        acc2 = fma(vec4<f32>(f32(WT[wc.z])), gv, acc2);
        acc3 = fma(vec4<f32>(f32(WT[wc.w])), gv, acc3);
      }
    }
  }
  let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
  for (var i = 0u; i < 4u; i++) {
    if (cl + i >= u.Cc) { break; }
    let base = u.xShift + n * u.xBS + (cl + i) * u.H * u.W + iy * u.W;
    let v = accs[i];
    ${J.map((j) => `if (colOk[${j}]) { let k = base + ix[${j}]; DX[k] = ${narrow(ad, `select(v[${j}], v[${j}] + ${widen(ad, 'DX[k]')}, u.accum != 0u)`)}; }`).join('\n    ')}
  }
}`;
}

function backwardDataRaw(gy: Tensor, w: Tensor, g: Geom): Tensor {
  const { N, C, H, W, O, Ho, Wo, SW } = g;
  // dY has y's dtype, which is x's: dX takes it
  const ad = gy.dtype as FloatDType;
  const dx = Tensor.empty([N, C, H, W], ad, 'conv2d_dx');
  if (dx.size === 0) return dx;
  checkWeightBinding('conv2d backward', w);
  const wt = winogradTile(g, ad);
  if (wt) {
    winogradBackwardData(gy, w, g, dx, wt);
    return dx;
  }
  if (useSubgroup(C)) {
    backwardDataSg(gy, w, g, dx);
    return dx;
  }
  if (conv2dVariant() === 'shared' && g.SH === 1 && g.SW === 1) {
    sharedConv(gy, w, undefined, dx, g, true);
    return dx;
  }
  const r = rt();
  const code = backwardDataKernel(w.dtype === 'f16', ad);
  const QB = Math.ceil(Math.ceil(W / SW) / 4);
  eachWindow('conv2d backward', dx, gy, ({ nn, ow: xw, o0: c0, oc: cc, iw: gw, i0: o0, ic: oc }) => {
    const wg: [number, number, number] = [Math.ceil((H * SW * QB) / 8), Math.ceil(cc / 32), nn];
    checkGrid('conv2d backward', wg);
    r.dispatch({
      name: 'conv2d_bwd_data',
      code,
      uniforms: geomUniforms(new Uniforms().u32(cc, c0, oc, o0, C, H, W, Ho, Wo, C * H * W, O * Ho * Wo, xw.shift, gw.shift, o0 > 0 ? 1 : 0, QB, 0), g),
      bindings: [gw.bind, { buffer: w.buffer }, xw.bind],
      workgroups: wg,
    });
  });
  return dx;
}

// ---------------- backward-weight ----------------

// uniforms: Cc, c0, Oc, o0, Ctot, H, W, Ho, Wo, nb, xBS, gBS, xShift, gShift, accum
const backwardWeightKernel = memoKernel(backwardWeightKernelSource);
function backwardWeightKernelSource(ad: FloatDType): string {
  return /* wgsl */ `${enableF16(ad)}
struct P { Cc: u32, c0: u32, Oc: u32, o0: u32, Ctot: u32, H: u32, W: u32, Ho: u32, Wo: u32, nb: u32, xBS: u32, gBS: u32, xShift: u32, gShift: u32, accum: u32, _0: u32, ${GEOM_FIELDS} }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<${storageType(ad)}>;
@group(0) @binding(2) var<storage, read> G: array<${storageType(ad)}>;
@group(0) @binding(3) var<storage, read_write> DW: array<f32>;
@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  ${GEOM_LETS}
  let cl = gid.x * 4u;
  let ol = gid.y * 4u;
  let kk = i32(gid.z);
  if (cl >= u.Cc || ol >= u.Oc) { return; }
  let ky = kk / KW;
  let kx = kk % KW;
  // output positions whose tap (ky, kx) lands inside the input
  let oyLo = max(0, (PT - ky + SH - 1) / SH);
  // floor division: a negative numerator means no output row reads this tap
  let oyHi = min(i32(u.Ho), select((i32(u.H) - 1 + PT - ky) / SH + 1, 0, i32(u.H) - 1 + PT - ky < 0));
  let oxLo = max(0, (PL - kx + SW - 1) / SW);
  let oxHi = min(i32(u.Wo), select((i32(u.W) - 1 + PL - kx) / SW + 1, 0, i32(u.W) - 1 + PL - kx < 0));
  let HW = u.H * u.W;
  let HoWo = u.Ho * u.Wo;
  let xc = vec4<u32>(u.xShift) + min(vec4<u32>(cl) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(u.Cc - 1u)) * HW;
  let gc = vec4<u32>(u.gShift) + min(vec4<u32>(ol) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(u.Oc - 1u)) * HoWo;
  var acc0 = vec4<f32>(0.0); var acc1 = vec4<f32>(0.0); var acc2 = vec4<f32>(0.0); var acc3 = vec4<f32>(0.0);
  for (var n = 0u; n < u.nb; n++) {
    for (var oy = oyLo; oy < oyHi; oy++) {
      let iy = oy * SH - PT + ky;
      let xr = vec4<u32>(u32(i32(n * u.xBS) + iy * i32(u.W) + kx - PL)) + xc;
      let gr = vec4<u32>(n * u.gBS + u32(oy) * u.Wo) + gc;
      for (var ox = oxLo; ox < oxHi; ox++) {
        let xi = xr + u32(ox * SW);
        let gi = gr + u32(ox);
        let xv = vec4<f32>(${['x', 'y', 'z', 'w'].map((c) => widen(ad, `X[xi.${c}]`)).join(', ')});
        ${['x', 'y', 'z', 'w'].map((c, i) => `acc${i} = fma(vec4<f32>(${widen(ad, `G[gi.${c}]`)}), xv, acc${i});`).join('\n        ')}
      }
    }
  }
  let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
  for (var i = 0u; i < 4u; i++) {
    if (ol + i >= u.Oc) { break; }
    let v = accs[i];
    for (var j = 0u; j < 4u; j++) {
      if (cl + j >= u.Cc) { break; }
      let k = ((u.o0 + ol + i) * u.Ctot + u.c0 + cl + j) * KHW + u32(kk);
      DW[k] = select(v[j], v[j] + DW[k], u.accum != 0u);
    }
  }
}`;
}

/** dW in w's dtype: summed in f32 (over batch chunks, tile chunks), an f16 weight's gradient rounded once at the end */
function backwardWeightRaw(gy: Tensor, x: Tensor, w: Tensor, g: Geom): Tensor {
  const dw = backwardWeightF32(gy, x, g);
  if (w.dtype !== 'f16') return dw;
  const h = cast(dw, 'f16');
  dw.dispose();
  return h;
}

function backwardWeightF32(gy: Tensor, x: Tensor, g: Geom): Tensor {
  const { N, C, H, W, O, KH, KW, Ho, Wo } = g;
  const ad = x.dtype as FloatDType;
  const dw = Tensor.empty([O, C, KH, KW], 'f32', 'conv2d_dw');
  if (dw.size === 0) return dw;
  const r = rt();
  if (N === 0) {
    r.dispatch(zeroSpec(dw));
    return dw;
  }
  checkWeightBinding('conv2d backward', dw);
  const wt = winogradTile(g, ad);
  if (wt) {
    winogradBackwardWeight(gy, x, g, dw, wt);
    return dw;
  }
  if (useSubgroup(O) && backwardWeightSg(gy, x, g, dw)) return dw;
  const code = backwardWeightKernel(ad);
  eachWindow('conv2d backward', gy, x, ({ n0, nn, ow: gw, o0, oc, iw: xw, i0: c0, ic: cc }) => {
    const wg: [number, number, number] = [Math.ceil(cc / 32), Math.ceil(oc / 32), KH * KW];
    checkGrid('conv2d backward', wg);
    r.dispatch({
      name: 'conv2d_bwd_weight',
      code,
      uniforms: geomUniforms(new Uniforms().u32(cc, c0, oc, o0, C, H, W, Ho, Wo, nn, C * H * W, O * Ho * Wo, xw.shift, gw.shift, n0 > 0 ? 1 : 0, 0), g),
      bindings: [xw.bind, gw.bind, { buffer: dw.buffer }],
      workgroups: wg,
    });
  });
  return dw;
}

// ---------------- subgroup-broadcast variant (CPU adapters) ----------------
// On lavapipe every storage load is executed lane by lane (a bounds check and a scalar load per lane), while
// arithmetic runs 8 lanes wide, so a kernel is fast when each loaded value feeds many FMAs. Here a
// workgroup is one subgroup of SG lanes computing a 32-row x (SG*4)-position tile: each lane loads the weights
// of 4 consecutive rows (one vec4 of a repacked copy, or 4 scalars of the weight tensor itself where the
// image is too small for the repack to pay off: see "Weight packing") and every row's weight reaches all
// lanes through subgroupBroadcast; each lane loads its own 4 input values per reduction step. That is 32x4
// FMAs per lane for 8 loaded components. The positions of a tile run over (batch item, pixel), so small
// images still fill it. Shapes, kernel size, stride and padding are uniforms (one pipeline per mode, weight
// dtype, bias and packing).
//  - mode 'fwd': rows = output channels, positions = output pixels, reduction = input channels x taps.
//  - mode 'bwd': rows = input channels, positions = input pixels of one stride phase (py, px) per workgroup
//    (the phase is part of workgroup_id.z), so the taps that reach them are uniform: ky = (py + pt) mod sh
//    stepping by sh, and likewise kx; the source is dY at oy = (iy + pt - ky) / sh.

const SG = 8;
const SG_R = 32; // rows per workgroup (4 per lane)
const SG_T = 4; // positions per lane
export type ConvVariant = 'subgroup' | 'register' | 'shared';
let forcedVariant: ConvVariant | null = null;
/** Force a conv2d tiling (tests and benchmarks); null restores the per-adapter default. */
export function setConv2dVariant(v: ConvVariant | null) {
  forcedVariant = v;
}
export function conv2dVariant(): ConvVariant {
  if (forcedVariant) return forcedVariant;
  const g = rt().gpu;
  return g.adapterClass === 'cpu' && subgroupsUsable() ? 'subgroup' : 'register';
}
/** Whether a pass with `rows` GEMM rows (fwd/bwd-weight: output channels, bwd-data: input channels) takes the
 * subgroup tiling: by default not for fewer than 8 rows (a 32-row tile would be mostly padding). */
function useSubgroup(rows: number): boolean {
  if (forcedVariant) return forcedVariant === 'subgroup';
  return conv2dVariant() === 'subgroup' && rows >= 8;
}

/** The tilings this adapter can run. */
export function conv2dVariants(): ConvVariant[] {
  return subgroupsUsable() ? ['subgroup', 'register', 'shared'] : ['register', 'shared'];
}
function subgroupsUsable() {
  const g = rt().gpu;
  return rt().features.has('subgroups') && g.subgroupMinSize === SG && g.subgroupMaxSize === SG;
}

// Winograd (see winograd.ts) for 3x3 stride-1 convolutions, all three passes. By default on the 'subgroup'
// adapters (CPUs, where multiply-adds are the cost) for at least 16 input and output channels: F(4x4, 3x3)
// (4x fewer multiply-adds) from 32 output tiles of 4x4 (N x ceil(Ho / 4) x ceil(Wo / 4)), else F(2x2, 3x3) (2.25x
// fewer) from 32 tiles of 2x2, else direct. The weight transform costs about as much as the GEMMs over 20 tiles
// and the GEMM's 32-column tiles are part empty below 32 tiles, so F(4x4) lost at 8x8 images (0.55x) and won
// 1.6-2.6x from 16x16 up; F(2x2) covers the 8x8 level (batch 2), and 4x4 images stay direct (measured on
// lavapipe). GPUs keep the direct kernels.
export type WinogradMode = 'auto' | 'always' | 'always-2x2' | 'never';
let winograd: WinogradMode = 'auto';
/** Winograd for 3x3 stride-1 convolutions: 'auto' (CPU adapters, tile by size), 'always' (4x4 tiles), 'always-2x2', 'never' (tests, benchmarks). */
export function setConv2dWinograd(m: WinogradMode) {
  winograd = m;
}
const WINOGRAD_MIN_TILES = 32;
/** The Winograd output tile for this convolution with activations of dtype `ad`, or 0 for the direct kernels. */
function winogradTile(g: Geom, ad: FloatDType): 0 | WinogradTile {
  if (winograd === 'never' || g.KH !== 3 || g.KW !== 3 || g.SH !== 1 || g.SW !== 1 || !winogradFits(g, DTYPE_BYTES[ad])) return 0;
  if (winograd === 'always') return 4;
  if (winograd === 'always-2x2') return 2;
  if (conv2dVariant() !== 'subgroup' || Math.min(g.C, g.O) < 16) return 0;
  const tiles = (m: number) => g.N * Math.ceil(g.Ho / m) * Math.ceil(g.Wo / m);
  return tiles(4) >= WINOGRAD_MIN_TILES ? 4 : tiles(2) >= WINOGRAD_MIN_TILES ? 2 : 0;
}

// Weight packing. Where the image is large, the weights are first repacked to WR[(tap * K + k) * Rp + r]
// (rows padded to a multiple of 32) so that a lane's 4 rows are one contiguous vec4 and a reduction step
// reads 128 contiguous bytes; where it is small, the repack would cost more than it saves and the kernel reads
// the [O, C, kh, kw] tensor directly (4 scalar loads a lane, 32 cache lines a step).
export type WeightPacking = 'auto' | 'always' | 'never';
let packing: WeightPacking = 'auto';
/** Repack the weights before the 'subgroup' tiling's forward and backward-data passes: 'auto' (by size), 'always', 'never' (tests, benchmarks). */
export function setConv2dWeightPacking(p: WeightPacking) {
  packing = p;
}
/** positions per dispatch (batch items x output pixels) from which the repack pays off (measured on lavapipe) */
const PACK_MIN_POSITIONS = 1024;
const packWeights = (positions: number) => packing === 'always' || (packing === 'auto' && positions >= PACK_MIN_POSITIONS);

// One invocation per (k, r) walks the taps: reads KK contiguous weights, writes KK vec4 lanes; a single integer
// division per invocation (CPU adapters scalarize vector integer division, which made a per-element version of
// this kernel cost ~20 ns a weight). Invocations past K * Rp write the bias block (zero past rCount).
const repackKernel = memoKernel(repackKernelSource);
function repackKernelSource(f16: boolean, mode: 'fwd' | 'bwd', bias: boolean) {
  return /* wgsl */ `${f16 ? 'enable f16;' : ''}
${WG_INDEX}
struct P { KRp: u32, rCount: u32, rStart: u32, Rp: u32, K: u32, C: u32, KK: u32, _0: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> W: array<${f16 ? 'f16' : 'f32'}>;
${bias ? '@group(0) @binding(2) var<storage, read> BIAS: array<f32>;' : ''}
@group(0) @binding(${bias ? 3 : 2}) var<storage, read_write> WR: array<f32>;
${flatMain('i', 'u.KRp + u.Rp')}
  let k = i / u.Rp;
  let r = i - k * u.Rp;
  let ok = r < u.rCount;
  let rg = u.rStart + min(r, u.rCount - 1u);
  if (i >= u.KRp) { WR[u.KK * u.KRp + r] = ${bias ? 'select(0.0, BIAS[rg], ok)' : '0.0'}; return; }
  ${mode === 'fwd' ? 'let o = rg; let c = k;' : 'let o = k; let c = rg;'}
  let src = (o * u.C + c) * u.KK;
  var dst = i;
  for (var tap = 0u; tap < u.KK; tap++) {
    WR[dst] = select(0.0, f32(W[src + tap]), ok);
    dst += u.KRp;
  }
}`;
}

/** Repacked weights (and bias) for rows [rStart, rStart + rCount), padded to a multiple of SG_R rows. */
function repack(w: Tensor, bias: Tensor | undefined, mode: 'fwd' | 'bwd', rStart: number, rCount: number, g: Geom) {
  const Rp = Math.ceil(rCount / SG_R) * SG_R;
  const K = mode === 'fwd' ? g.C : g.O;
  const KK = g.KH * g.KW;
  const n = KK * K * Rp;
  const wr = Tensor.empty([n + Rp], 'f32', 'conv2d_wrepack');
  if (wr.byteLength > rt().maxBindingBytes) {
    wr.dispose();
    throw new ShapeError(`conv2d: repacked weight of ${(n + Rp) * 4} bytes exceeds the storage binding limit`);
  }
  rt().dispatch({
    name: 'conv2d_repack',
    code: repackKernel(w.dtype === 'f16', mode, !!bias),
    uniforms: new Uniforms().u32(K * Rp, rCount, rStart, Rp, K, g.C, KK, 0).done(),
    bindings: [{ buffer: w.buffer }, ...(bias ? [{ buffer: bias.buffer }] : []), { buffer: wr.buffer }],
    workgroups: grid(Math.ceil((K * Rp + Rp) / 64)),
  });
  return { wr, Rp, biasOff: n };
}

const sgGemmKernel = memoKernel(sgGemmKernelSource);
function sgGemmKernelSource(mode: 'fwd' | 'bwd', f16: boolean, bias: boolean, packed: boolean, ad: FloatDType): string {
  if (SG_R !== 4 * SG) throw new Error('conv2d: the subgroup kernel assumes 4 rows per lane');
  const R = [...Array(SG_R).keys()];
  const T = [...Array(SG_T).keys()];
  const Q = [...Array(SG_T / 4).keys()];
  const J = [0, 1, 2, 3];
  // row r lives in component r % 4 of lane r / 4
  const bc = (name: string, r: number) => `subgroupBroadcast(${name}[${r % 4}], ${r >> 2}u)`;
  // one flat loop over the taps that reach this workgroup's pixels
  const taps =
    mode === 'fwd'
      ? `let nkx = u.KW;
  let ntap = u.KH * u.KW;
  for (var kk = 0; kk < ntap; kk++) {
    {
      let ky = kk / nkx;
      let kx = kk % nkx;
      ${T.map((t) => `let sy${t} = ya${t} + ky; let sx${t} = xb${t} + kx;`).join(' ')}`
      : `let ky0 = (py + u.PT) % u.SH;
  let kx0 = (px + u.PL) % u.SW;
  let nkx = (u.KW - kx0 + u.SW - 1) / u.SW;
  let ntap = ((u.KH - ky0 + u.SH - 1) / u.SH) * nkx;
  for (var kk = 0; kk < ntap; kk++) {
    {
      let ky = ky0 + (kk / nkx) * u.SH;
      let kx = kx0 + (kk % nkx) * u.SW;
      let dy = (py + u.PT - ky) / u.SH;
      let dx = (px + u.PL - kx) / u.SW;
      ${T.map((t) => `let sy${t} = ya${t} + dy; let sx${t} = xb${t} + dx;`).join(' ')}`;
  return /* wgsl */ `enable subgroups;${f16 || ad === 'f16' ? '\nenable f16;' : ''}
struct P {
  K: u32, kOff: u32, rStart: u32, Rc: u32,
  rowStride: u32, kStride: u32, srcH: u32, srcW: u32,
  sBS: u32, sShift: u32, outH: u32, outW: u32,
  oBS: u32, oShift: u32, accum: u32, biasOff4: u32,
  KH: i32, KW: i32, SH: i32, SW: i32,
  PT: i32, PL: i32, nItems: u32, _2: i32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> SRC: array<${storageType(ad)}>;
${
  packed
    ? `// repacked weights: vec4 (tap * kStride + kOff + k) * rowStride + r / 4 holds rows r .. r + 3, bias at biasOff4
@group(0) @binding(2) var<storage, read> WR: array<vec4<f32>>;`
    : `// weight element of row r (output channel in 'fwd', input channel in 'bwd'), reduction channel k and tap:
// WT[(rStart + r) * rowStride + (kOff + k) * kStride + tap]
@group(0) @binding(2) var<storage, read> WT: array<${f16 ? 'f16' : 'f32'}>;
${bias ? '@group(0) @binding(3) var<storage, read> BIAS: array<f32>;' : ''}`
}
@group(0) @binding(${bias && !packed ? 4 : 3}) var<storage, read_write> Y: array<${storageType(ad)}>;
@compute @workgroup_size(${SG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
  ${
    mode === 'fwd'
      ? `let PA = u.outH;
  let PB = u.outW;`
      : `let ph = i32(wid.z);
  let py = ph / u.SW;
  let px = ph % u.SW;
  let PA = (u.outH + u32(u.SH - 1 - py)) / u32(u.SH);
  let PB = (u.outW + u32(u.SW - 1 - px)) / u32(u.SW);`
  }
  // positions run over (batch item, pixel) together, so that small images still fill the 32-position tiles
  let NP = PA * PB;
  let NT = u.nItems * NP;
  let p0 = wid.x * ${SG * SG_T}u;
  let srcPlane = u.srcH * u.srcW;
  ${T.map(
    (t) => `let pi${t} = p0 + ${t * SG}u + lane;
  let gc${t} = min(pi${t}, max(NT, 1u) - 1u);
  let n${t} = gc${t} / max(NP, 1u);
  let pc${t} = gc${t} - n${t} * NP;
  let sBase${t} = u.sShift + n${t} * u.sBS;
  let a${t} = pc${t} / PB;
  let b${t} = pc${t} % PB;
  ${
    mode === 'fwd'
      ? `let ya${t} = i32(a${t}) * u.SH - u.PT; let xb${t} = i32(b${t}) * u.SW - u.PL; let oa${t} = n${t} * u.oBS + a${t} * u.outW + b${t};`
      : `let ya${t} = i32(a${t}); let xb${t} = i32(b${t}); let oa${t} = n${t} * u.oBS + (u32(py) + u32(u.SH) * a${t}) * u.outW + u32(px) + u32(u.SW) * b${t};`
  }`,
  ).join('\n  ')}
  ${R.map((r) => T.map((t) => `var c${r}_${t} = 0.0;`).join(' ')).join('\n  ')}
  // this lane's 4 weight rows (clamped: rows past Rc are computed but never stored)
  let rl = wid.y * ${SG_R}u + lane * 4u;
  ${J.map((j) => `let rr${j} = u.rStart + min(rl + ${j}u, u.Rc - 1u);`).join(' ')}
  let Hs = i32(u.srcH);
  let Ws = i32(u.srcW);
  ${taps}
      let tap = u32(ky * u.KW + kx);
      ${T.map(
        (t) => `let ok${t} = sy${t} >= 0 && sy${t} < Hs && sx${t} >= 0 && sx${t} < Ws;
      let m${t} = select(0.0, 1.0, ok${t});
      let s${t} = sBase${t} + u32(select(0, sy${t} * Ws + sx${t}, ok${t}));`,
      ).join('\n      ')}
      ${
        packed
          ? `let wi0 = (tap * u.kStride + u.kOff) * u.rowStride + wid.y * ${SG_R / 4}u + lane;`
          : `let wt = u.kOff * u.kStride + tap;
      ${J.map((j) => `let wb${j} = rr${j} * u.rowStride + wt;`).join(' ')}`
      }
      for (var k = 0u; k < u.K; k++) {
        ${
          packed
            ? 'let wv = WR[wi0 + k * u.rowStride];'
            : `let ko = k * u.kStride;
        let wv = vec4<f32>(${J.map((j) => `f32(WT[wb${j} + ko])`).join(', ')});`
        }
        let so = k * srcPlane;
        ${T.map((t) => `let x${t} = ${widen(ad, `SRC[s${t} + so]`)} * m${t};`).join(' ')}
        ${R.map(
          (r) =>
            `{ let w = ${bc('wv', r)}; ${T.map((t) => `c${r}_${t} = fma(w, x${t}, c${r}_${t});`).join(' ')} }`,
        ).join('\n        ')}
      }
    }
  }
  // the epilogue runs as a loop over rows (small code); the accumulators are staged in a private array
  let bv = ${
    !bias
      ? 'vec4<f32>(0.0)'
      : packed
        ? `select(vec4<f32>(0.0), WR[u.biasOff4 + wid.y * ${SG_R / 4}u + lane], u.accum == 0u)`
        : `select(vec4<f32>(0.0), vec4<f32>(${J.map((j) => `BIAS[rr${j}]`).join(', ')}), u.accum == 0u)`
  };
  var acc: array<vec4<f32>, ${(SG_R * SG_T) / 4}>;
  ${R.map((r) => `{ let bb = ${bc('bv', r)}; ${Q.map((q) => `acc[${(r * SG_T) / 4 + q}] = vec4<f32>(${[0, 1, 2, 3].map((j) => `c${r}_${4 * q + j}`).join(', ')}) + bb;`).join(' ')} }`).join('\n  ')}
  let rb = wid.y * ${SG_R}u;
  let outPlane = u.outH * u.outW;
  let oBase = u.oShift + rb * outPlane;
  let rn = min(${SG_R}u, u.Rc - rb);
  for (var r = 0u; r < rn; r++) {
    ${Q.map((q) => `let v${q} = acc[r * ${SG_T / 4}u + ${q}u];`).join(' ')}
    let ro = oBase + r * outPlane;
    ${T.map((t) => `if (pi${t} < NT) { let q = ro + oa${t}; Y[q] = ${narrow(ad, `select(v${t >> 2}[${t % 4}], v${t >> 2}[${t % 4}] + ${widen(ad, 'Y[q]')}, u.accum != 0u)`)}; }`).join('\n    ')}
  }
}`;
}

function sgUniforms(o: {
  K: number; kOff: number; rStart: number; Rc: number; rowStride: number; kStride: number; srcH: number; srcW: number; sBS: number;
  sShift: number; outH: number; outW: number; oBS: number; oShift: number; accum: boolean; g: Geom; biasOff4?: number; nItems: number;
}) {
  const g = o.g;
  return new Uniforms()
    .u32(o.K, o.kOff, o.rStart, o.Rc, o.rowStride, o.kStride, o.srcH, o.srcW, o.sBS, o.sShift, o.outH, o.outW, o.oBS, o.oShift, o.accum ? 1 : 0, o.biasOff4 ?? 0)
    .i32(g.KH, g.KW, g.SH, g.SW, g.PT, g.PL)
    .u32(o.nItems, 0)
    .done();
}

function forwardSg(x: Tensor, w: Tensor, bias: Tensor | undefined, g: Geom, y: Tensor) {
  const { N, C, H, W, O, Ho, Wo, KH, KW } = g;
  const r = rt();
  const KK = KH * KW;
  const ad = x.dtype as FloatDType;
  const { nb, ca: cb, cb: ob } = plan('conv2d', N, C, H * W, O, Ho * Wo, DTYPE_BYTES[ad]);
  const packed = packWeights(Math.min(nb, N) * Ho * Wo);
  const code = sgGemmKernel('fwd', w.dtype === 'f16', !!bias, packed, ad);
  for (let o0 = 0; o0 < O; o0 += ob) {
    const oc = Math.min(ob, O - o0);
    const wr = packed ? repack(w, bias, 'fwd', o0, oc, g) : null;
    for (let n0 = 0; n0 < N; n0 += nb) {
      const nn = Math.min(nb, N - n0);
      const yw = channelWindow(y, n0, nn, o0, oc);
      for (let c0 = 0; c0 < C; c0 += cb) {
        const cc = Math.min(cb, C - c0);
        const xw = channelWindow(x, n0, nn, c0, cc);
        const wg: [number, number, number] = [Math.ceil((nn * Ho * Wo) / (SG * SG_T)), Math.ceil(oc / SG_R), 1];
        checkGrid('conv2d', wg);
        r.dispatch({
          name: 'conv2d_sg',
          code,
          uniforms: sgUniforms({
            K: cc, kOff: c0, rStart: o0, Rc: oc, rowStride: wr ? wr.Rp / 4 : C * KK, kStride: wr ? C : KK, srcH: H, srcW: W, sBS: C * H * W,
            sShift: xw.shift, outH: Ho, outW: Wo, oBS: O * Ho * Wo, oShift: yw.shift, accum: c0 > 0, g, biasOff4: wr ? wr.biasOff / 4 : 0, nItems: nn,
          }),
          bindings: [xw.bind, ...(wr ? [{ buffer: wr.wr.buffer }] : [{ buffer: w.buffer }, ...(bias ? [{ buffer: bias.buffer }] : [])]), yw.bind],
          workgroups: wg,
        });
      }
    }
    wr?.wr.dispose();
  }
}

function backwardDataSg(gy: Tensor, w: Tensor, g: Geom, dx: Tensor) {
  const { N, C, H, W, O, Ho, Wo, SH, SW, KH, KW } = g;
  const r = rt();
  const KK = KH * KW;
  const ad = gy.dtype as FloatDType;
  const { nb, ca: cb, cb: ob } = plan('conv2d backward', N, C, H * W, O, Ho * Wo, DTYPE_BYTES[ad]);
  const phasePlane = Math.ceil(H / SH) * Math.ceil(W / SW);
  const packed = packWeights(Math.min(nb, N) * H * W);
  const code = sgGemmKernel('bwd', w.dtype === 'f16', false, packed, ad);
  for (let c0 = 0; c0 < C; c0 += cb) {
    const cc = Math.min(cb, C - c0);
    const wr = packed ? repack(w, undefined, 'bwd', c0, cc, g) : null;
    for (let n0 = 0; n0 < N; n0 += nb) {
      const nn = Math.min(nb, N - n0);
      const xw = channelWindow(dx, n0, nn, c0, cc);
      for (let o0 = 0; o0 < O; o0 += ob) {
        const oc = Math.min(ob, O - o0);
        const gw = channelWindow(gy, n0, nn, o0, oc);
        const wg: [number, number, number] = [Math.ceil((nn * phasePlane) / (SG * SG_T)), Math.ceil(cc / SG_R), SH * SW];
        checkGrid('conv2d backward', wg);
        r.dispatch({
          name: 'conv2d_sg_bwd_data',
          code,
          uniforms: sgUniforms({
            K: oc, kOff: o0, rStart: c0, Rc: cc, rowStride: wr ? wr.Rp / 4 : KK, kStride: wr ? O : C * KK, srcH: Ho, srcW: Wo, sBS: O * Ho * Wo,
            sShift: gw.shift, outH: H, outW: W, oBS: C * H * W, oShift: xw.shift, accum: o0 > 0, g, nItems: nn,
          }),
          bindings: [gw.bind, { buffer: wr ? wr.wr.buffer : w.buffer }, xw.bind],
          workgroups: wg,
        });
      }
    }
    wr?.wr.dispose();
  }
}

// dW[o, c, tap]: rows = output channels (4 per lane, shared by broadcast), positions = input channels (4 per
// lane), reduction over the output pixels where the workgroup's tap (workgroup_id.z) lands inside the input.
// dY and X are first transposed to [n, pixel, channel] (channels padded to a multiple of 4) so that a lane's 4
// rows and its 4 columns are one vec4 load each.
const sgWeightKernel = memoKernel(sgWeightKernelSource);
function sgWeightKernelSource(): string {
  if (SG_R !== 4 * SG || SG_T !== 4) throw new Error('conv2d: the weight-gradient kernel assumes one vec4 of rows and of columns per lane');
  const R = [...Array(SG_R).keys()];
  const T = [...Array(SG_T).keys()];
  const Q = [...Array(SG_T / 4).keys()];
  return /* wgsl */ `enable subgroups;
struct P {
  Cc: u32, c0: u32, Ctot: u32, Oc: u32,
  o0: u32, H: u32, W: u32, Ho: u32,
  Wo: u32, nb: u32, xBS: u32, Rp4: u32,
  _x: u32, _g: u32, accum: u32, _0: u32,
  KH: i32, KW: i32, SH: i32, SW: i32,
  PT: i32, PL: i32, _1: i32, _2: i32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> XT: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> GT: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> DW: array<f32>;
@compute @workgroup_size(${SG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
  let cb = wid.x * ${SG * SG_T}u;
  let Rp4 = u.Rp4;
  let ob = wid.y * ${SG_R}u;
  let tap = i32(wid.z);
  let ky = tap / u.KW;
  let kx = tap % u.KW;
  let oyLo = max(0, (u.PT - ky + u.SH - 1) / u.SH);
  // floor division: a negative numerator means no output row reads this tap
  let oyHi = min(i32(u.Ho), select((i32(u.H) - 1 + u.PT - ky) / u.SH + 1, 0, i32(u.H) - 1 + u.PT - ky < 0));
  let oxLo = max(0, (u.PL - kx + u.SW - 1) / u.SW);
  let oxHi = min(i32(u.Wo), select((i32(u.W) - 1 + u.PL - kx) / u.SW + 1, 0, i32(u.W) - 1 + u.PL - kx < 0));
  let HW = u.H * u.W;
  let HoWo = u.Ho * u.Wo;
  let Cp4 = u.xBS;
  ${T.map((t) => `let cl${t} = cb + lane * ${SG_T}u + ${t}u;`).join(' ')}
  let xq = wid.x * ${(SG * SG_T) / 4}u + lane * ${SG_T / 4}u;
  let wRow = wid.y * ${SG_R / 4}u + lane;
  ${R.map((r) => T.map((t) => `var c${r}_${t} = 0.0;`).join(' ')).join('\n  ')}
  for (var n = 0u; n < u.nb; n++) {
    for (var oy = oyLo; oy < oyHi; oy++) {
      let iy = oy * u.SH - u.PT + ky;
      var xo = (n * HW + u32(iy * i32(u.W) + oxLo * u.SW - u.PL + kx)) * Cp4 + xq;
      var go = (n * HoWo + u32(oy) * u.Wo + u32(oxLo)) * Rp4 + wRow;
      for (var ox = oxLo; ox < oxHi; ox++) {
        let gv = GT[go];
        ${Q.map((q) => `let xv${q} = XT[xo + ${q}u];`).join(' ')}
        ${T.map((t) => `let x${t} = xv${t >> 2}[${t % 4}];`).join(' ')}
        ${R.map(
          (r) => `{ let g = subgroupBroadcast(gv[${r % 4}], ${r >> 2}u); ${T.map((t) => `c${r}_${t} = fma(g, x${t}, c${r}_${t});`).join(' ')} }`,
        ).join('\n        ')}
        xo += u32(u.SW) * Cp4;
        go += Rp4;
      }
    }
  }
  let KK = u32(u.KH * u.KW);
  var acc: array<vec4<f32>, ${(SG_R * SG_T) / 4}>;
  ${R.map((r) => Q.map((q) => `acc[${(r * SG_T) / 4 + q}] = vec4<f32>(${[0, 1, 2, 3].map((j) => `c${r}_${4 * q + j}`).join(', ')});`).join(' ')).join('\n  ')}
  let rn = min(${SG_R}u, u.Oc - ob);
  for (var r = 0u; r < rn; r++) {
    ${Q.map((q) => `let v${q} = acc[r * ${SG_T / 4}u + ${q}u];`).join(' ')}
    let ro = ((u.o0 + ob + r) * u.Ctot + u.c0) * KK + u32(tap);
    ${T.map((t) => `if (cl${t} < u.Cc) { let q = ro + cl${t} * KK; DW[q] = select(v${t >> 2}[${t % 4}], v${t >> 2}[${t % 4}] + DW[q], u.accum != 0u); }`).join('\n    ')}
  }
}`;
}

// GT[n, p, r] = G[n, r, p] for the rows of one window, padded with zero rows to a multiple of 4 (the last row
// block of the weight kernel may read the next pixel's rows; those rows are never stored). One invocation per
// (n, p) walks the rows: neighbouring lanes read neighbouring pixels and each writes whole vec4s, with a
// single integer division per invocation (a division per element made this transpose cost as much as the
// convolution that follows it on CPU adapters, where vector integer division is scalarized).
const transposeRowsKernel = memoKernel((ad: FloatDType) => {
  const ld = (e: string) => widen(ad, e);
  return /* wgsl */ `${enableF16(ad)}
${WG_INDEX}
struct P { nP: u32, Rp4: u32, rc: u32, P: u32, gBS: u32, shift: u32, _0: u32, _1: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> G: array<${storageType(ad)}>;
@group(0) @binding(2) var<storage, read_write> GT: array<vec4<f32>>;
${flatMain('i', 'u.nP')}
  let n = i / u.P;
  let p = i - n * u.P;
  let src = u.shift + n * u.gBS + p;
  let dst = i * u.Rp4;
  let full = u.rc / 4u;
  for (var q = 0u; q < full; q++) {
    let s = src + 4u * q * u.P;
    GT[dst + q] = vec4<f32>(${ld('G[s]')}, ${ld('G[s + u.P]')}, ${ld('G[s + 2u * u.P]')}, ${ld('G[s + 3u * u.P]')});
  }
  if (full < u.Rp4) {
    let r0 = 4u * full;
    var v = vec4<f32>(0.0);
    for (var j = 0u; r0 + j < u.rc; j++) { v[j] = ${ld('G[src + (r0 + j) * u.P]')}; }
    GT[dst + full] = v;
  }
}`;
});

/** GT (f32) from a window of G (f32 or f16: `ad`) */
function transposeRows(gw: { bind: BufferBinding; shift: number }, ad: FloatDType, nn: number, rc: number, P: number, gBS: number): { gt: Tensor; Rp: number } {
  const Rp = Math.ceil(rc / 4) * 4;
  const n = nn * P * Rp;
  const gt = Tensor.empty([n], 'f32', 'conv2d_gt');
  const nP = nn * P;
  if (gt.byteLength > rt().maxBindingBytes) throw new ShapeError(`conv2d backward: transposed gradient of ${gt.byteLength} bytes exceeds the storage binding limit`);
  rt().dispatch({
    name: 'conv2d_transpose_rows',
    code: transposeRowsKernel(ad),
    uniforms: new Uniforms().u32(nP, Rp / 4, rc, P, gBS, gw.shift, 0, 0).done(),
    bindings: [gw.bind, { buffer: gt.buffer }],
    workgroups: grid(Math.ceil(nP / 64)),
  });
  return { gt, Rp };
}

/** Returns false (nothing dispatched) when not even 4 rows of one dY plane fit a binding. */
function backwardWeightSg(gy: Tensor, x: Tensor, g: Geom, dw: Tensor): boolean {
  const { N, C, H, W, O, KH, KW, Ho, Wo } = g;
  const r = rt();
  const code = sgWeightKernel();
  const ad = x.dtype as FloatDType;
  // plan with rows rounded up to 4 so that the transposed dY window fits wherever the dY window does (planned
  // in f32 elements also for f16 activations: the transposed copies are f32; an f16 plane too large for an f32
  // binding goes to the register kernel, which binds the f16 windows directly)
  const O4 = Math.ceil(O / 4) * 4;
  const C4 = Math.ceil(C / 4) * 4;
  if (Math.max(H * W, Ho * Wo) > windowLimit(4)) return false;
  const p = plan('conv2d backward', N, C4, H * W, O4, Ho * Wo);
  const { nb } = p;
  if ((p.cb < 4 && O > p.cb) || (p.ca < 4 && C > p.ca)) return false;
  const ob = p.cb >= O4 ? O : Math.floor(p.cb / 4) * 4;
  const cb = p.ca >= C4 ? C : Math.floor(p.ca / 4) * 4;
  for (let n0 = 0; n0 < N; n0 += nb) {
    const nn = Math.min(nb, N - n0);
    for (let o0 = 0; o0 < O; o0 += ob) {
      const oc = Math.min(ob, O - o0);
      const gw = channelWindow(gy, n0, nn, o0, oc);
      const { gt, Rp } = transposeRows(gw, ad, nn, oc, Ho * Wo, O * Ho * Wo);
      for (let c0 = 0; c0 < C; c0 += cb) {
        const cc = Math.min(cb, C - c0);
        const xw = channelWindow(x, n0, nn, c0, cc);
        const { gt: xt, Rp: Cp } = transposeRows(xw, ad, nn, cc, H * W, C * H * W);
        const wg: [number, number, number] = [Math.ceil(cc / (SG * SG_T)), Math.ceil(oc / SG_R), KH * KW];
        checkGrid('conv2d backward', wg);
        r.dispatch({
          name: 'conv2d_sg_bwd_weight',
          code,
          uniforms: new Uniforms()
            .u32(cc, c0, C, oc, o0, H, W, Ho, Wo, nn, Cp / 4, Rp / 4, 0, 0, n0 > 0 ? 1 : 0, 0)
            .i32(g.KH, g.KW, g.SH, g.SW, g.PT, g.PL, 0, 0)
            .done(),
          bindings: [{ buffer: xt.buffer }, { buffer: gt.buffer }, { buffer: dw.buffer }],
          workgroups: wg,
        });
        xt.dispose();
      }
      gt.dispose();
    }
  }
  return true;
}

// ---------------- bias gradient ----------------

// dBias is f32 (biases are f32); dY f32 or f16 (`ad`)
const biasGradKernel = memoKernel(
  (ad: FloatDType) => /* wgsl */ `${enableF16(ad)}
struct P { Oc: u32, o0: u32, nb: u32, P: u32, gBS: u32, gShift: u32, accum: u32, _0: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> G: array<${storageType(ad)}>;
@group(0) @binding(2) var<storage, read_write> DB: array<f32>;
var<workgroup> part: array<f32, 64>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let o = wid.x;
  var acc = 0.0;
  for (var n = 0u; n < u.nb; n++) {
    let base = u.gShift + n * u.gBS + o * u.P;
    for (var p = li; p < u.P; p += 64u) { acc += ${widen(ad, 'G[base + p]')}; }
  }
  part[li] = acc;
  workgroupBarrier();
  for (var s = 32u; s > 0u; s = s >> 1u) {
    if (li < s) { part[li] += part[li + s]; }
    workgroupBarrier();
  }
  if (li == 0u) {
    let k = u.o0 + o;
    DB[k] = select(part[0], part[0] + DB[k], u.accum != 0u);
  }
}`,
);

function biasGradRaw(gy: Tensor): Tensor {
  const [N, O, Ho, Wo] = gy.shape;
  const db = Tensor.empty([O], 'f32', 'conv2d_dbias');
  if (O === 0) return db;
  const r = rt();
  if (N * Ho * Wo === 0) {
    r.dispatch(zeroSpec(db));
    return db;
  }
  const ad = gy.dtype as FloatDType;
  const { nb, cb: ob } = plan('conv2d backward', N, 1, 1, O, Ho * Wo, DTYPE_BYTES[ad]);
  for (let n0 = 0; n0 < N; n0 += nb) {
    const nn = Math.min(nb, N - n0);
    for (let o0 = 0; o0 < O; o0 += ob) {
      const oc = Math.min(ob, O - o0);
      const gw = channelWindow(gy, n0, nn, o0, oc);
      r.dispatch({
        name: 'conv2d_bwd_bias',
        code: biasGradKernel(ad),
        uniforms: new Uniforms().u32(oc, o0, nn, Ho * Wo, O * Ho * Wo, gw.shift, n0 > 0 ? 1 : 0, 0).done(),
        bindings: [gw.bind, { buffer: db.buffer }],
        workgroups: [oc],
      });
    }
  }
  return db;
}

const ZERO = /* wgsl */ `
struct P { n: u32, _0: u32, _1: u32, _2: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) { if (gid.x < u.n) { Y[gid.x] = 0.0; } }`;

function zeroSpec(t: Tensor) {
  return { name: 'conv2d_zero', code: ZERO, uniforms: new Uniforms().u32(t.size, 0, 0, 0).done(), bindings: [{ buffer: t.buffer }], workgroups: [Math.ceil(t.size / 64)] as [number] };
}

// ---------------- the op ----------------

/** Checks the dtypes of conv2d's operands: x f32 or f16 (f16 needs shader-f16), w f32 or f16, bias f32 [O]. */
function checkDtypes(x: Tensor, w: Tensor, bias: Tensor | undefined, g: Geom) {
  floatDtype('conv2d', 'input', x);
  floatDtype('conv2d', 'weight', w);
  if (bias && (bias.size !== g.O || bias.dtype !== 'f32')) throw new ShapeError(`conv2d: bias must be f32 [${g.O}], got ${bias.dtype} [${bias.shape}]`);
}

/** Checks that dY has y's dtype, which is x's. */
function checkDy(gy: Tensor, x: Tensor) {
  sameFloatDtype('conv2d backward', [x, gy], ['input', 'dY']);
}

/**
 * 2D convolution, PyTorch layout and semantics: x [N, C, H, W] f32 or f16 (the output has x's dtype; f16 needs
 * shader-f16, arithmetic is f32 either way), w [O, C, kh, kw] f32 or f16 (independent of x), optional bias [O]
 * f32. Padding is zero padding; `padding: [top, bottom, left, right]` allows the asymmetric padding of the VAE
 * encoder's downsampler. Gradients for x, w and bias, each in its tensor's dtype (the autodiff hands dY over in
 * y's dtype).
 */
export function conv2d(x: Tensor, w: Tensor, bias?: Tensor, opts: Conv2dOptions = {}): Tensor {
  const g = geometry(x, w, opts);
  checkDtypes(x, w, bias, g);
  const y = forwardRaw(x, w, bias, g);
  return record(y, 'conv2d', bias ? [x, w, bias] : [x, w], (gy) => {
    checkDy(gy, x);
    return [
      wantsGrad(x) ? backwardDataRaw(gy, w, g) : null,
      wantsGrad(w) ? backwardWeightRaw(gy, x, w, g) : null,
      bias && wantsGrad(bias) ? biasGradRaw(gy) : null,
    ];
  });
}

/** Low-level entry points (no autodiff), for tests and benchmarks; dY must have x's dtype. */
export const conv2dRaw = {
  forward: (x: Tensor, w: Tensor, bias?: Tensor, opts: Conv2dOptions = {}) => {
    const g = geometry(x, w, opts);
    checkDtypes(x, w, bias, g);
    return forwardRaw(x, w, bias, g);
  },
  backwardData: (gy: Tensor, x: Tensor, w: Tensor, opts: Conv2dOptions = {}) => {
    const g = geometry(x, w, opts);
    checkDtypes(x, w, undefined, g);
    checkDy(gy, x);
    return backwardDataRaw(gy, w, g);
  },
  backwardWeight: (gy: Tensor, x: Tensor, w: Tensor, opts: Conv2dOptions = {}) => {
    const g = geometry(x, w, opts);
    checkDtypes(x, w, undefined, g);
    checkDy(gy, x);
    return backwardWeightRaw(gy, x, w, g);
  },
  biasGrad: (gy: Tensor) => {
    floatDtype('conv2d backward', 'dY', gy);
    return biasGradRaw(gy);
  },
};
