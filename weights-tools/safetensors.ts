// Strict safetensors reader/writer (browser-safe: no Node imports).
// Layout: 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data region.
// The reader only ever fetches the header and the tensors asked for, so a 3.5 GB UNet costs nothing
// to open; every inconsistency in the header is rejected up front with a WeightsError.
import { WeightsError } from './errors.js';
import { findDuplicateKey } from './header-json.js';
import {
  DTYPE_BYTES, isStDtype, bytesToF32, bytesToI64, f32ToF16Bits, alignedBytes, type StDtype,
} from './dtype.js';

export type { StDtype } from './dtype.js';
export {
  DTYPE_BYTES, f16ToF32, f16BitsToF32, bf16BitsToF32, f32ToF16Bits, f32ToBf16Bits, f32BitsToF16Bits,
} from './dtype.js';
export { blobSource, httpSource, bytesSource } from './byte-sources.js';

export interface ByteSource {
  readonly name: string;
  readonly size: number;
  read(offset: number, length: number): Promise<Uint8Array>;
  close?(): Promise<void>;
}

export interface TensorInfo {
  name: string;
  dtype: StDtype;
  shape: number[];
  /** Absolute offset in the file. */
  byteOffset: number;
  byteLength: number;
}

/** Read API shared by a single file and a sharded set. */
export interface TensorReader {
  readonly name: string;
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  readonly metadata: Record<string, string>;
  readBytes(name: string): Promise<Uint8Array>;
  readF32(name: string): Promise<Float32Array>;
  readI64(name: string): Promise<BigInt64Array>;
  readAsF16Bits(name: string): Promise<Uint16Array>;
  close(): Promise<void>;
}

export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export class SafetensorsFile implements TensorReader {
  constructor(
    readonly source: ByteSource,
    /** In file (offset) order. */
    readonly tensors: Map<string, TensorInfo>,
    readonly metadata: Record<string, string>,
    /** Where the data region starts (8 + header length). */
    readonly dataStart: number,
  ) {}

  get name(): string {
    return this.source.name;
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new WeightsError('MISSING_TENSOR', 'no such tensor in this file', { file: this.name, tensor: name });
    return t;
  }

  async readBytes(name: string): Promise<Uint8Array> {
    const t = this.info(name);
    return readExact(this.source, t.byteOffset, t.byteLength, name);
  }

  async readF32(name: string): Promise<Float32Array> {
    return decodeF32(this.info(name), await this.readBytes(name), this.name);
  }

  async readI64(name: string): Promise<BigInt64Array> {
    return decodeI64(this.info(name), await this.readBytes(name), this.name);
  }

  async readAsF16Bits(name: string): Promise<Uint16Array> {
    return decodeF16Bits(this.info(name), await this.readBytes(name), this.name);
  }

  async close(): Promise<void> {
    await this.source.close?.();
  }
}

/** Tensor bytes -> f32 (from F32, F16, BF16, F64 and integer dtypes). */
export function decodeF32(t: TensorInfo, bytes: Uint8Array, file: string): Float32Array {
  const out = bytesToF32(t.dtype, bytes);
  if (!out) throw badDtype(file, t, 'a dtype convertible to F32');
  return out;
}

/** Tensor bytes -> int64 (from any integer dtype). */
export function decodeI64(t: TensorInfo, bytes: Uint8Array, file: string): BigInt64Array {
  const out = bytesToI64(t.dtype, bytes);
  if (!out) throw badDtype(file, t, 'an integer dtype');
  return out;
}

/** Tensor bytes -> f16 bit patterns (F16 as is; F32, BF16, F64 rounded to nearest even). */
export function decodeF16Bits(t: TensorInfo, bytes: Uint8Array, file: string): Uint16Array {
  if (t.dtype === 'F16') {
    const b = alignedBytes(bytes, 2);
    return new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2);
  }
  if (t.dtype !== 'F32' && t.dtype !== 'BF16' && t.dtype !== 'F64') throw badDtype(file, t, 'F16, F32, BF16 or F64');
  return f32ToF16Bits(decodeF32(t, bytes, file));
}

