// Winograd F(4x4, 3x3) and F(2x2, 3x3) for 3x3 stride-1 convolutions (forward, backward-data and
// backward-weight), used by conv2d on CPU adapters, where multiply-adds are what a convolution costs (Lavin &
// Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). Below for F(4x4, 3x3); F(2x2, 3x3) is the
// same with 2x2 tiles, 4x4 patches and 16 GEMMs (2.25x fewer multiply-adds, a smaller weight transform, and
// more tiles from a small image). The output is cut into 4x4 tiles; each tile needs a 6x6 input patch.
//   U = G g Gᵀ (6x6 per weight pair, 3x3 g),  V = Bᵀ d B (6x6 per input patch d),  Y = Aᵀ (U ⊙ V) A (4x4).
// Summed over input channels, the elementwise products become 36 independent GEMMs, one per point ξ of the
// 6x6 grid: M[ξ] (O x tiles) = Uᵀ[ξ] (O x C) @ V[ξ] (C x tiles), which is 36 / 16 = 2.25 multiply-adds per
// output pixel and channel pair instead of 9 (4x fewer), run by matmul's K-major tile (`gemm`). The transforms
// are separate, memory-bound kernels generated from the matrices below, one invocation per 4 operand columns.
//  - backward-data is the same forward applied to dY with the kernel rotated by 180 degrees and the roles of
//    the channel axes swapped (stride 1): dX[c] = sum_o rot180(W[o, c]) * dY[o], padding 2 - p.
//  - backward-weight differentiates the forward formula: dM = A dY Aᵀ per output tile (4x4 -> 6x6),
//    dU[ξ] (O x C) = dM[ξ] (O x tiles) @ V[ξ]ᵀ, dW = Gᵀ dU G (6x6 -> 3x3), again 36 GEMMs.
// fp32 error: the points 0, ±1, ±2 (and ∞) keep the transforms' coefficients small; measured against the float64
// reference the error is a few times the direct convolution's (tests bound it at the engine's usual 1e-4 of
// the output's largest magnitude). The transformed tensors are 36/16 = 2.25x the activations; they are built
// in chunks of tiles that stay within `CHUNK_BYTES` (and the binding limit), so memory stays bounded.
// Activations and their gradients (x, y, dY, dX) may be f16: the transforms that read or write them take the
// dtype (loads widened to f32, stores narrowed; a staging texture of an f16 tensor is rgba16float, read as
// f32), while the transformed operands, the GEMMs and dW stay f32.
import { rt, Uniforms, type Binding } from '../engine/runtime.js';
import { Tensor } from '../engine/tensor.js';
import { grid, WG_INDEX, memoKernel, flatMain, enableF16, storageType, widen, narrow, type FloatDType } from './util.js';
import { matmulRaw } from './matmul.js';
import { linearLoad, linearTexture, linearTextureFits } from './staging.js';


/** Bᵀ (6x6), G (6x3) and Aᵀ (4x6) for F(4, 3) with the points 0, 1, -1, 2, -2 and infinity. */
export const WINOGRAD_F43 = {
  BT: [
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
  ],
  G: [
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
  ],
  AT: [
    [1, 1, 1, 1, 1, 0],
    [0, 1, -1, 2, -2, 0],
    [0, 1, 1, 4, 4, 0],
    [0, 1, -1, 8, -8, 1],
  ],
};
/** Bᵀ (4x4), G (4x3) and Aᵀ (2x4) for F(2, 3) with the points 0, 1, -1 and infinity. */
export const WINOGRAD_F23 = {
  BT: [
    [1, 0, -1, 0],
    [0, 1, 1, 0],
    [0, -1, 1, 0],
    [0, 1, 0, -1],
  ],
  G: [
    [1, 0, 0],
    [1 / 2, 1 / 2, 1 / 2],
    [1 / 2, -1 / 2, 1 / 2],
    [0, 0, 1],
  ],
  AT: [
    [1, 1, 1, 0],
    [0, 1, -1, -1],
  ],
};
/** Output tile side m: 4 (F(4x4, 3x3), 36 points) or 2 (F(2x2, 3x3), 16 points, for small images). */
export type WinogradTile = 2 | 4;
/** the tile's matrices; TILE = m, ALPHA = m + 2 (input patch side), XI = ALPHA² (points, GEMMs) */
function wcfg(m: WinogradTile) {
  const M = m === 4 ? WINOGRAD_F43 : WINOGRAD_F23;
  return { ...M, TILE: m, ALPHA: m + 2, XI: (m + 2) * (m + 2) };
}
const transpose = (m: number[][]) => m[0].map((_, j) => m.map((row) => row[j]));

