// Float64 CPU reference for fused attention, used only by tests: softmax(scale * Q K^T [+ causal mask]) V
// per head, on the interleaved-heads layout q [B, Sq, H*D], k [B, Sk, H*D], v [B, Sk, H*Dv].
import type { RT } from './core.ref.js';

export interface RefAttentionOptions {
  heads: number;
  scale?: number;
  causal?: boolean;
}

/** Returns the output [B, Sq, H*Dv] and the row logsumexp [B, H, Sq] of the scaled (masked) scores. */
export function rattentionFull(q: RT, k: RT, v: RT, opts: RefAttentionOptions): { out: RT; lse: RT } {
  const [B, Sq, HD] = q.shape;
  const Sk = k.shape[1];
  const H = opts.heads;
  const D = HD / H;
  const Dv = v.shape[2] / H;
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  const out = new Float64Array(B * Sq * H * Dv);
  const lse = new Float64Array(B * H * Sq);
  const s = new Float64Array(Sk);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let i = 0; i < Sq; i++) {
        const qo = (b * Sq + i) * HD + h * D;
        let m = -Infinity;
        for (let j = 0; j < Sk; j++) {
          if (opts.causal && j > i) {
            s[j] = -Infinity;
            continue;
          }
          const ko = (b * Sk + j) * HD + h * D;
          let acc = 0;
          for (let d = 0; d < D; d++) acc += q.data[qo + d] * k.data[ko + d];
          s[j] = acc * scale;
          m = Math.max(m, s[j]);
        }
        let l = 0;
        for (let j = 0; j < Sk; j++) l += s[j] === -Infinity ? 0 : Math.exp(s[j] - m);
        lse[(b * H + h) * Sq + i] = m + Math.log(l);
        const oo = (b * Sq + i) * H * Dv + h * Dv;
        for (let j = 0; j < Sk; j++) {
          if (s[j] === -Infinity) continue;
          const p = Math.exp(s[j] - m) / l;
          const vo = (b * Sk + j) * H * Dv + h * Dv;
          for (let d = 0; d < Dv; d++) out[oo + d] += p * v.data[vo + d];
        }
      }
  return { out: { shape: [B, Sq, H * Dv], data: out }, lse: { shape: [B, H, Sq], data: lse } };
}

export function rattention(q: RT, k: RT, v: RT, opts: RefAttentionOptions): RT {
  return rattentionFull(q, k, v, opts).out;
}

/** Analytic gradients (dq, dk, dv) of the attention output for an output gradient g [B, Sq, H*Dv]. */
export function rattentionBackward(q: RT, k: RT, v: RT, g: RT, opts: RefAttentionOptions): [RT, RT, RT] {
  const [B, Sq, HD] = q.shape;
  const Sk = k.shape[1];
  const H = opts.heads;
  const D = HD / H;
  const Dv = v.shape[2] / H;
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  const { out, lse } = rattentionFull(q, k, v, opts);
  const dq = new Float64Array(q.data.length);
  const dk = new Float64Array(k.data.length);
  const dv = new Float64Array(v.data.length);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let i = 0; i < Sq; i++) {
        const qo = (b * Sq + i) * HD + h * D;
        const oo = (b * Sq + i) * H * Dv + h * Dv;
        let Di = 0;
        for (let d = 0; d < Dv; d++) Di += g.data[oo + d] * out.data[oo + d];
        const L = lse.data[(b * H + h) * Sq + i];
        for (let j = 0; j < Sk; j++) {
          if (opts.causal && j > i) continue;
          const ko = (b * Sk + j) * HD + h * D;
          const vo = (b * Sk + j) * H * Dv + h * Dv;
          let s = 0;
          for (let d = 0; d < D; d++) s += q.data[qo + d] * k.data[ko + d];
          const p = Math.exp(s * scale - L);
          let dp = 0;
          for (let d = 0; d < Dv; d++) {
            dp += g.data[oo + d] * v.data[vo + d];
            dv[vo + d] += p * g.data[oo + d];
          }
          const ds = p * (dp - Di) * scale;
          for (let d = 0; d < D; d++) {
            dq[qo + d] += ds * k.data[ko + d];
            dk[ko + d] += ds * q.data[qo + d];
          }
        }
      }
  return [
    { shape: [...q.shape], data: dq },
    { shape: [...k.shape], data: dk },
    { shape: [...v.shape], data: dv },
  ];
}
