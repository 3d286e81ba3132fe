// Mutation fuzzing of the safetensors reader: whatever the bytes, the outcome is either a file whose
// every tensor reads back, or a WeightsError; never a TypeError, RangeError or anything else.
import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { openSafetensors, encodeSafetensors, bytesSource } from '../../weights-tools/safetensors.js';
import { WeightsError } from '../../weights-tools/errors.js';
import { Rng } from '../../weights-tools/rng.js';
import { GOLDEN } from './helpers.js';

const enc = new TextEncoder();
const dec = new TextDecoder();

function bases(): Uint8Array[] {
  return [
    encodeSafetensors([
      { name: 'w', dtype: 'F32', shape: [2, 3], data: Float32Array.of(1, 2, 3, 4, 5, 6) },
      { name: 'b', dtype: 'F16', shape: [3], data: Uint16Array.of(0x3c00, 0, 0x7c00) },
      { name: 'ids', dtype: 'I64', shape: [1, 2], data: BigInt64Array.of(0n, 1n) },
      { name: 's', dtype: 'BF16', shape: [], data: Uint16Array.of(0x3f80) },
      { name: 'z', dtype: 'U8', shape: [0], data: new Uint8Array(0) },
    ], { format: 'pt' }),
    encodeSafetensors([{ name: 'only', dtype: 'F64', shape: [2], data: Float64Array.of(1, 2) }]),
    new Uint8Array(readFileSync(`${GOLDEN}/models/clip_vision_24/model.safetensors`)),
  ];
}

function headerRange(f: Uint8Array): [number, number] {
  const n = f.length >= 8 ? Number(new DataView(f.buffer, f.byteOffset, 8).getBigUint64(0, true)) : 0;
  return [8, Math.min(f.length, 8 + n)];
}

const TOKENS = ['{', '}', '[', ']', '"', ',', ':', '0', '9', '-', '1e9', 'F32', 'I64', 'X', '\\', ' ', 'null', '"w"', '18446744073709551616', '-0', '1.5'];

function mutate(base: Uint8Array, rng: Rng): Uint8Array {
  const f = base.slice();
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(rng.next() * xs.length)];
  const [h0, h1] = headerRange(f);
  switch (Math.floor(rng.next() * 8)) {
    case 0: { // bit flips anywhere
      for (let k = 1 + Math.floor(rng.next() * 4); k > 0; k--) f[Math.floor(rng.next() * f.length)] ^= 1 << Math.floor(rng.next() * 8);
      return f;
    }
    case 1: { // bit flips in the header
      for (let k = 1 + Math.floor(rng.next() * 3); k > 0; k--) f[h0 + Math.floor(rng.next() * (h1 - h0))] ^= 1 << Math.floor(rng.next() * 8);
      return f;
    }
    case 2: // truncation
      return f.slice(0, Math.floor(rng.next() * f.length));
    case 3: { // trailing garbage
      const extra = Uint8Array.from({ length: 1 + Math.floor(rng.next() * 16) }, () => rng.nextU32() & 0xff);
      const out = new Uint8Array(f.length + extra.length);
      out.set(f);
      out.set(extra, f.length);
      return out;
    }
    case 4: { // header length prefix edits
      const dv = new DataView(f.buffer);
      const n = dv.getBigUint64(0, true);
      const choices = [n + 1n, n - 1n, n + 8n, 0n, n * 2n, 2n ** 63n, BigInt(f.length), BigInt(rng.nextU32())];
      dv.setBigUint64(0, BigInt.asUintN(64, pick(choices)), true);
      return f;
    }
    default: { // textual header edits, keeping the length prefix consistent
      let text = dec.decode(f.subarray(h0, h1));
      const at = Math.floor(rng.next() * (text.length + 1));
      const op = rng.next();
      if (op < 0.3) {
        const nums = [...text.matchAll(/\d+/g)];
        if (nums.length) {
          const m = pick(nums);
          const repl = pick(['0', '1', '4', '7', '8', '12', '1000000', '999999999999999999', String(Number(m[0]) + 4), String(Number(m[0]) - 4)]);
          text = text.slice(0, m.index) + repl + text.slice(m.index! + m[0].length);
        }
      } else if (op < 0.5) {
        text = text.slice(0, at) + text.slice(at + 1 + Math.floor(rng.next() * 4));
      } else if (op < 0.7) {
        text = text.slice(0, at) + pick(TOKENS) + text.slice(at);
      } else if (op < 0.85) {
        text = text.replace(pick(['"F32"', '"F16"', '"I64"', '"BF16"', '"F64"', '"U8"']), pick(['"F32"', '"F16"', '"I64"', '"I8"', '"BOOL"', '"Q4"', '"F8_E4M3"']));
      } else {
        const entries = [...text.matchAll(/"[^"]+":\{[^{}]*\}/g)];
        if (entries.length) text = text.replace(/^\{/, `{${pick(entries)[0]},`);
      }
      const h = enc.encode(text);
      const out = new Uint8Array(8 + h.length + (f.length - h1));
      new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
      out.set(h, 8);
      out.set(f.subarray(h1), 8 + h.length);
      return out;
    }
  }
}

describe('safetensors fuzz', () => {
  it('every mutated file loads completely or fails with a WeightsError', async () => {
    const rng = new Rng(20240601, 'fuzz');
    const files = bases();
    const outcomes: Record<string, number> = {};
    const N = 4000;
    for (let i = 0; i < N; i++) {
      const base = files[i % 10 === 9 ? 2 : i % 2];
      const bytes = mutate(base, rng);
      try {
        const f = await openSafetensors(bytesSource(bytes, `case${i}.safetensors`));
        let covered = 0;
        for (const [name, t] of f.tensors) {
          const raw = await f.readBytes(name);
          expect(raw.byteLength).toBe(t.byteLength);
          covered += t.byteLength;
          try {
            await f.readF32(name);
          } catch (e) {
            if (!(e instanceof WeightsError && e.code === 'BAD_DTYPE')) throw e;
          }
        }
        expect(f.dataStart + covered).toBe(bytes.length);
        outcomes.ok = (outcomes.ok ?? 0) + 1;
      } catch (e) {
        if (!(e instanceof WeightsError)) {
          throw new Error(`case ${i}: unexpected ${(e as Error)?.name}: ${(e as Error)?.message}`);
        }
        expect(e.message).toContain(`case${i}.safetensors`);
        outcomes[e.code] = (outcomes[e.code] ?? 0) + 1;
      }
    }
    // The mutations reach many distinct checks, and some mutants are still valid files.
    expect(Object.keys(outcomes).length).toBeGreaterThanOrEqual(9);
    expect(outcomes.ok).toBeGreaterThan(0);
  }, 30_000);
});