/** bytes of one transformed operand (per chunk of tiles) */
const CHUNK_BYTES = 48 * 1024 * 1024;

// ---------------- transform code generation ----------------

function lit(c: number): string {
  const s = String(Math.abs(c));
  return /[.e]/.test(s) ? s : `${s}.0`;
}

/** WGSL sum of coef * term over the nonzero coefficients (±1 without a multiply). */
function lin(coefs: number[], term: (k: number) => string): string {
  const parts: string[] = [];
  coefs.forEach((c, k) => {
    if (c === 0) return;
    const sign = c < 0 ? '-' : '+';
    const t = Math.abs(c) === 1 ? term(k) : `${lit(c)} * ${term(k)}`;
    parts.push(parts.length ? ` ${sign} ${t}` : sign === '-' ? `-${t}` : t);
  });
  return parts.length ? parts.join('') : '0.0';
}

/**
 * Lets computing out = L X Rᵀ (L: p x q, X: q x s given by `src(k, l)`, R: t x s), naming element (i, j) of the
 * result `${name}_${i}_${j}`; the product is taken as two passes of linear combinations through `${name}t`.
 */
function sandwich(L: number[][], R: number[][], src: (k: number, l: number) => string, name: string): string {
  const s = R[0].length;
  const out: string[] = [];
  for (let i = 0; i < L.length; i++)
    for (let l = 0; l < s; l++) out.push(`let ${name}t_${i}_${l} = ${lin(L[i], (k) => src(k, l))};`);
  for (let i = 0; i < L.length; i++)
    for (let j = 0; j < R.length; j++) out.push(`let ${name}_${i}_${j} = ${lin(R[j], (l) => `${name}t_${i}_${l}`)};`);
  return out.join('\n  ');
}

const range = (n: number) => [...Array(n).keys()];
const J4 = range(4);
const vec = (parts: string[]) => `vec4<f32>(${parts.join(', ')})`;


/**
 * WGSL: vec4 element `idx` of operand `arr`, a storage buffer of dtype `dt` or (tex) a linear staging texture
 * (staging.ts; rgba16float for f16 tensors, read as vec4<f32> all the same).
 */
const read = (arr: string, idx: string, tex: boolean, dt: FloatDType = 'f32') => (tex ? linearLoad(arr, idx) : widen(dt, `${arr}[${idx}]`, true));
/**
 * WGSL declaration of a read-only operand at `binding` of dtype `dt`: a storage buffer of vec4s (or of scalars,
 * `scalar`) or (tex) a linear staging texture.
 */
const operand = (binding: number, arr: string, tex: boolean, dt: FloatDType = 'f32', scalar = false) =>
  tex
    ? `@group(0) @binding(${binding}) var ${arr}: texture_2d<f32>;`
    : `@group(0) @binding(${binding}) var<storage, read> ${arr}: array<${scalar ? storageType(dt) : `vec4<${storageType(dt)}>`}>;`;

/**
 * WGSL walking the alpha x alpha points of an operand [ξ, ...] from vec4 element i, `step` apart: loads them
 * into lets `${name}_a_b`, or stores those lets.
 */
function points(alpha: number, op: 'load' | 'store', arr: string, name: string, step: string, tex = false): string {
  const A = range(alpha);
  const one = (a: number, b: number) => (op === 'load' ? `let ${name}_${a}_${b} = ${read(arr, 'pt', tex)};` : `${arr}[pt] = ${name}_${a}_${b};`);
  return `var pt = i;\n  ${A.map((a) => A.map((b) => `${one(a, b)} pt += ${step};`).join(' ')).join('\n  ')}`;
}

// Every transform kernel handles 4 consecutive columns of a GEMM operand per invocation (4 tiles of one
// channel, or 4 channels of one tile), does its arithmetic on vec4s (one component per column) and writes whole
// vec4s: on CPU adapters a memory access costs about the same for a vec4 as for a scalar, so this is 4x fewer
// stores than one column per invocation. Tiles are numbered t = (n * th + ty) * tw + tx; a chunk holds tiles
// [t0, tEnd), padded to a multiple of 4, and GEMM rows are padded to a multiple of 32: padding ("phantom" tiles,
// channels and rows) is written as zeros, so the GEMMs never read uninitialized memory.
const STRUCT = /* wgsl */ `struct P {
  nInv: u32, Tq: u32, t0: u32, tEnd: u32,
  tpi: u32, tw: u32, C: u32, rows: u32,
  H: u32, W: u32, PT: i32, PL: i32,
  r0: u32, accum: u32, nc: u32, _1: u32 }
@group(0) @binding(0) var<uniform> u: P;`;

