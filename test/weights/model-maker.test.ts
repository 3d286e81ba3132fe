import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtemp, rm, mkdir, copyFile, readFile, readdir, writeFile } from 'node:fs/promises';
import { existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeModel, initParam, presetsDir, PRESETS } from '../../weights-tools/model-maker.js';
import { openModelFolder } from '../../weights-tools/model-folder.js';
import { nodeFolder, openSafetensorsFile } from '../../weights-tools/node-source.js';
import { paramSpec, countParams, type ParamSpec } from '../../weights-tools/param-spec.js';
import { f16ToF32 } from '../../weights-tools/safetensors.js';
import { inspectPath } from '../../weights-tools/inspect.js';
import { Rng } from '../../weights-tools/rng.js';
import { expectWeightsError, GOLDEN } from './helpers.js';

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'model-maker-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const golden = readdirSync(join(GOLDEN, 'models')).filter((d) => existsSync(join(GOLDEN, 'models', d, 'config.json')));

function stats(v: Float32Array) {
  let s = 0, s2 = 0, max = 0;
  for (const x of v) {
    s += x;
    s2 += x * x;
    max = Math.max(max, Math.abs(x));
  }
  const mean = s / v.length;
  return { mean, std: Math.sqrt(s2 / v.length - mean * mean), max };
}

describe('rng', () => {
  it('is deterministic per (seed, stream) and roughly uniform / normal', () => {
    const a = new Rng(1, 'x').fillUniform(new Float32Array(5), 0, 1);
    expect([...new Rng(1, 'x').fillUniform(new Float32Array(5), 0, 1)]).toEqual([...a]);
    expect([...new Rng(2, 'x').fillUniform(new Float32Array(5), 0, 1)]).not.toEqual([...a]);
    expect([...new Rng(1, 'y').fillUniform(new Float32Array(5), 0, 1)]).not.toEqual([...a]);
    const u = stats(new Rng(3).fillUniform(new Float32Array(100000), -1, 1));
    expect(Math.abs(u.mean)).toBeLessThan(0.01);
    expect(u.std).toBeCloseTo(1 / Math.sqrt(3), 2);
    const n = stats(new Rng(4).fillNormal(new Float32Array(100001), 2, 0.5));
    expect(n.mean).toBeCloseTo(2, 2);
    expect(n.std).toBeCloseTo(0.5, 2);
  });
});

describe('makeModel on every tiny golden config', () => {
  for (const d of golden) {
    it(d, async () => {
      const out = join(tmp, d);
      const r = await makeModel({ config: join(GOLDEN, 'models', d, 'config.json'), out, seed: 7 });
      expect(r.kind).toBe('model');
      // Round trip: loads strictly, matches the spec (including the optional buffers).
      const m = await openModelFolder(nodeFolder(out));
      expect(m.report.ok).toBe(true);
      expect(m.weights.tensors.size).toBe(m.spec.length);
      expect(r.parts[0].params).toBe(countParams(m.spec));
      expect(m.config).toEqual(JSON.parse(await readFile(join(GOLDEN, 'models', d, 'config.json'), 'utf8')));
      // Same layout as safetensors' own writer: I64 buffers first, then by name.
      const names = [...m.weights.tensors.keys()];
      const floats = names.filter((n) => m.weights.tensors.get(n)!.dtype === 'F32');
      expect(floats).toEqual([...floats].sort());
      for (const p of m.spec) await checkPlausible(p, m.weights.tensors.get(p.name)!.dtype === 'I64' ? await m.weights.readI64(p.name) : await m.weights.readF32(p.name));
      await m.weights.close();
    });
  }
});

async function checkPlausible(p: ParamSpec, v: Float32Array | BigInt64Array) {
  if (v instanceof BigInt64Array) {
    expect([...v]).toEqual(Array.from({ length: v.length }, (_, i) => BigInt(i)));
    return;
  }
  const s = stats(v);
  const bound = 1 / Math.sqrt(p.fanIn);
  const big = v.length >= 2000; // enough samples for a 10% std check
  switch (p.kind) {
    case 'conv_weight': case 'linear_weight':
      expect(s.max).toBeLessThanOrEqual(bound);
      if (big) expect(Math.abs(s.std / (1 / Math.sqrt(3 * p.fanIn)) - 1), p.name).toBeLessThan(0.1);
      break;
    case 'bias':
      expect(s.max).toBeLessThanOrEqual(bound);
      expect(v.some((x) => x !== 0)).toBe(true);
      break;
    case 'norm_weight':
      expect(Math.abs(s.mean - 1)).toBeLessThan(0.1);
      expect(s.std).toBeGreaterThan(0.02);
      expect(s.std).toBeLessThan(0.3);
      break;
    case 'norm_bias':
      expect(Math.abs(s.mean)).toBeLessThan(0.1);
      expect(s.std).toBeGreaterThan(0.02);
      expect(s.std).toBeLessThan(0.3);
      break;
    case 'embedding':
      if (big) expect(Math.abs(s.std / 0.02 - 1)).toBeLessThan(0.1);
      break;
    case 'class_embedding':
      expect(s.std).toBeGreaterThan(0);
      break;
  }
}

