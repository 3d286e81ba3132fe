// Float64 CPU references for resampling, used only by tests. The bicubic one follows PyTorch's
// upsample_bicubic2d (align_corners=False, no antialias) step by step: per output pixel, the source
// coordinate, the integer/fractional split, four cubic-convolution coefficients per axis (A = -0.75), and a
// 4x4 sum of border-clamped input pixels.
import type { RT } from './core.ref.js';

export function rupsampleNearest2x(x: RT): RT {
  const [N, C, H, W] = x.shape;
  const out = new Float64Array(N * C * 4 * H * W);
  for (let p = 0; p < N * C; p++)
    for (let y = 0; y < 2 * H; y++)
      for (let xx = 0; xx < 2 * W; xx++) out[(p * 2 * H + y) * 2 * W + xx] = x.data[(p * H + (y >> 1)) * W + (xx >> 1)];
  return { shape: [N, C, 2 * H, 2 * W], data: out };
}

const A = -0.75;
// cubic_convolution1 (|x| <= 1) and cubic_convolution2 (1 < |x| < 2) of PyTorch's UpSample.h
const cc1 = (x: number) => ((A + 2) * x - (A + 3)) * x * x + 1;
const cc2 = (x: number) => ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
function coefficients(t: number): number[] {
  return [cc2(t + 1), cc1(t), cc1(1 - t), cc2(2 - t)];
}

export function rresizeBicubic(x: RT, outH: number, outW: number): RT {
  const [N, C, H, W] = x.shape;
  const sh = H / outH; // area_pixel_compute_scale with align_corners=False and no scale factor
  const sw = W / outW;
  const out = new Float64Array(N * C * outH * outW);
  const at = (p: number, y: number, xx: number) =>
    x.data[(p * H + Math.min(Math.max(y, 0), H - 1)) * W + Math.min(Math.max(xx, 0), W - 1)];
  for (let p = 0; p < N * C; p++)
    for (let oy = 0; oy < outH; oy++) {
      const ry = sh * (oy + 0.5) - 0.5; // area_pixel_compute_source_index(cubic=true): no clamp at 0
      const iy = Math.floor(ry);
      const cy = coefficients(ry - iy);
      for (let ox = 0; ox < outW; ox++) {
        const rx = sw * (ox + 0.5) - 0.5;
        const ix = Math.floor(rx);
        const cx = coefficients(rx - ix);
        let acc = 0;
        for (let a = 0; a < 4; a++) {
          let row = 0;
          for (let b = 0; b < 4; b++) row += cx[b] * at(p, iy - 1 + a, ix - 1 + b);
          acc += cy[a] * row;
        }
        out[(p * outH + oy) * outW + ox] = acc;
      }
    }
  return { shape: [N, C, outH, outW], data: out };
}