const MAIN = flatMain('i', 'u.nInv');

/**
 * Per component j: channel c${j} (< u.nc valid) and tile t${j} (< u.tEnd valid), ok${j} both, and the tile's
 * batch item / row / column. 'tiles': invocation i = channel * Tq + quad of tiles; 'chans': i = tile * Tq + quad
 * of channels (Tq = quads per row of the operand).
 */
function columns(layout: 'tiles' | 'chans'): string {
  const head =
    layout === 'tiles'
      ? `let cI = i / u.Tq; let qI = i - cI * u.Tq;`
      : `let tI = i / u.Tq; let qI = i - tI * u.Tq;`;
  return `${head}
  ${J4.map(
    (j) => `let c${j} = ${layout === 'tiles' ? 'cI' : `4u * qI + ${j}u`};
  let t${j} = u.t0 + ${layout === 'tiles' ? `4u * qI + ${j}u` : 'tI'};
  let ok${j} = t${j} < u.tEnd && c${j} < u.nc;
  let tc${j} = select(u.t0, t${j}, ok${j});
  let n${j} = tc${j} / u.tpi;
  let tr${j} = tc${j} - n${j} * u.tpi;
  let ty${j} = tr${j} / u.tw;
  let tx${j} = tr${j} - ty${j} * u.tw;
  let ch${j} = u.r0 + min(c${j}, u.nc - 1u);`,
  ).join('\n  ')}`;
}

/**
 * V = (Bᵀ d B)[ξ] of the 6x6 patch of S[n, r0 + c] at (4 ty - PT, 4 tx - PL), zero outside the image and for
 * padding; 'tiles': V[ξ, c, t], 'chans': V[ξ, t, c]. `off` >= 0: the image width is a multiple of 4 and a patch
 * row starts at component `off` of an aligned vec4 (off = -PL mod 4), so a row is 2-3 vec4 loads; -1: scalars.
 */
const inputKernel = memoKernel((m: WinogradTile, off: number, layout: 'tiles' | 'chans', tex: boolean, dt: FloatDType) => {
  const { TILE, ALPHA, BT } = wcfg(m);
  const A = range(ALPHA);
  const nv = off < 0 ? 0 : Math.ceil((off + ALPHA) / 4);
  const loads =
    off < 0
      ? A.map((k) =>
          A.map(
            (l) => `let d_${k}_${l} = ${vec(J4.map((j) => `select(0.0, ${widen(dt, `S[base${j} + u32(select(0, yy${j}_${k} * Ws + xx${j}_${l}, ry${j}_${k} && rx${j}_${l}))]`)}, ry${j}_${k} && rx${j}_${l})`))};`,
          ).join('\n  '),
        ).join('\n  ')
      : A.map((k) =>
          [
            ...J4.map((j) =>
              range(nv)
                .map((v) => `let s${j}_${k}_${v} = select(vec4<f32>(0.0), ${read('S', `base${j} + u32(select(0, yy${j}_${k} * W4 + a${j} + ${v}, ry${j}_${k} && rx${j}_${v}))`, tex, dt)}, ry${j}_${k} && rx${j}_${v});`)
                .join(' '),
            ),
            ...A.map((l) => `let d_${k}_${l} = ${vec(J4.map((j) => `s${j}_${k}_${(off + l) >> 2}[${(off + l) & 3}]`))};`),
          ].join('\n  '),
        ).join('\n  ');
  return /* wgsl */ `${enableF16(dt)}
${WG_INDEX}
${STRUCT}
${operand(1, 'S', tex, dt, off < 0)}
@group(0) @binding(2) var<storage, read_write> V: array<vec4<f32>>;
${MAIN}
  ${columns(layout)}
  let Hs = i32(u.H);
  let Ws = i32(u.W);
  let W4 = Ws / 4;
  ${J4.map(
    (j) => `let base${j} = (n${j} * u.C + ch${j}) * u.H * u.W${off < 0 ? '' : ' / 4u'};
  let y0${j} = i32(ty${j}) * ${TILE} - u.PT;
  ${A.map((k) => `let yy${j}_${k} = y0${j} + ${k}; let ry${j}_${k} = ok${j} && yy${j}_${k} >= 0 && yy${j}_${k} < Hs;`).join('\n  ')}
  ${
    off < 0
      ? `let x0${j} = i32(tx${j}) * ${TILE} - u.PL;
  ${A.map((l) => `let xx${j}_${l} = x0${j} + ${l}; let rx${j}_${l} = xx${j}_${l} >= 0 && xx${j}_${l} < Ws;`).join(' ')}`
      : `let a${j} = i32(tx${j}) - (u.PL + ${off}) / 4;
  ${range(nv).map((v) => `let rx${j}_${v} = a${j} + ${v} >= 0 && a${j} + ${v} < W4;`).join(' ')}`
  }`,
  ).join('\n  ')}
  ${loads}
  ${sandwich(BT, BT, (k, l) => `d_${k}_${l}`, 'v')}
  ${points(ALPHA, 'store', 'V', 'v', 'u.nInv')}
}`;
});

