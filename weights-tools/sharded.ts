// Sharded checkpoints (`*.safetensors.index.json` with a `weight_map` of tensor -> shard file),
// presented through the same read API as a single file.
import { WeightsError } from './errors.js';
import type { SafetensorsFile, TensorInfo, TensorReader } from './safetensors.js';

export class ShardedSafetensors implements TensorReader {
  readonly tensors = new Map<string, TensorInfo>();
  private readonly owner = new Map<string, SafetensorsFile>();

  constructor(
    readonly name: string,
    readonly shards: ReadonlyMap<string, SafetensorsFile>,
    readonly metadata: Record<string, string>,
  ) {
    for (const shard of shards.values()) {
      for (const [n, t] of shard.tensors) {
        this.tensors.set(n, t);
        this.owner.set(n, shard);
      }
    }
  }

  /** The shard holding `name` (its byteOffset in TensorInfo is relative to that shard). */
  shardOf(name: string): SafetensorsFile {
    const s = this.owner.get(name);
    if (!s) throw new WeightsError('MISSING_TENSOR', 'no such tensor in any shard', { file: this.name, tensor: name });
    return s;
  }

  readBytes(name: string): Promise<Uint8Array> {
    return this.shardOf(name).readBytes(name);
  }
  readF32(name: string): Promise<Float32Array> {
    return this.shardOf(name).readF32(name);
  }
  readI64(name: string): Promise<BigInt64Array> {
    return this.shardOf(name).readI64(name);
  }
  readAsF16Bits(name: string): Promise<Uint16Array> {
    return this.shardOf(name).readAsF16Bits(name);
  }
  async close(): Promise<void> {
    await Promise.all([...this.shards.values()].map((s) => s.close()));
  }
}

/**
 * Open every shard named in the index and check that the shards hold exactly the tensors the
 * weight_map assigns to them (nothing missing, nothing extra, nothing in two shards).
 */
export async function openSharded(
  indexJsonText: string,
  openShard: (file: string) => Promise<SafetensorsFile>,
  indexName = 'model.safetensors.index.json',
): Promise<ShardedSafetensors> {
  const weightMap = parseIndex(indexJsonText, indexName);
  const byShard = new Map<string, string[]>();
  for (const [tensor, file] of weightMap) {
    const list = byShard.get(file) ?? [];
    list.push(tensor);
    byShard.set(file, list);
  }
  const shards = new Map<string, SafetensorsFile>();
  try {
    for (const [file, expected] of byShard) {
      const shard = await openShard(file);
      shards.set(file, shard);
      for (const t of expected) {
        if (!shard.tensors.has(t)) {
          throw new WeightsError('MISSING_TENSOR', `the index assigns this tensor to shard "${file}" but the shard lacks it`, {
            file: shard.name, tensor: t, expected: `present in ${file}`, found: 'absent',
          });
        }
      }
      for (const t of shard.tensors.keys()) {
        const owner = weightMap.get(t);
        if (owner !== file) {
          throw new WeightsError(owner !== undefined ? 'DUPLICATE' : 'UNEXPECTED_TENSOR', 'shard holds a tensor the index does not assign to it', {
            file: shard.name, tensor: t, expected: owner !== undefined ? `only in ${owner}` : 'listed in weight_map', found: `in ${file}`,
          });
        }
      }
    }
  } catch (e) {
    await Promise.allSettled([...shards.values()].map((s) => s.close()));
    throw e;
  }
  return new ShardedSafetensors(indexName, shards, {});
}

function parseIndex(text: string, file: string): Map<string, string> {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new WeightsError('BAD_INDEX', `index is not JSON: ${(e as Error).message}`, { file });
  }
  const wm = (json as { weight_map?: unknown } | null)?.weight_map;
  if (wm === null || typeof wm !== 'object' || Array.isArray(wm)) {
    throw new WeightsError('BAD_INDEX', 'index has no weight_map object', { file, expected: '{"weight_map": {tensor: file}}', found: JSON.stringify(json)?.slice(0, 80) });
  }
  for (const [k, v] of Object.entries(wm)) {
    if (typeof v !== 'string' || v === '') {
      throw new WeightsError('BAD_INDEX', 'weight_map value is not a file name', { file, tensor: k, expected: 'a shard file name', found: JSON.stringify(v) });
    }
  }
  return new Map(Object.entries(wm as Record<string, string>));
}