function badDtype(file: string, t: TensorInfo, expected: string): WeightsError {
  return new WeightsError('BAD_DTYPE', 'cannot convert this tensor', { file, tensor: t.name, expected, found: t.dtype });
}

async function readExact(src: ByteSource, offset: number, length: number, tensor?: string): Promise<Uint8Array> {
  let bytes: Uint8Array;
  try {
    bytes = await src.read(offset, length);
  } catch (e) {
    if (e instanceof WeightsError) throw e;
    throw new WeightsError('IO', `read of ${length} bytes at ${offset} failed: ${(e as Error)?.message ?? e}`, {
      file: src.name, tensor, cause: e,
    });
  }
  if (bytes.byteLength !== length) {
    throw new WeightsError('TRUNCATED', `short read at offset ${offset}`, {
      file: src.name, tensor, expected: `${length} bytes`, found: `${bytes.byteLength} bytes`,
    });
  }
  return bytes;
}

export async function openSafetensors(src: ByteSource): Promise<SafetensorsFile> {
  const file = src.name;
  const size = src.size;
  if (!Number.isSafeInteger(size) || size < 8) {
    throw new WeightsError('TRUNCATED', 'file too small for the 8-byte header length', {
      file, expected: 'at least 8 bytes', found: `${size} bytes`,
    });
  }
  const lenBytes = await readExact(src, 0, 8);
  const n = new DataView(lenBytes.buffer, lenBytes.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw new WeightsError('HEADER_TOO_LARGE', 'header length is implausibly large', {
      file, expected: `at most ${MAX_HEADER_BYTES} bytes`, found: `${n} bytes`,
    });
  }
  if (n > BigInt(size - 8)) {
    throw new WeightsError('TRUNCATED', 'header length runs past the end of the file', {
      file, expected: `at most ${size - 8} header bytes`, found: `${n}`,
    });
  }
  const headerLen = Number(n);
  const headerBytes = await readExact(src, 8, headerLen);
  const { tensors, metadata } = parseHeader(headerBytes, file, size - 8 - headerLen, 8 + headerLen);
  return new SafetensorsFile(src, tensors, metadata, 8 + headerLen);
}

/**
 * Validate a header against a data region of `dataSize` bytes starting at `dataStart`.
 * Exported for tests and tools that already hold the header bytes.
 */
export function parseHeader(
  headerBytes: Uint8Array, file: string, dataSize: number, dataStart: number,
): { tensors: Map<string, TensorInfo>; metadata: Record<string, string> } {
  let text: string;
  let json: unknown;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
    json = JSON.parse(text);
  } catch (e) {
    throw new WeightsError('HEADER_NOT_JSON', `header is not valid UTF-8 JSON: ${(e as Error).message}`, {
      file, expected: 'a JSON object', found: preview(headerBytes),
    });
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new WeightsError('HEADER_NOT_JSON', 'header JSON is not an object', {
      file, expected: 'a JSON object', found: Array.isArray(json) ? 'an array' : json === null ? 'null' : typeof json,
    });
  }
  const dup = findDuplicateKey(text);
  if (dup) {
    throw new WeightsError('DUPLICATE', dup.depth === 1 ? 'tensor name appears twice in the header' : `key "${dup.key}" appears twice in this entry`, {
      file, tensor: dup.topKey, expected: 'unique keys', found: `"${dup.key}" twice`,
    });
  }
  const obj = json as Record<string, unknown>;
  const metadata = parseMetadata(obj['__metadata__'], file);
  const list: TensorInfo[] = [];
  for (const [name, entry] of Object.entries(obj)) {
    if (name === '__metadata__') continue;
    list.push(parseEntry(name, entry, file, dataStart));
  }
  checkCoverage(list, file, dataSize, dataStart);
  return { tensors: new Map(list.map((t) => [t.name, t])), metadata };
}

function preview(bytes: Uint8Array): string {
  const s = new TextDecoder('utf-8').decode(bytes.subarray(0, 40));
  return JSON.stringify(s + (bytes.length > 40 ? '…' : ''));
}

