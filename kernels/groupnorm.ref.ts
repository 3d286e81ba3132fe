// Float64 CPU reference for group norm (with the optional fused SiLU). Used only by tests.
import type { RT } from './core.ref.js';

/** x [N, C, ...spatial], w/b [C]: per (n, group) two-pass mean and variance, then affine, then optional SiLU. */
export function rgroupNorm(x: RT, groups: number, w: RT, b: RT, eps = 1e-5, silu = false): RT {
  const [N, C] = x.shape;
  const S = x.shape.slice(2).reduce((p, q) => p * q, 1);
  const Cg = C / groups;
  const M = Cg * S;
  const data = new Float64Array(x.data.length);
  for (let n = 0; n < N; n++)
    for (let g = 0; g < groups; g++) {
      const base = (n * C + g * Cg) * S;
      let mean = 0;
      for (let i = 0; i < M; i++) mean += x.data[base + i];
      mean /= M;
      let v = 0;
      for (let i = 0; i < M; i++) v += (x.data[base + i] - mean) ** 2;
      const rstd = 1 / Math.sqrt(v / M + eps);
      for (let i = 0; i < M; i++) {
        const c = g * Cg + Math.floor(i / S);
        const y = (x.data[base + i] - mean) * rstd * w.data[c] + b.data[c];
        data[base + i] = silu ? y / (1 + Math.exp(-y)) : y;
      }
    }
  return { shape: [...x.shape], data };
}