/**
 * Y[n, r0 + r, 4 ty + i, 4 tx + j] = (Aᵀ M A)[i, j] + bias for the pixels inside the image (H x W here), M[ξ, r, t]
 * with `rows` rows; `aligned`: W is a multiple of 4, so each row of a tile is one vec4 store.
 */
const outputKernel = memoKernel((m: WinogradTile, bias: boolean, aligned: boolean, tex: boolean, dt: FloatDType) => {
  const { TILE, ALPHA, AT } = wcfg(m);
  const T = range(TILE);
  return /* wgsl */ `${enableF16(dt)}
${WG_INDEX}
${STRUCT}
${operand(1, 'M', tex)}
${bias ? '@group(0) @binding(2) var<storage, read> BIAS: array<f32>;' : ''}
@group(0) @binding(${bias ? 3 : 2}) var<storage, read_write> Y: array<${aligned ? `vec4<${storageType(dt)}>` : storageType(dt)}>;
${MAIN}
  ${columns('tiles')}
  let plane = u.rows * u.Tq;
  ${points(ALPHA, 'load', 'M', 'm', 'plane', tex)}
  ${sandwich(AT, AT, (k, l) => `m_${k}_${l}`, 'y')}
  let bv = ${bias ? 'BIAS[ch0]' : '0.0'};
  ${J4.map(
    (j) => `if (ok${j}) {
    let y0 = ty${j} * ${TILE}u;
    let x0 = tx${j} * ${TILE}u;
    let base = ((n${j} * u.C + ch${j}) * u.H + y0) * u.W + x0;
    ${T.map((a) =>
      aligned
        ? `if (y0 + ${a}u < u.H) { Y[(base + ${a}u * u.W) / 4u] = ${narrow(dt, `${vec(T.map((b) => `y_${a}_${b}[${j}]`))} + bv`, true)}; }`
        : T.map((b) => `if (y0 + ${a}u < u.H && x0 + ${b}u < u.W) { Y[base + ${a}u * u.W + ${b}u] = ${narrow(dt, `y_${a}_${b}[${j}] + bv`)}; }`).join('\n    '),
    ).join('\n    ')}
  }`,
  ).join('\n  ')}
}`;
});

/** dM[ξ, t, o] = (A dY Aᵀ)[ξ] of output tile t of channel r0 + o (zero outside the output and for padding). */
const gradOutputKernel = memoKernel((m: WinogradTile, aligned: boolean, dt: FloatDType) => {
  const { TILE, ALPHA, AT } = wcfg(m);
  const T = range(TILE);
  const A = transpose(AT);
  return /* wgsl */ `${enableF16(dt)}
${WG_INDEX}
${STRUCT}
@group(0) @binding(1) var<storage, read> GY: array<${aligned ? `vec4<${storageType(dt)}>` : storageType(dt)}>;
@group(0) @binding(2) var<storage, read_write> DM: array<vec4<f32>>;
${MAIN}
  ${columns('chans')}
  ${J4.map(
    (j) => `let y0${j} = ty${j} * ${TILE}u;
  let x0${j} = tx${j} * ${TILE}u;
  let base${j} = ((n${j} * u.C + ch${j}) * u.H + y0${j}) * u.W + x0${j};
  ${T.map((a) =>
    aligned
      ? `let g${j}_${a} = select(vec4<f32>(0.0), ${widen(dt, `GY[select(0u, (base${j} + ${a}u * u.W) / 4u, ok${j} && y0${j} + ${a}u < u.H)]`, true)}, ok${j} && y0${j} + ${a}u < u.H);`
      : `let g${j}_${a} = ${vec([
          ...T.map((b) => `select(0.0, ${widen(dt, `GY[select(0u, base${j} + ${a}u * u.W + ${b}u, ok${j} && y0${j} + ${a}u < u.H && x0${j} + ${b}u < u.W)]`)}, ok${j} && y0${j} + ${a}u < u.H && x0${j} + ${b}u < u.W)`),
          ...Array(4 - TILE).fill('0.0'),
        ])};`,
  ).join('\n  ')}`,
  ).join('\n  ')}
  ${T.map((a) => T.map((b) => `let g_${a}_${b} = ${vec(J4.map((j) => `g${j}_${a}[${b}]`))};`).join(' ')).join('\n  ')}
  ${sandwich(A, A, (k, l) => `g_${k}_${l}`, 'm')}
  ${points(ALPHA, 'store', 'DM', 'm', 'u.nInv')}
}`;
});

