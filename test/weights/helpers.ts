// Shared helpers for the weights-tools tests.
import { expect } from 'vitest';
import { WeightsError, type WeightsErrorCode } from '../../weights-tools/errors.js';

export const GOLDEN = '/work/shared/golden';

/** Runs `fn` and checks it fails with a WeightsError of `code` that names `file` (and `tensor`) in its message. */
export async function expectWeightsError(
  fn: () => unknown, code: WeightsErrorCode, where: { file?: string; tensor?: string } = {},
): Promise<WeightsError> {
  let err: unknown;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  expect(err, `expected a WeightsError ${code}`).toBeInstanceOf(WeightsError);
  const we = err as WeightsError;
  expect(we.code, we.message).toBe(code);
  if (where.file !== undefined) {
    expect(we.file).toBe(where.file);
    expect(we.message).toContain(where.file);
  }
  if (where.tensor !== undefined) {
    expect(we.tensor).toBe(where.tensor);
    expect(we.message).toContain(where.tensor);
  }
  return we;
}

/** A safetensors file from a raw header (object or exact text) and data bytes, with an optional length override. */
export function rawFile(header: object | string, data: Uint8Array | number = 0, lenOverride?: bigint): Uint8Array {
  const text = typeof header === 'string' ? header : JSON.stringify(header);
  const h = new TextEncoder().encode(text);
  const d = typeof data === 'number' ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + h.length + d.length);
  new DataView(out.buffer).setBigUint64(0, lenOverride ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(d, 8 + h.length);
  return out;
}
