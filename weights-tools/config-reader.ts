// Typed, validated access to a diffusers/transformers config object. Every bad field becomes a
// BAD_CONFIG WeightsError naming the config file and the field, instead of a NaN shape later on.
import { WeightsError } from './errors.js';

export type ConfigObject = Record<string, unknown>;

export class ConfigReader {
  constructor(readonly cfg: ConfigObject, readonly file: string) {}

  fail(key: string, expected: string, found: unknown): never {
    throw new WeightsError('BAD_CONFIG', `config field "${key}" is invalid`, { file: this.file, expected, found: JSON.stringify(found) });
  }

  has(key: string): boolean {
    return this.cfg[key] !== undefined && this.cfg[key] !== null;
  }

  /** A positive integer (null/absent -> default). */
  int(key: string, def: number): number {
    const v = this.cfg[key] ?? def;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) this.fail(key, 'a positive integer', v);
    return v;
  }

  bool(key: string, def: boolean): boolean {
    const v = this.cfg[key] ?? def;
    if (typeof v !== 'boolean') this.fail(key, 'true or false', v);
    return v;
  }

  str(key: string, def: string | null): string | null {
    const v = this.cfg[key] ?? def;
    if (v !== null && typeof v !== 'string') this.fail(key, 'a string', v);
    return v;
  }

  strList(key: string, def: string[]): string[] {
    const v = this.cfg[key] ?? def;
    if (!Array.isArray(v) || v.length === 0 || !v.every((x) => typeof x === 'string')) this.fail(key, 'a non-empty list of strings', v);
    return v as string[];
  }

  intList(key: string, def: number[]): number[] {
    const v = this.cfg[key] ?? def;
    if (!Array.isArray(v) || v.length === 0 || !v.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x > 0)) {
      this.fail(key, 'a non-empty list of positive integers', v);
    }
    return v as number[];
  }

  /** An int replicated n times, or a list of exactly n ints (diffusers' per-block settings). */
  intPerBlock(key: string, def: number, n: number, value: unknown = this.cfg[key]): number[] {
    const v = value ?? def;
    if (typeof v === 'number') {
      if (!Number.isSafeInteger(v) || v <= 0) this.fail(key, 'a positive integer', v);
      return Array(n).fill(v);
    }
    if (!Array.isArray(v) || v.length !== n || !v.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x > 0)) {
      this.fail(key, `a positive integer or a list of ${n}`, v);
    }
    return v as number[];
  }

  /** Reject a feature this spec does not model, unless it is at its default. */
  requireDefault(key: string, def: unknown): void {
    const v = this.cfg[key];
    if (v !== undefined && v !== null && v !== def) {
      throw new WeightsError('BAD_CONFIG', `config field "${key}" uses an unsupported feature`, { file: this.file, expected: JSON.stringify(def), found: JSON.stringify(v) });
    }
  }
}

export function asConfigObject(v: unknown, file: string): ConfigObject {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) {
    throw new WeightsError('BAD_CONFIG', 'config is not a JSON object', { file, expected: 'a JSON object', found: Array.isArray(v) ? 'an array' : String(v) });
  }
  return v as ConfigObject;
}

export function parseConfigText(text: string, file: string): ConfigObject {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new WeightsError('BAD_CONFIG', `config is not valid JSON: ${(e as Error).message}`, { file, expected: 'a JSON object', found: JSON.stringify(text.slice(0, 40)) });
  }
  return asConfigObject(v, file);
}