// U[ξ, k, r] for the GEMM's reduction k (padded to K4) and rows r (a chunk of `nc` rows from r0, padded to a
// multiple of 32); one invocation per (k, 4 consecutive r). 'fwd': r = output channel o, k = input channel c,
// g = W[o, c] (scalar loads). 'bwd': r = c, k = o, g = W[o, c] rotated by 180 degrees; the 4 kernels are 36
// consecutive weights (9 vec4 loads when C is a multiple of 4).
const weightKernel = memoKernel((m: WinogradTile, mode: 'fwd' | 'bwd', f16: boolean, aligned: boolean) => {
  const { ALPHA, G } = wcfg(m);
  const K3 = range(3);
  const tap = (ky: number, kx: number) => (mode === 'fwd' ? ky * 3 + kx : (2 - ky) * 3 + (2 - kx));
  const ty = f16 ? 'f16' : 'f32';
  const vecLoads = mode === 'bwd' && aligned;
  const loads = vecLoads
    ? `let okv = k < u.C0 && 4u * rq < u.nc;
  let src = select(0u, (k * u.C + u.r0 + 4u * rq) * 9u / 4u, okv);
  ${range(9).map((v) => `let w${v} = select(vec4<f32>(0.0), vec4<f32>(W[src + ${v}u]), okv);`).join(' ')}
  ${K3.map((a) => K3.map((b) => `let g_${a}_${b} = ${vec(J4.map((j) => `w${(9 * j + tap(a, b)) >> 2}[${(9 * j + tap(a, b)) & 3}]`))};`).join(' ')).join('\n  ')}`
    : `${J4.map((j) => {
        const r = `u.r0 + min(4u * rq + ${j}u, u.nc - 1u)`;
        const kk = 'min(k, u.C0 - 1u)';
        return `let ok${j} = k < u.C0 && 4u * rq + ${j}u < u.nc; let src${j} = (${mode === 'fwd' ? `(${r}) * u.C + ${kk}` : `${kk} * u.C + ${r}`}) * 9u;`;
      }).join('\n  ')}
  ${K3.map((a) => K3.map((b) => `let g_${a}_${b} = ${vec(J4.map((j) => `select(0.0, f32(W[src${j} + ${tap(a, b)}u]), ok${j})`))};`).join('\n  ')).join('\n  ')}`;
  return /* wgsl */ `${f16 ? 'enable f16;' : ''}
${WG_INDEX}
// C: input channels of W; C0: the reduction's true length (C in 'fwd', O in 'bwd')
struct P { nInv: u32, Tq: u32, C: u32, C0: u32, r0: u32, nc: u32, _0: u32, _1: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> W: array<${vecLoads ? `vec4<${ty}>` : ty}>;
@group(0) @binding(2) var<storage, read_write> U: array<vec4<f32>>;
${MAIN}
  let k = i / u.Tq;
  let rq = i - k * u.Tq;
  ${loads}
  ${sandwich(G, G, (k, l) => `g_${k}_${l}`, 'w')}
  ${points(ALPHA, 'store', 'U', 'w', 'u.nInv')}
}`;
});

/**
 * dW[r0 + o, c] (+)= Gᵀ dU[·, o, c] G, one invocation per (o, 4 consecutive c): dU [36, rows, C4] read as
 * vec4s; `aligned` (C a multiple of 4): the 4 kernels are 36 consecutive weights, 9 vec4 stores.
 */