describe('makeModel options', () => {
  it('is deterministic in the seed; F16 holds the rounded F32 values', async () => {
    const cfg = join(GOLDEN, 'models/clip_text_sd1/config.json');
    await makeModel({ config: cfg, out: join(tmp, 'a'), seed: 3 });
    await makeModel({ config: cfg, out: join(tmp, 'b'), seed: 3 });
    await makeModel({ config: cfg, out: join(tmp, 'c'), seed: 4 });
    await makeModel({ config: cfg, out: join(tmp, 'h'), seed: 3, dtype: 'F16' });
    const bytes = (d: string) => readFile(join(tmp, d, 'model.safetensors'));
    expect(Buffer.compare(await bytes('a'), await bytes('b'))).toBe(0);
    expect(Buffer.compare(await bytes('a'), await bytes('c'))).not.toBe(0);
    const f32 = await openSafetensorsFile(join(tmp, 'a', 'model.safetensors'));
    const f16 = await openSafetensorsFile(join(tmp, 'h', 'model.safetensors'));
    const n = 'text_model.encoder.layers.0.mlp.fc1.weight';
    expect(f16.tensors.get(n)!.dtype).toBe('F16');
    expect(f16.tensors.get('text_model.embeddings.position_ids')!.dtype).toBe('I64');
    const [x, h] = [await f32.readF32(n), await f16.readAsF16Bits(n)];
    for (let i = 0; i < x.length; i++) expect(Math.abs(f16ToF32(h[i]) - x[i])).toBeLessThanOrEqual(Math.abs(x[i]) * 2 ** -11 + 2 ** -25);
    await f32.close();
    await f16.close();
  });

  it('accepts a config object and a model folder; rejects bad input', async () => {
    const cfg = JSON.parse(await readFile(join(GOLDEN, 'models/vae/config.json'), 'utf8'));
    const r = await makeModel({ config: cfg, out: join(tmp, 'obj'), seed: 1 });
    expect(r.parts[0].className).toBe('AutoencoderKL');
    expect(existsSync(join(tmp, 'obj', 'diffusion_pytorch_model.safetensors'))).toBe(true);
    const r2 = await makeModel({ config: join(GOLDEN, 'models/vae'), out: join(tmp, 'dir'), seed: 1 });
    expect(r2.parts[0].params).toBe(843_847);
    await expectWeightsError(() => makeModel({ config: join(tmp, 'missing.json'), out: join(tmp, 'x'), seed: 1 }), 'NOT_FOUND');
    await expectWeightsError(() => makeModel({ config: { _class_name: 'Nope' }, out: join(tmp, 'x'), seed: 1 }), 'BAD_CONFIG');
    await expectWeightsError(() => makeModel({ config: cfg, out: join(tmp, 'x'), seed: -1 }), 'BAD_CONFIG');
  });

  it('initParam follows the PyTorch defaults', () => {
    const w = initParam({ name: 'w', shape: [64, 100], kind: 'linear_weight', fanIn: 100 }, 0) as Float32Array;
    expect(stats(w).max).toBeLessThanOrEqual(0.1);
    expect(stats(w).std).toBeCloseTo(0.1 / Math.sqrt(3), 2);
    expect([...(initParam({ name: 's', shape: [], kind: 'scalar', fanIn: 0 }, 0) as Float32Array)]).toEqual([Math.fround(2.6592)]);
  });

  it('ships presets that match the published configs', () => {
    for (const p of PRESETS) expect(existsSync(join(presetsDir(), p))).toBe(true);
  });
});