function parseMetadata(m: unknown, file: string): Record<string, string> {
  if (m === undefined) return {};
  if (m === null || typeof m !== 'object' || Array.isArray(m)) {
    throw new WeightsError('BAD_METADATA', '__metadata__ must be an object', { file, tensor: '__metadata__', expected: 'object of strings', found: JSON.stringify(m) });
  }
  const out: Record<string, string> = Object.create(null); // a "__proto__" key stays a plain entry
  for (const [k, v] of Object.entries(m)) {
    if (typeof v !== 'string') {
      throw new WeightsError('BAD_METADATA', `__metadata__ value for "${k}" is not a string`, { file, tensor: '__metadata__', expected: 'string', found: JSON.stringify(v) });
    }
    out[k] = v;
  }
  return out;
}

function isCount(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

function parseEntry(name: string, e: unknown, file: string, dataStart: number): TensorInfo {
  const ctx = { file, tensor: name };
  if (e === null || typeof e !== 'object' || Array.isArray(e)) {
    throw new WeightsError('BAD_ENTRY', 'header entry is not an object', { ...ctx, expected: '{dtype, shape, data_offsets}', found: JSON.stringify(e) });
  }
  const { dtype, shape, data_offsets: offs } = e as Record<string, unknown>;
  if (!isStDtype(dtype)) {
    throw new WeightsError('BAD_DTYPE', 'unknown dtype', { ...ctx, expected: Object.keys(DTYPE_BYTES).join('|'), found: JSON.stringify(dtype) });
  }
  if (!Array.isArray(shape) || !shape.every(isCount)) {
    throw new WeightsError('BAD_SHAPE', 'shape must be an array of non-negative integers', { ...ctx, expected: 'e.g. [320, 4, 3, 3]', found: JSON.stringify(shape) });
  }
  if (!Array.isArray(offs) || offs.length !== 2 || !isCount(offs[0]) || !isCount(offs[1]) || offs[0] > offs[1]) {
    throw new WeightsError('BAD_OFFSETS', 'data_offsets must be [begin, end] with 0 <= begin <= end', { ...ctx, expected: '[begin, end]', found: JSON.stringify(offs) });
  }
  let bytes = DTYPE_BYTES[dtype];
  for (const d of shape as number[]) bytes *= d;
  const [begin, end] = offs as [number, number];
  if (!Number.isSafeInteger(bytes) || end - begin !== bytes) {
    throw new WeightsError('SIZE_MISMATCH', `data_offsets span does not match ${dtype} x [${shape.join(', ')}]`, {
      ...ctx, expected: `${bytes} bytes`, found: `${end - begin} bytes ([${begin}, ${end}])`,
    });
  }
  return { name, dtype, shape: [...(shape as number[])], byteOffset: dataStart + begin, byteLength: bytes };
}

/**
 * Tensors must tile the data region exactly: no overlap, no hole, no trailing bytes. A layout that
 * tiles correctly but runs past the end of the file means the file was cut short (TRUNCATED); a
 * tensor pointing past the end of an otherwise inconsistent layout has bad offsets (BAD_OFFSETS).
 */
function checkCoverage(list: TensorInfo[], file: string, dataSize: number, dataStart: number): void {
  list.sort((a, b) => a.byteOffset - b.byteOffset || a.byteLength - b.byteLength);
  let pos = 0;
  let prev: TensorInfo | undefined;
  let problem: WeightsError | undefined;
  let beyond: TensorInfo | undefined;
  for (const t of list) {
    const begin = t.byteOffset - dataStart;
    if (!problem && begin < pos) {
      problem = new WeightsError('OVERLAP', `data overlaps tensor "${prev!.name}" (which ends at ${pos})`, {
        file, tensor: t.name, expected: `begin >= ${pos}`, found: `begin ${begin}`,
      });
    } else if (!problem && begin > pos) {
      problem = new WeightsError('GAP', `${begin - pos} unused bytes before this tensor`, {
        file, tensor: t.name, expected: `begin ${pos}`, found: `begin ${begin}`,
      });
    }
    if (!beyond && begin + t.byteLength > dataSize) beyond = t;
    pos = Math.max(pos, begin + t.byteLength);
    prev = t;
  }
  if (beyond && problem) {
    const b = beyond.byteOffset - dataStart;
    throw new WeightsError('BAD_OFFSETS', 'data_offsets point past the end of the data region', {
      file, tensor: beyond.name, expected: `end <= ${dataSize}`, found: `[${b}, ${b + beyond.byteLength}]`,
    });
  }
  if (beyond) {
    throw new WeightsError('TRUNCATED', 'file ends before the data the header describes', {
      file, tensor: beyond.name, expected: `${dataStart + pos} bytes`, found: `${dataStart + dataSize} bytes`,
    });
  }
  if (problem) throw problem;
  if (pos < dataSize) {
    throw new WeightsError('GAP', `${dataSize - pos} trailing bytes after the last tensor`, {
      file, tensor: prev?.name, expected: `data region of ${pos} bytes`, found: `${dataSize} bytes`,
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Writer

export interface TensorToWrite {
  name: string;
  dtype: StDtype;
  shape: number[];
}

/**
 * The header bytes (8-byte length + JSON padded with spaces so the data starts 8-byte aligned)
 * for tensors laid out back to back in the given order. Shared by the in-memory and streaming writers.
 */
export function encodeHeader(tensors: TensorToWrite[], metadata?: Record<string, string>, file = '<output>'): Uint8Array<ArrayBuffer> {
  const parts: string[] = [];
  if (metadata && Object.keys(metadata).length) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new WeightsError('BAD_METADATA', `metadata value for "${k}" is not a string`, { file, tensor: '__metadata__', expected: 'string', found: typeof v });
    }
    parts.push(`"__metadata__":${JSON.stringify(metadata)}`);
  }
  const seen = new Set<string>();
  let offset = 0;
  for (const t of tensors) {
    if (t.name === '__metadata__') throw new WeightsError('BAD_ENTRY', 'reserved tensor name', { file, tensor: t.name });
    if (seen.has(t.name)) throw new WeightsError('DUPLICATE', 'tensor name given twice', { file, tensor: t.name });
    seen.add(t.name);
    if (!isStDtype(t.dtype)) throw new WeightsError('BAD_DTYPE', 'unknown dtype', { file, tensor: t.name, found: String(t.dtype) });
    if (!Array.isArray(t.shape) || !t.shape.every(isCount)) throw new WeightsError('BAD_SHAPE', 'bad shape', { file, tensor: t.name, found: JSON.stringify(t.shape) });
    const bytes = tensorBytes(t);
    parts.push(`${JSON.stringify(t.name)}:{"dtype":"${t.dtype}","shape":${JSON.stringify(t.shape)},"data_offsets":[${offset},${offset + bytes}]}`);
    offset += bytes;
  }
  const json = new TextEncoder().encode(`{${parts.join(',')}}`);
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded).fill(0x20, 8);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  return out;
}

export function tensorBytes(t: TensorToWrite): number {
  return t.shape.reduce((a, d) => a * d, DTYPE_BYTES[t.dtype]);
}

/** Raw bytes of a typed array or DataView (no copy). */
export function viewBytes(data: ArrayBufferView): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

export function checkDataSize(t: TensorToWrite, data: ArrayBufferView, file = '<output>'): void {
  const want = tensorBytes(t);
  if (data.byteLength !== want) {
    throw new WeightsError('SIZE_MISMATCH', `data does not match ${t.dtype} x [${t.shape.join(', ')}]`, {
      file, tensor: t.name, expected: `${want} bytes`, found: `${data.byteLength} bytes`,
    });
  }
}

export function encodeSafetensors(
  tensors: Array<TensorToWrite & { data: ArrayBufferView }>, metadata?: Record<string, string>,
): Uint8Array<ArrayBuffer> {
  const header = encodeHeader(tensors, metadata);
  let total = header.length;
  for (const t of tensors) {
    checkDataSize(t, t.data);
    total += t.data.byteLength;
  }
  const out = new Uint8Array(total);
  out.set(header, 0);
  let pos = header.length;
  for (const t of tensors) {
    out.set(viewBytes(t.data), pos);
    pos += t.data.byteLength;
  }
  return out;
}

export { openSharded, ShardedSafetensors } from './sharded.js';
