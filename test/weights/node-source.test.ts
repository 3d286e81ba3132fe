import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtemp, rm, mkdir, writeFile, copyFile, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileSource, openSafetensorsFile, writeSafetensorsFile, nodeFolder } from '../../weights-tools/node-source.js';
import { openSafetensors, encodeSafetensors, type ByteSource } from '../../weights-tools/safetensors.js';
import { openModelFolder, openWeights, readConfig } from '../../weights-tools/model-folder.js';
import { inspectPath } from '../../weights-tools/inspect.js';
import { expectWeightsError, GOLDEN } from './helpers.js';

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'weights-node-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const UNET = join(GOLDEN, 'models/unet_sd1');

describe('fileSource', () => {
  it('throws NOT_FOUND naming the path', async () => {
    const p = join(tmp, 'nope.safetensors');
    await expectWeightsError(() => fileSource(p), 'NOT_FOUND', { file: p });
    await expectWeightsError(() => openSafetensorsFile(p), 'NOT_FOUND', { file: p });
    await expectWeightsError(() => fileSource(tmp), 'NOT_FOUND', { file: tmp });
  });

  it('opening reads only the header, and each tensor reads only its bytes', async () => {
    const inner = await fileSource(join(UNET, 'diffusion_pytorch_model.safetensors'));
    let read = 0;
    const counting: ByteSource = { name: inner.name, size: inner.size, read: (o, l) => ((read += l), inner.read(o, l)), close: () => inner.close!() };
    const f = await openSafetensors(counting);
    expect(read).toBe(f.dataStart);
    expect(read).toBeLessThan(inner.size / 50);
    const t = f.tensors.get('conv_in.weight')!;
    await f.readF32('conv_in.weight');
    expect(read).toBe(f.dataStart + t.byteLength);
    await f.close();
  });
});

describe('writeSafetensorsFile', () => {
  it('streams lazily produced tensors and reads back', async () => {
    const p = join(tmp, 'stream.safetensors');
    const produced: string[] = [];
    const make = (name: string, n: number) => () => {
      produced.push(name);
      return Float32Array.from({ length: n }, (_, i) => i);
    };
    const { bytes } = await writeSafetensorsFile(p, [
      { name: 'a', dtype: 'F32', shape: [1000], data: make('a', 1000) },
      { name: 'b', dtype: 'F32', shape: [10, 10], data: make('b', 100) },
      { name: 'c', dtype: 'I64', shape: [2], data: BigInt64Array.of(5n, 6n) },
    ], { format: 'pt' });
    expect(produced).toEqual(['a', 'b']);
    const f = await openSafetensorsFile(p);
    expect(f.source.size).toBe(bytes);
    expect((await f.readF32('b'))[99]).toBe(99);
    expect([...(await f.readI64('c'))]).toEqual([5n, 6n]);
    expect(f.metadata).toEqual({ format: 'pt' });
    await f.close();
    // Byte-identical to the in-memory encoder.
    const mem = encodeSafetensors([
      { name: 'a', dtype: 'F32', shape: [1000], data: Float32Array.from({ length: 1000 }, (_, i) => i) },
      { name: 'b', dtype: 'F32', shape: [10, 10], data: Float32Array.from({ length: 100 }, (_, i) => i) },
      { name: 'c', dtype: 'I64', shape: [2], data: BigInt64Array.of(5n, 6n) },
    ], { format: 'pt' });
    expect(Buffer.compare(await readFile(p), Buffer.from(mem))).toBe(0);
  });

  it('fails with SIZE_MISMATCH and leaves no file behind', async () => {
    const dir = join(tmp, 'bad-write');
    await mkdir(dir);
    const p = join(dir, 'x.safetensors');
    await expectWeightsError(() => writeSafetensorsFile(p, [{ name: 'a', dtype: 'F32', shape: [3], data: () => new Float32Array(2) }]), 'SIZE_MISMATCH', { file: p, tensor: 'a' });
    expect(await readdir(dir)).toEqual([]);
  });
});

