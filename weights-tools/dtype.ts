// Safetensors dtypes and the CPU-side conversions between them (browser-safe).
// All multi-byte data is little-endian, as in the safetensors format; typed-array views assume a
// little-endian host, which holds for every platform WebGPU runs on.

export type StDtype =
  | 'F64' | 'F32' | 'F16' | 'BF16'
  | 'I64' | 'I32' | 'I16' | 'I8'
  | 'U64' | 'U32' | 'U16' | 'U8'
  | 'BOOL' | 'F8_E4M3' | 'F8_E5M2';

export const DTYPE_BYTES: Readonly<Record<StDtype, number>> = {
  F64: 8, F32: 4, F16: 2, BF16: 2,
  I64: 8, I32: 4, I16: 2, I8: 1,
  U64: 8, U32: 4, U16: 2, U8: 1,
  BOOL: 1, F8_E4M3: 1, F8_E5M2: 1,
};

export function isStDtype(x: unknown): x is StDtype {
  return typeof x === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_BYTES, x);
}

/** One IEEE half (given as its 16 bits) to a JS number. */
export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24; // zero / subnormal
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

// 65536-entry table: bulk f16 decode becomes one lookup per element.
let f16Table: Float32Array | undefined;
function table(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) f16Table[i] = f16ToF32(i);
  }
  return f16Table;
}

export function f16BitsToF32(src: Uint16Array): Float32Array {
  const t = table();
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = t[src[i]];
  return out;
}

export function bf16BitsToF32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return out;
}

/** f32 bit pattern -> f16 bit pattern, round-to-nearest-even, overflow to inf, NaN kept quiet. */
export function f32BitsToF16Bits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 112; // rebias 127 -> 15
  if (e >= 0x1f) return sign | 0x7c00;
  if (e >= 1) {
    let h = sign | (e << 10) | (mant >>> 13);
    const rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++; // a carry into the exponent is correct rounding
    return h;
  }
  // Result is a half subnormal (or zero): mantissa in units of 2^-24.
  const shift = 14 - e;
  if (shift > 24) return sign;
  const m = mant | 0x800000;
  let r = m >>> shift;
  const rem = m & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rem > half || (rem === half && (r & 1))) r++;
  return sign | r;
}

export function f32ToF16Bits(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = f32BitsToF16Bits(bits[i]);
  return out;
}

/** f32 -> bf16 bits, round-to-nearest-even; NaN stays NaN. */
export function f32ToBf16Bits(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const x = bits[i];
    if ((x & 0x7f800000) === 0x7f800000 && x & 0x7fffff) {
      out[i] = (x >>> 16) | 0x40;
    } else {
      out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
    }
  }
  return out;
}

/** A copy of `bytes` when it is not aligned for `elem`-byte elements, else the same bytes. */
export function alignedBytes(bytes: Uint8Array, elem: number): Uint8Array {
  return bytes.byteOffset % elem === 0 ? bytes : bytes.slice();
}

/** Typed view over raw little-endian bytes of the given dtype (copying only to fix alignment). */
export function typedView(dtype: StDtype, raw: Uint8Array): ArrayLike<number | bigint> {
  const b = alignedBytes(raw, DTYPE_BYTES[dtype]);
  const n = b.byteLength / DTYPE_BYTES[dtype];
  switch (dtype) {
    case 'F64': return new Float64Array(b.buffer, b.byteOffset, n);
    case 'F32': return new Float32Array(b.buffer, b.byteOffset, n);
    case 'F16': case 'BF16': case 'U16': return new Uint16Array(b.buffer, b.byteOffset, n);
    case 'I64': return new BigInt64Array(b.buffer, b.byteOffset, n);
    case 'U64': return new BigUint64Array(b.buffer, b.byteOffset, n);
    case 'I32': return new Int32Array(b.buffer, b.byteOffset, n);
    case 'U32': return new Uint32Array(b.buffer, b.byteOffset, n);
    case 'I16': return new Int16Array(b.buffer, b.byteOffset, n);
    case 'I8': return new Int8Array(b.buffer, b.byteOffset, n);
    case 'U8': case 'BOOL': case 'F8_E4M3': case 'F8_E5M2': return b;
  }
}

/** Raw bytes -> Float32Array, or undefined when the dtype has no f32 meaning here (F8). */
export function bytesToF32(dtype: StDtype, raw: Uint8Array): Float32Array | undefined {
  switch (dtype) {
    case 'F32': {
      const b = alignedBytes(raw, 4);
      return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
    }
    case 'F16': return f16BitsToF32(typedView('F16', raw) as Uint16Array);
    case 'BF16': return bf16BitsToF32(typedView('BF16', raw) as Uint16Array);
    case 'F8_E4M3': case 'F8_E5M2': return undefined;
    case 'BOOL': return Float32Array.from(raw, (v) => (v ? 1 : 0));
    default: {
      const v = typedView(dtype, raw);
      const out = new Float32Array(v.length);
      for (let i = 0; i < v.length; i++) out[i] = Number(v[i]);
      return out;
    }
  }
}

/** Raw bytes of an integer dtype -> BigInt64Array, or undefined for float dtypes. */
export function bytesToI64(dtype: StDtype, raw: Uint8Array): BigInt64Array | undefined {
  if (dtype === 'I64') {
    const b = alignedBytes(raw, 8);
    return new BigInt64Array(b.buffer, b.byteOffset, b.byteLength / 8);
  }
  if (!['I32', 'I16', 'I8', 'U8', 'U16', 'U32', 'U64', 'BOOL'].includes(dtype)) return undefined;
  const v = typedView(dtype, raw);
  const out = new BigInt64Array(v.length);
  for (let i = 0; i < v.length; i++) out[i] = BigInt.asIntN(64, BigInt(v[i]));
  return out;
}
