// Float64 CPU reference for conv2d (direct summation, PyTorch semantics) and its backward. Used only by tests.
import type { RT } from './core.ref.js';

export interface RefConvOpts {
  stride?: number | [number, number];
  padding?: number | [number, number] | [number, number, number, number];
}

/** Sizes of a convolution of x [N, C, H, W] with w [O, C, KH, KW]: strides, top/left padding, output size. */
function geometry(xShape: number[], wShape: number[], opts: RefConvOpts) {
  const [N, C, H, W] = xShape;
  const [O, , KH, KW] = wShape;
  const s = opts.stride ?? 1;
  const [SH, SW] = typeof s === 'number' ? [s, s] : s;
  const p = opts.padding ?? 0;
  const [PT, PB, PL, PR] = typeof p === 'number' ? [p, p, p, p] : p.length === 2 ? [p[0], p[0], p[1], p[1]] : p;
  const Ho = Math.floor((H + PT + PB - KH) / SH) + 1;
  const Wo = Math.floor((W + PL + PR - KW) / SW) + 1;
  return { N, C, H, W, O, KH, KW, SH, SW, PT, PL, Ho, Wo };
}
type Geometry = ReturnType<typeof geometry>;

/**
 * Calls `tap(yi, xi, wi)` for every product w[wi] * x[xi] that output element y[yi] sums;
 * taps in the zero padding are skipped.
 */
function forEachTap(g: Geometry, tap: (yi: number, xi: number, wi: number) => void) {
  const { N, C, H, W, O, KH, KW, SH, SW, PT, PL, Ho, Wo } = g;
  for (let n = 0; n < N; n++)
    for (let o = 0; o < O; o++)
      for (let oy = 0; oy < Ho; oy++)
        for (let ox = 0; ox < Wo; ox++) {
          const yi = ((n * O + o) * Ho + oy) * Wo + ox;
          for (let c = 0; c < C; c++)
            for (let ky = 0; ky < KH; ky++) {
              const iy = oy * SH - PT + ky;
              if (iy < 0 || iy >= H) continue;
              for (let kx = 0; kx < KW; kx++) {
                const ix = ox * SW - PL + kx;
                if (ix < 0 || ix >= W) continue;
                tap(yi, ((n * C + c) * H + iy) * W + ix, ((o * C + c) * KH + ky) * KW + kx);
              }
            }
        }
}

/** y[n, o, oy, ox] = b[o] + sum_{c, ky, kx} w[o, c, ky, kx] * x[n, c, oy*sh - pt + ky, ox*sw - pl + kx] (zero outside). */
export function rconv2d(x: RT, w: RT, b: RT | null, opts: RefConvOpts = {}): RT {
  const g = geometry(x.shape, w.shape, opts);
  const out = new Float64Array(g.N * g.O * g.Ho * g.Wo);
  if (b) for (let i = 0; i < out.length; i++) out[i] = b.data[Math.floor(i / (g.Ho * g.Wo)) % g.O];
  forEachTap(g, (yi, xi, wi) => {
    out[yi] += w.data[wi] * x.data[xi];
  });
  return { shape: [g.N, g.O, g.Ho, g.Wo], data: out };
}

/** Gradients of sum(y * gy) for y = rconv2d(x, w, b, opts): dx, dw and db, and y's shape. */
export function rconv2dBackward(x: ArrayLike<number>, xShape: number[], w: ArrayLike<number>, wShape: number[], gy: ArrayLike<number>, opts: RefConvOpts = {}) {
  const g = geometry(xShape, wShape, opts);
  const dx = new Float64Array(x.length);
  const dw = new Float64Array(w.length);
  const db = new Float64Array(g.O);
  for (let i = 0; i < g.N * g.O * g.Ho * g.Wo; i++) db[Math.floor(i / (g.Ho * g.Wo)) % g.O] += gy[i];
  forEachTap(g, (yi, xi, wi) => {
    dx[xi] += gy[yi] * w[wi];
    dw[wi] += gy[yi] * x[xi];
  });
  return { dx, dw, db, yShape: [g.N, g.O, g.Ho, g.Wo] };
}