describe('model folders', () => {
  async function folderWith(name: string, config: string | undefined, weightsFrom = join(UNET, 'diffusion_pytorch_model.safetensors')) {
    const dir = join(tmp, name);
    await mkdir(dir, { recursive: true });
    if (config !== undefined) await writeFile(join(dir, 'config.json'), config);
    if (weightsFrom) await copyFile(weightsFrom, join(dir, 'diffusion_pytorch_model.safetensors'));
    return dir;
  }
  const unetConfig = async () => JSON.parse(await readFile(join(UNET, 'config.json'), 'utf8'));

  it('opens a golden folder and checks it against its config', async () => {
    const m = await openModelFolder(nodeFolder(UNET));
    expect(m.className).toBe('UNet2DConditionModel');
    expect(m.report.ok).toBe(true);
    await m.weights.close();
  });

  it('config.json missing -> NOT_FOUND, malformed -> BAD_CONFIG', async () => {
    const missing = await folderWith('no-config', undefined);
    await expectWeightsError(() => openModelFolder(nodeFolder(missing)), 'NOT_FOUND', { file: join(missing, 'config.json') });
    const broken = await folderWith('broken-config', '{"_class_name": "UNet2DConditionModel",');
    await expectWeightsError(() => openModelFolder(nodeFolder(broken)), 'BAD_CONFIG', { file: join(broken, 'config.json') });
    const wrongType = await folderWith('wrong-type', JSON.stringify({ ...(await unetConfig()), block_out_channels: 32 }));
    expect((await readConfig(nodeFolder(wrongType)))['block_out_channels']).toBe(32);
    await expectWeightsError(() => openModelFolder(nodeFolder(wrongType)), 'BAD_CONFIG', { file: join(wrongType, 'config.json') });
    const unknown = await folderWith('unknown-class', '{"_class_name": "Mystery"}');
    await expectWeightsError(() => openModelFolder(nodeFolder(unknown)), 'BAD_CONFIG', { file: join(unknown, 'config.json') });
  });

  it('shapes that contradict config.json -> SHAPE_MISMATCH naming the tensor', async () => {
    const dir = await folderWith('contradict', JSON.stringify({ ...(await unetConfig()), cross_attention_dim: 48 }));
    const e = await expectWeightsError(() => openModelFolder(nodeFolder(dir)), 'SHAPE_MISMATCH', { file: join(dir, 'diffusion_pytorch_model.safetensors') });
    expect(e.tensor).toMatch(/attn2\.to_[kv]\.weight$/);
    expect(e.message).toContain('expected [32, 48], found [32, 32]');
  });

  it('missing tensors -> MISSING_TENSOR; missing weights -> NOT_FOUND', async () => {
    const src = await openSafetensorsFile(join(UNET, 'diffusion_pytorch_model.safetensors'));
    const kept = [...src.tensors.values()].filter((t) => t.name !== 'conv_out.bias');
    const dir = await folderWith('missing-tensor', JSON.stringify(await unetConfig()), '');
    await writeSafetensorsFile(join(dir, 'diffusion_pytorch_model.safetensors'), kept.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, data: () => src.readBytes(t.name) })));
    await src.close();
    await expectWeightsError(() => openModelFolder(nodeFolder(dir)), 'MISSING_TENSOR', { tensor: 'conv_out.bias' });
    const empty = await folderWith('no-weights', JSON.stringify(await unetConfig()), '');
    await expectWeightsError(() => openModelFolder(nodeFolder(empty)), 'NOT_FOUND', { file: empty });
  });

  it('opens sharded weights through their index', async () => {
    const src = await openSafetensorsFile(join(UNET, 'diffusion_pytorch_model.safetensors'));
    const dir = await folderWith('sharded', JSON.stringify(await unetConfig()), '');
    const all = [...src.tensors.values()];
    const halves = [all.slice(0, 100), all.slice(100)];
    const weightMap: Record<string, string> = {};
    for (const [i, part] of halves.entries()) {
      const file = `diffusion_pytorch_model-0000${i + 1}-of-00002.safetensors`;
      await writeSafetensorsFile(join(dir, file), part.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, data: () => src.readBytes(t.name) })));
      for (const t of part) weightMap[t.name] = file;
    }
    await writeFile(join(dir, 'diffusion_pytorch_model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    const m = await openModelFolder(nodeFolder(dir));
    expect(m.weights.tensors.size).toBe(all.length);
    expect([...(await m.weights.readF32('conv_out.bias'))]).toEqual([...(await src.readF32('conv_out.bias'))]);
    await m.weights.close();
    await src.close();
    const w = await openWeights(nodeFolder(dir));
    expect(w.tensors.size).toBe(all.length);
    await w.close();
    const r = await inspectPath(join(dir, 'diffusion_pytorch_model.safetensors.index.json'));
    expect(r.description).toBe('sharded safetensors checkpoint');
    expect(r.parts[0].weights!.layout).toBe('diffusers-unet');
    expect(r.parts[0].weights!.tensors.length).toBe(all.length);
    expect(r.problems).toEqual([]);
  });
});
