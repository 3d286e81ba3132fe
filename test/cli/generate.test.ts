// `seedselect generate` on a small pipeline built at test time: outputs, run.json, bad input, and resume
// after an interruption giving the same seed as an uninterrupted run.
import { beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, cp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { makeModel, presetsDir } from '../../weights-tools/model-maker.js';
import { generate, type GenerateOptions } from '../../cli/commands/generate.js';
import { openSafetensorsFile } from '../../weights-tools/node-source.js';
import { UserError } from '../../cli/errors.js';

let dir: string;
let model: string;
let refs: string[];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'seedselect-gen-'));
  model = join(dir, 'model');
  await makeModel({ config: 'tiny-sd', out: model, seed: 1, tokenizerDir: join(presetsDir(), 'clip-tokenizer') });
  refs = [];
  for (let i = 0; i < 2; i++) {
    const p = join(dir, `ref${i}.png`);
    await sharp({ create: { width: 40 + 10 * i, height: 48, channels: 3, background: { r: 200, g: 30 * i, b: 90 } } }).png().toFile(p);
    refs.push(p);
  }
  return () => rm(dir, { recursive: true, force: true });
});

const base = (out: string): GenerateOptions => ({
  model, prompt: 'a red square', negative: '', refs, out, seed: 3, steps: 3, guidance: 7.5, iterations: 3,
  weightDecay: 0.01, numImages: 1, resume: true, quiet: true,
});

describe('seedselect generate', () => {
  let full: Awaited<ReturnType<typeof generate>>;
  it('writes images, seed, run.json and the loss curve', async () => {
    const out = join(dir, 'run-full');
    const run = (full = await generate(base(out)));
    expect(run.status).toBe('done');
    expect(run.images[0].history).toHaveLength(3);
    for (const h of run.images[0].history) expect(Number.isFinite(h.total)).toBe(true);
    const meta = await sharp(join(out, 'image-00.png')).metadata();
    expect([meta.width, meta.height]).toEqual([32, 32]);
    for (const f of ['before.png', 'loss.png', 'run.json', 'seed-00.safetensors']) await readFile(join(out, f));
    const seed = await openSafetensorsFile(join(out, 'seed-00.safetensors'));
    expect(seed.tensors.get('z_T')!.shape).toEqual([1, 4, 16, 16]);
    await seed.close();
    const json = JSON.parse(await readFile(join(out, 'run.json'), 'utf8'));
    expect(json.options.steps).toBe(3);
    expect(json.images[0].history).toHaveLength(3);
    expect(json.peakBytes).toBeGreaterThan(0);
  });

  it('--f16-activations runs the models with f16 activations: the same losses within f16 rounding', async () => {
    const out = join(dir, 'run-f16-act');
    const run = await generate({ ...base(out), iterations: 2, f16Activations: true });
    expect(run.status).toBe('done');
    const json = JSON.parse(await readFile(join(out, 'run.json'), 'utf8'));
    expect(json.options.f16Activations).toBe(true);
    // iteration 0 scores the same seed as the f32 run; f16 activations move the loss by rounding only
    const [a, b] = [run.images[0].history[0].total, full.images[0].history[0].total];
    expect(Math.abs(a - b)).toBeLessThanOrEqual(1e-2 * Math.abs(b));
  });

  it('an interrupted run resumes where it stopped and ends with the same seed', async () => {
    const out = join(dir, 'run-resumed');
    const ac = new AbortController();
    // stop after the first iteration has been checkpointed
    const first = generate({ ...base(out), signal: ac.signal });
    const timer = setInterval(async () => {
      const j = await readFile(join(out, 'run.json'), 'utf8').catch(() => '');
      if (j.includes('"iteration": 1')) ac.abort();
    }, 50);
    const partial = await first.finally(() => clearInterval(timer));
    expect(partial.status).toBe('running');
    const resumed = await generate(base(out));
    expect(resumed.status).toBe('done');
    expect(resumed.images[0].history.map((h) => h.iteration)).toEqual([0, 1, 2]);
    const a = await (await openSafetensorsFile(join(dir, 'run-full', 'seed-00.safetensors'))).readF32('z_T');
    const b = await (await openSafetensorsFile(join(out, 'seed-00.safetensors'))).readF32('z_T');
    expect(Array.from(b)).toEqual(Array.from(a));
    expect(resumed.images[0].history.map((h) => h.total)).toEqual(full.images[0].history.map((h) => h.total));
  });

  it('a run of several images interrupted at image 1 resumes from the optimized seed of image 0', async () => {
    const two = (out: string): GenerateOptions => ({ ...base(out), numImages: 2, iterations: 6 });
    const whole = await generate(two(join(dir, 'two-full')));
    expect(whole.status).toBe('done');
    const out = join(dir, 'two-resumed');
    const ac = new AbortController();
    const first = generate({ ...two(out), signal: ac.signal });
    const timer = setInterval(async () => {
      const j = await readFile(join(out, 'run.json'), 'utf8').catch(() => '');
      if (/"current": \{\s*"image": 1,\s*"iteration": 1/.test(j)) ac.abort();
    }, 50);
    const partial = await first.finally(() => clearInterval(timer));
    expect(partial.status).toBe('running');
    const resumed = await generate(two(out));
    expect(resumed.status).toBe('done');
    const a = await (await openSafetensorsFile(join(dir, 'two-full', 'seed-01.safetensors'))).readF32('z_T');
    const b = await (await openSafetensorsFile(join(out, 'seed-01.safetensors'))).readF32('z_T');
    expect(Array.from(b)).toEqual(Array.from(a));
  });

  it('rejects bad input with messages that name the argument or file', async () => {
    const out = join(dir, 'bad');
    await expect(generate({ ...base(out), refs: [] })).rejects.toThrow(/at least one reference/);
    await expect(generate({ ...base(out), width: 30 })).rejects.toThrow(/--width must be a positive multiple of 8/);
    await expect(generate({ ...base(out), model: join(dir, 'nope') })).rejects.toThrow(/--model: folder .*nope.* does not exist/);
    const corrupt = join(dir, 'corrupt.jpg');
    await writeFile(corrupt, 'not an image');
    await expect(generate({ ...base(out), refs: [corrupt] })).rejects.toThrow(/corrupt\.jpg.*could not be read/);
    await expect(generate({ ...base(out), refs: [join(dir, 'missing.png')] })).rejects.toThrow(UserError);
    const noUnet = join(dir, 'no-unet');
    await cp(model, noUnet, { recursive: true });
    await rm(join(noUnet, 'unet'), { recursive: true });
    await expect(generate({ ...base(out), model: noUnet })).rejects.toThrow(/missing its unet/);
    const noClip = join(dir, 'no-clip');
    await cp(model, noClip, { recursive: true });
    await rm(join(noClip, 'image_encoder'), { recursive: true });
    await expect(generate({ ...base(out), model: noClip })).rejects.toThrow(/no CLIP image tower/);
  });
});