describe('makeModel for a pipeline', () => {
  it('writes a diffusers pipeline folder that inspect accepts', async () => {
    // A tiny pipeline source: the preset's index and tokenizer configs with the tiny golden model configs.
    const src = join(tmp, 'tiny-pipeline-src');
    const P = join(presetsDir(), 'sd-1.5');
    for (const d of ['unet', 'vae', 'text_encoder', 'scheduler', 'tokenizer']) await mkdir(join(src, d), { recursive: true });
    await copyFile(join(P, 'model_index.json'), join(src, 'model_index.json'));
    await copyFile(join(GOLDEN, 'models/unet_sd1/config.json'), join(src, 'unet/config.json'));
    await copyFile(join(GOLDEN, 'models/vae/config.json'), join(src, 'vae/config.json'));
    await copyFile(join(GOLDEN, 'models/clip_text_sd1/config.json'), join(src, 'text_encoder/config.json'));
    await copyFile(join(GOLDEN, 'models/scheduler/scheduler_config.json'), join(src, 'scheduler/scheduler_config.json'));
    for (const f of ['tokenizer_config.json', 'special_tokens_map.json']) await copyFile(join(P, 'tokenizer', f), join(src, 'tokenizer', f));

    const out = join(tmp, 'tiny-pipeline');
    const r = await makeModel({ config: src, out, seed: 11, tokenizerDir: join(GOLDEN, 'tokenizer') });
    expect(r.kind).toBe('pipeline');
    expect(r.parts.map((p) => p.className)).toEqual(['UNet2DConditionModel', 'AutoencoderKL', 'CLIPTextModel']);
    expect((await readdir(join(out, 'tokenizer'))).sort()).toEqual(['merges.txt', 'special_tokens_map.json', 'tokenizer_config.json', 'vocab.json']);
    const index = JSON.parse(await readFile(join(out, 'model_index.json'), 'utf8'));
    expect(index.safety_checker).toEqual([null, null]);
    expect(index.unet).toEqual(['diffusers', 'UNet2DConditionModel']);
    const report = await inspectPath(out);
    expect(report.kind).toBe('diffusers-pipeline');
    expect(report.problems).toEqual([]);
    expect(report.parts.map((p) => p.what).sort()).toEqual(['AutoencoderKL', 'CLIPTextModel', 'UNet2DConditionModel', 'scheduler', 'tokenizer']);

    await writeFile(join(out, 'unet/config.json'), JSON.stringify({ ...JSON.parse(await readFile(join(out, 'unet/config.json'), 'utf8')), block_out_channels: [32, 32] }));
    const bad = await inspectPath(out);
    expect(bad.problems.length).toBe(1);
    expect(bad.problems[0]).toMatch(/wrong shape/);
  });

  it('gives a pipeline without a tokenizer vocabulary the shipped CLIP one', async () => {
    const src = join(tmp, 'tiny-pipeline-src'); // written by the previous test, without vocab.json / merges.txt
    const out = join(tmp, 'tiny-pipeline-default-tokenizer');
    await makeModel({ config: src, out, seed: 12 });
    const shipped = await readFile(join(presetsDir(), 'clip-tokenizer', 'vocab.json'), 'utf8');
    expect(await readFile(join(out, 'tokenizer', 'vocab.json'), 'utf8')).toBe(shipped);
    expect((await readFile(join(out, 'tokenizer', 'merges.txt'), 'utf8')).length).toBeGreaterThan(100_000);
  });

  it('a missing tokenizerDir file is NOT_FOUND', async () => {
    await expectWeightsError(() => makeModel({ config: join(tmp, 'tiny-pipeline-src'), out: join(tmp, 'p2'), seed: 1, tokenizerDir: join(tmp, 'none') }), 'NOT_FOUND');
  });
});

describe.skipIf(!process.env.WEIGHTS_SLOW)('full-size (set WEIGHTS_SLOW=1)', () => {
  it('SD 2.1-base UNet (866M params) is written quickly and matches its spec', async () => {
    const out = join(tmp, 'unet21');
    const t0 = Date.now();
    const r = await makeModel({ config: join(presetsDir(), 'sd-2.1-base/unet/config.json'), out, seed: 0 });
    const seconds = (Date.now() - t0) / 1000;
    expect(r.parts[0].params).toBe(865_910_724);
    expect(seconds).toBeLessThan(90);
    const m = await openModelFolder(nodeFolder(out));
    expect(m.report.ok).toBe(true);
    expect(countParams(paramSpec(m.config))).toBe(865_910_724);
    await m.weights.close();
    await rm(out, { recursive: true });
  }, 300_000);
});