const weightGradKernel = memoKernel((m: WinogradTile, aligned: boolean, tex: boolean) => {
  const { ALPHA, G } = wcfg(m);
  const GT = transpose(G);
  const K3 = range(3);
  const stores = aligned
    ? `let q = ((u.r0 + o) * u.C + 4u * cq) * 9u / 4u;
  ${range(9)
    .map((v) => {
      const comps = J4.map((e) => {
        const idx = 4 * v + e;
        const t = idx % 9;
        return `w_${Math.floor(t / 3)}_${t % 3}[${Math.floor(idx / 9)}]`;
      });
      return `DW[q + ${v}u] = select(${vec(comps)}, ${vec(comps)} + DW[q + ${v}u], u.accum != 0u);`;
    })
    .join('\n  ')}`
    : J4.map(
        (j) => `if (4u * cq + ${j}u < u.C) {
    let q = ((u.r0 + o) * u.C + 4u * cq + ${j}u) * 9u;
    ${K3.map((a) => K3.map((b) => `DW[q + ${a * 3 + b}u] = select(w_${a}_${b}[${j}], w_${a}_${b}[${j}] + DW[q + ${a * 3 + b}u], u.accum != 0u);`).join(' ')).join('\n    ')}
  }`,
      ).join('\n  ');
  return /* wgsl */ `
${WG_INDEX}
${STRUCT}
${operand(1, 'DU', tex)}
@group(0) @binding(2) var<storage, read_write> DW: array<${aligned ? 'vec4<f32>' : 'f32'}>;
${MAIN}
  let o = i / u.Tq;
  let cq = i - o * u.Tq;
  let plane = u.rows * u.Tq;
  ${points(ALPHA, 'load', 'DU', 'd', 'plane', tex)}
  ${sandwich(GT, GT, (k, l) => `d_${k}_${l}`, 'w')}
  ${stores}
}`;
});

// The 36 GEMMs: out[ξ, r, n] = sum_k A[ξ, k, r] B[ξ, k, n], rows padded to a multiple of 32 and columns to a
// multiple of 4. Both operands are K-major, so on adapters with 8-wide subgroups matmul runs them with its
// K-major tile as they are (no copies: one vec4 of each operand per k, 128 FMAs a lane; matmul's general kernel
// needs eight scalar loads for the same work and measured 1.1-1.7x slower on these GEMMs).
const GEMM_ROWS = 32;
const gemm = (a: Tensor, b: Tensor): Tensor => matmulRaw(a, b, { transA: true });

// ---------------- drivers ----------------

export interface WinogradGeom {
  N: number;
  C: number;
  H: number;
  W: number;
  O: number;
  Ho: number;
  Wo: number;
  PT: number;
  PL: number;
}

const ceil4 = (n: number) => Math.ceil(n / 4) * 4;
const ceil32 = (n: number) => Math.ceil(n / 32) * 32;
const budget = () => Math.min(CHUNK_BYTES, rt().maxBindingBytes);

/**
 * Whether the activations (`eb` bytes per element: 4 for f32, 2 for f16) fit single storage bindings (the
 * Winograd path binds them whole) and 32 rows of U fit a chunk.
 */
export function winogradFits(g: WinogradGeom, eb = 4): boolean {
  const lim = rt().maxBindingBytes;
  const row = wcfg(4).XI * 4 * ceil4(Math.max(g.C, g.O));
  return eb * g.N * g.C * g.H * g.W <= lim && eb * g.N * g.O * g.Ho * g.Wo <= lim && GEMM_ROWS * row <= budget();
}

function uniforms(o: { nInv: number; Tq?: number; t0?: number; tEnd?: number; tpi?: number; tw?: number; C: number; rows?: number; H?: number; W?: number; PT?: number; PL?: number; r0?: number; accum?: boolean; nc?: number }) {
  return new Uniforms()
    .u32(o.nInv, o.Tq ?? 0, o.t0 ?? 0, o.tEnd ?? 0, o.tpi ?? 0, o.tw ?? 0, o.C, o.rows ?? 0, o.H ?? 0, o.W ?? 0)
    .i32(o.PT ?? 0, o.PL ?? 0)
    .u32(o.r0 ?? 0, o.accum ? 1 : 0, o.nc ?? 0, 0)
    .done();
}

function dispatchFlat(name: string, code: string, uniforms: ArrayBuffer, bindings: Binding[], nInv: number) {
  rt().dispatch({ name, code, uniforms, bindings, workgroups: grid(Math.ceil(nInv / 64)) });
}

/** Chunks of GEMM rows (multiples of 32) and of tiles (multiples of 4) whose operands stay within the budget. */
function chunks(XI: number, rows: number, K4: number, T: number) {
  const row = XI * 4 * K4; // bytes of one row of U (one column of V)
  const Rc = Math.min(rows, Math.max(GEMM_ROWS, Math.floor(budget() / row / GEMM_ROWS) * GEMM_ROWS));
  // one tile column of V and of the GEMM's output
  const Tc = Math.min(ceil4(T), Math.max(4, Math.floor(budget() / (XI * 4 * Math.max(K4, ceil32(Rc))) / 4) * 4));
  return { Rc, Tc };
}

