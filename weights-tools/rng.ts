// Small seeded PRNG: xoshiro128** seeded through splitmix32 from (seed, stream name). Each tensor
// gets its own stream keyed by its name, so a tensor's values do not depend on the write order or
// on which other tensors exist.

function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

function splitmix32(state: { x: number }): number {
  let z = (state.x = (state.x + 0x9e3779b9) | 0);
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

const TWO_PI = 2 * Math.PI;
const INV_2_32 = 1 / 4294967296;

export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  constructor(seed: number, stream = '') {
    if (!Number.isSafeInteger(seed)) throw new RangeError(`seed must be a safe integer, got ${seed}`);
    const hi = Math.floor(seed / 4294967296) | 0;
    const st = { x: (seed | 0) ^ Math.imul(hi, 0x27d4eb2d) ^ fnv1a(stream) };
    this.s0 = splitmix32(st);
    this.s1 = splitmix32(st);
    this.s2 = splitmix32(st);
    this.s3 = splitmix32(st) | 1; // never the all-zero state
  }

  nextU32(): number {
    const s1 = this.s1;
    const r = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return r;
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.nextU32() * INV_2_32;
  }

  /** Fill with U(lo, hi). The state lives in locals in the hot loop (this is ~all of make-model's time). */
  fillUniform(out: Float32Array, lo: number, hi: number): Float32Array {
    let s0 = this.s0, s1 = this.s1, s2 = this.s2, s3 = this.s3;
    const scale = (hi - lo) * INV_2_32;
    for (let i = 0; i < out.length; i++) {
      const r = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
      const t = s1 << 9;
      s2 ^= s0;
      s3 ^= s1;
      s1 ^= s2;
      s0 ^= s3;
      s2 ^= t;
      s3 = (s3 << 11) | (s3 >>> 21);
      out[i] = lo + r * scale;
    }
    this.s0 = s0; this.s1 = s1; this.s2 = s2; this.s3 = s3;
    return out;
  }

  /** Fill with N(mean, std) by Box-Muller (both outputs of each pair are used). */
  fillNormal(out: Float32Array, mean = 0, std = 1): Float32Array {
    for (let i = 0; i < out.length; i += 2) {
      const u1 = (this.nextU32() + 0.5) * INV_2_32; // (0, 1): log never sees 0
      const u2 = this.nextU32() * INV_2_32;
      const rad = Math.sqrt(-2 * Math.log(u1));
      out[i] = mean + std * rad * Math.cos(TWO_PI * u2);
      if (i + 1 < out.length) out[i + 1] = mean + std * rad * Math.sin(TWO_PI * u2);
    }
    return out;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
