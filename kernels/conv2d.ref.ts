// Float64 CPU reference for conv2d (direct summation, PyTorch semantics). Used only by tests.
import type { RT } from './core.ref.js';

export interface RefConvOpts {
  stride?: number | [number, number];
  padding?: number | [number, number] | [number, number, number, number];
}

/** y[n, o, oy, ox] = b[o] + sum_{c, ky, kx} w[o, c, ky, kx] * x[n, c, oy*sh - pt + ky, ox*sw - pl + kx] (zero outside). */
export function rconv2d(x: RT, w: RT, b: RT | null, opts: RefConvOpts = {}): RT {
  const [N, C, H, W] = x.shape;
  const [O, , KH, KW] = w.shape;
  const s = opts.stride ?? 1;
  const [SH, SW] = typeof s === 'number' ? [s, s] : s;
  const p = opts.padding ?? 0;
  const [PT, PB, PL, PR] = typeof p === 'number' ? [p, p, p, p] : p.length === 2 ? [p[0], p[0], p[1], p[1]] : p;
  const Ho = Math.floor((H + PT + PB - KH) / SH) + 1;
  const Wo = Math.floor((W + PL + PR - KW) / SW) + 1;
  const out = new Float64Array(N * O * Ho * Wo);
  for (let n = 0; n < N; n++)
    for (let o = 0; o < O; o++)
      for (let oy = 0; oy < Ho; oy++)
        for (let ox = 0; ox < Wo; ox++) {
          let acc = b ? b.data[o] : 0;
          for (let c = 0; c < C; c++)
            for (let ky = 0; ky < KH; ky++) {
              const iy = oy * SH - PT + ky;
              if (iy < 0 || iy >= H) continue;
              for (let kx = 0; kx < KW; kx++) {
                const ix = ox * SW - PL + kx;
                if (ix < 0 || ix >= W) continue;
                acc += w.data[((o * C + c) * KH + ky) * KW + kx] * x.data[((n * C + c) * H + iy) * W + ix];
              }
            }
          out[((n * O + o) * Ho + oy) * Wo + ox] = acc;
        }
  return { shape: [N, O, Ho, Wo], data: out };
}