interface Tiling {
  tpi: number;
  tw: number;
  T: number;
}
function tiling(m: WinogradTile, N: number, Ho: number, Wo: number): Tiling {
  const tw = Math.ceil(Wo / m);
  const tpi = Math.ceil(Ho / m) * tw;
  return { tpi, tw, T: N * tpi };
}

// Texture reads. On CPU adapters the kernels that read much more than they write (the input transform's
// overlapping patches, the output transform and the dU -> dW transform, 36 loads each) read their operand from
// a staging copy in a texture (staging.ts): 2x faster for the dU -> dW transform on lavapipe, copy included.
let textureLoads = true;
/** Read the transforms' inputs through staging textures on CPU adapters (default) or always from buffers (tests, benchmarks). */
export function setWinogradTextureLoads(on: boolean) {
  textureLoads = on;
}
/** the operand t (its first `vec4s` values) as a linear staging texture where texture reads pay, else its buffer */
function source(t: Tensor, vec4s: number, role: string): Binding {
  if (textureLoads && rt().gpu.adapterClass === 'cpu' && linearTextureFits(vec4s)) return { texture: linearTexture(t, vec4s, role) };
  return { buffer: t.buffer };
}
const isTex = (b: Binding) => 'texture' in b;

/** vec4 patch rows need every tile's first column at the same vec4 offset: 4x4 tiles on images of width 4k */
const patchOffset = (m: WinogradTile, W: number, PL: number) => (m === 4 && W % 4 === 0 ? ((-PL % 4) + 4) % 4 : -1);

/** The image the input transform reads: a staging texture where its rows are read as vec4s (patchOffset >= 0). */
function inputSource(m: WinogradTile, src: Tensor, W: number, PL: number): Binding {
  return patchOffset(m, W, PL) < 0 ? { buffer: src.buffer } : source(src, src.size / 4, 'winograd_x');
}

/**
 * The transformed patches of S [N, C, H, W] (bound as `s`, from `inputSource`) for tiles [t0, tEnd): 'tiles'
 * [36, C4, tiles4], 'chans' [36, tiles4, C4].
 */
function inputPass(m: WinogradTile, layout: 'tiles' | 'chans', s: Binding, dt: FloatDType, C: number, H: number, W: number, PT: number, PL: number, t0: number, tEnd: number, tl: Tiling) {
  const T4 = ceil4(tEnd - t0);
  const C4 = ceil4(C);
  const { XI } = wcfg(m);
  const v = Tensor.empty(layout === 'tiles' ? [XI, C4, T4] : [XI, T4, C4], 'f32', 'winograd_v');
  const nInv = (C4 * T4) / 4;
  dispatchFlat(
    'winograd_input',
    inputKernel(m, patchOffset(m, W, PL), layout, isTex(s), dt),
    uniforms({ nInv, Tq: (layout === 'tiles' ? T4 : C4) / 4, t0, tEnd, tpi: tl.tpi, tw: tl.tw, C, H, W, PT, PL, nc: C }),
    [s, { buffer: v.buffer }],
    nInv,
  );
  return v;
}

/**
 * y [N, R, Ho, Wo] = conv(src [N, K, Hs, Ws], w) + bias for a 3x3 kernel at stride 1, top/left padding PT/PL (may
 * be negative: a crop); 'bwd' convolves with w rotated and its channel axes swapped (backward-data).
 */
function convolve(m: WinogradTile, mode: 'fwd' | 'bwd', src: Tensor, K: number, Hs: number, Ws: number, PT: number, PL: number, w: Tensor, bias: Tensor | undefined, y: Tensor, R: number, Ho: number, Wo: number) {
  const N = src.shape[0];
  const K4 = ceil4(K);
  const { XI } = wcfg(m);
  const tl = tiling(m, N, Ho, Wo);
  const { Rc, Tc } = chunks(XI, R, K4, tl.T);
  const C = w.shape[1];
  const s = inputSource(m, src, Ws, PL);
  for (let r0 = 0; r0 < R; r0 += Rc) {
    const rc = Math.min(Rc, R - r0);
    const Rp = ceil32(rc);
    const u = Tensor.empty([XI, K4, Rp], 'f32', 'winograd_u');
    const nW = (K4 * Rp) / 4;
    dispatchFlat(
      'winograd_weights',
      weightKernel(m, mode, w.dtype === 'f16', C % 4 === 0),
      new Uniforms().u32(nW, Rp / 4, C, K, r0, rc, 0, 0).done(),
      [{ buffer: w.buffer }, { buffer: u.buffer }],
      nW,
    );
    for (let t0 = 0; t0 < tl.T; t0 += Tc) {
      const tEnd = Math.min(tl.T, t0 + Tc);
      const v = inputPass(m, 'tiles', s, src.dtype as FloatDType, K, Hs, Ws, PT, PL, t0, tEnd, tl);
      const prod = gemm(u, v);
      v.dispose();
      const Tq = ceil4(tEnd - t0) / 4;
      const pm = source(prod, prod.size / 4, 'winograd_m');
      dispatchFlat(
        'winograd_output',
        outputKernel(m, !!bias, m === 4 && Wo % 4 === 0, isTex(pm), y.dtype as FloatDType),
        uniforms({ nInv: rc * Tq, Tq, t0, tEnd, tpi: tl.tpi, tw: tl.tw, C: R, rows: Rp, H: Ho, W: Wo, r0, nc: rc }),
        [pm, ...(bias ? [{ buffer: bias.buffer }] : []), { buffer: y.buffer }],
        rc * Tq,
      );
      prod.dispose();
    }
    u.dispose();
  }
}

/** y = conv2d(x, w) + bias for a 3x3 kernel at stride 1 (y preallocated [N, O, Ho, Wo]), with m x m output tiles. */
export function winogradForward(x: Tensor, w: Tensor, bias: Tensor | undefined, g: WinogradGeom, y: Tensor, m: WinogradTile = 4) {
  convolve(m, 'fwd', x, g.C, g.H, g.W, g.PT, g.PL, w, bias, y, g.O, g.Ho, g.Wo);
}

/** dx = conv2d's input gradient for a 3x3 kernel at stride 1 (dx preallocated [N, C, H, W]): dY convolved with the rotated kernel. */
export function winogradBackwardData(gy: Tensor, w: Tensor, g: WinogradGeom, dx: Tensor, m: WinogradTile = 4) {
  convolve(m, 'bwd', gy, g.O, g.Ho, g.Wo, 2 - g.PT, 2 - g.PL, w, undefined, dx, g.C, g.H, g.W);
}

/** dw = conv2d's weight gradient for a 3x3 kernel at stride 1 (dw preallocated [O, C, 3, 3]). */
export function winogradBackwardWeight(gy: Tensor, x: Tensor, g: WinogradGeom, dw: Tensor, m: WinogradTile = 4) {
  const { N, C, H, W, O, Ho, Wo, PT, PL } = g;
  const C4 = ceil4(C);
  const { XI } = wcfg(m);
  const tl = tiling(m, N, Ho, Wo);
  // rows of dU [ξ, Op, C4] per chunk; tiles per chunk for V [ξ, tiles, C4] and dM [ξ, tiles, Op]
  const { Rc, Tc } = chunks(XI, O, Math.max(C4, ceil4(O)), tl.T);
  const s = inputSource(m, x, W, PL);
  for (let o0 = 0; o0 < O; o0 += Rc) {
    const oc = Math.min(Rc, O - o0);
    const Op = ceil32(oc);
    for (let t0 = 0; t0 < tl.T; t0 += Tc) {
      const tEnd = Math.min(tl.T, t0 + Tc);
      const T4 = ceil4(tEnd - t0);
      const dm = Tensor.empty([XI, T4, Op], 'f32', 'winograd_dm');
      const nG = (T4 * Op) / 4;
      dispatchFlat(
        'winograd_grad_output',
        gradOutputKernel(m, m === 4 && Wo % 4 === 0, gy.dtype as FloatDType),
        uniforms({ nInv: nG, Tq: Op / 4, t0, tEnd, tpi: tl.tpi, tw: tl.tw, C: O, H: Ho, W: Wo, r0: o0, nc: oc }),
        [{ buffer: gy.buffer }, { buffer: dm.buffer }],
        nG,
      );
      const v = inputPass(m, 'chans', s, x.dtype as FloatDType, C, H, W, PT, PL, t0, tEnd, tl);
      const du = gemm(dm, v);
      dm.dispose();
      v.dispose();
      const sdu = source(du, du.size / 4, 'winograd_du');
      dispatchFlat(
        'winograd_weight_grad',
        weightGradKernel(m, C % 4 === 0, isTex(sdu)),
        uniforms({ nInv: oc * (C4 / 4), Tq: C4 / 4, C, rows: Op, r0: o0, accum: t0 > 0 }),
        [sdu, { buffer: dw.buffer }],
        oc * (C4 / 4),
      );
      du.dispose();
    }
  }
}
