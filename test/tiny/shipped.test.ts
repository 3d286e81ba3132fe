// The shipped tiny-world model (assets/tiny-world): real diffusers / transformers folders whose configs and
// parameter names are those of the real classes, loaded by the product's own loader; the head/tail split;
// the judge recognizes clean renders; the whole folder stays small.
import { beforeAll, describe, expect, it } from 'vitest';
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { init, Tensor, noGrad, tidy } from '../../engine/index.js';
import { nodeFolder } from '../../weights-tools/node-source.js';
import { openModelFolder } from '../../weights-tools/model-folder.js';
import { checkAgainstSpec, paramSpec } from '../../weights-tools/param-spec.js';
import { StableDiffusionPipeline, gaussianNoise } from '../../models/pipeline.js';
import { Judge } from '../../tiny/experiment.js';
import { balancedSpec, render, CONCEPTS } from '../../tiny/world.js';

const MODEL = fileURLToPath(new URL('../../assets/tiny-world/', import.meta.url));

async function folderBytes(dir: string): Promise<number> {
  let n = 0;
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    n += e.isDirectory() ? await folderBytes(p) : (await stat(p)).size;
  }
  return n;
}

describe('shipped tiny-world model', () => {
  beforeAll(async () => {
    await init();
  });

  it('is a StableDiffusionPipeline folder of the real classes, every weight file matching its config', async () => {
    const index = JSON.parse(await readFile(join(MODEL, 'model_index.json'), 'utf8'));
    expect(index._class_name).toBe('StableDiffusionPipeline');
    expect(index.unet).toEqual(['diffusers', 'UNet2DConditionModel']);
    expect(index.vae).toEqual(['diffusers', 'AutoencoderKL']);
    expect(index.text_encoder).toEqual(['transformers', 'CLIPTextModel']);
    expect(index.image_encoder).toEqual(['transformers', 'CLIPVisionModelWithProjection']);
    for (const part of ['unet', 'vae', 'text_encoder', 'image_encoder']) {
      const mf = await openModelFolder(nodeFolder(join(MODEL, part)));
      try {
        const spec = paramSpec(mf.config, { className: mf.className });
        const shapes = new Map([...mf.weights.tensors].map(([k, v]) => [k, { shape: v.shape }]));
        const r = checkAgainstSpec(spec, shapes, part);
        expect(r.ok, r.text).toBe(true);
        // shipped in f16
        expect([...mf.weights.tensors.values()].every((t) => t.dtype === 'F16'), part).toBe(true);
      } finally {
        await mf.weights.close();
      }
    }
    expect(await folderBytes(MODEL)).toBeLessThan(16 * 1024 * 1024);
  });

  it('ships its head/tail split and a model card', async () => {
    const split = JSON.parse(await readFile(join(MODEL, 'concepts.json'), 'utf8'));
    expect(split.head.length + split.tail.length).toBe(CONCEPTS.length);
    expect(split.tail.length).toBeGreaterThan(0);
    for (const r of split.concepts) if (r.split === 'tail') expect(r.frequency).toBeLessThan(0.01);
    const card = await readFile(join(MODEL, 'README.md'), 'utf8');
    expect(card).toMatch(/train-tiny/);
  });

  it('loads in the pipeline loader and generates a finite 32x32 image', async () => {
    const pipe = await StableDiffusionPipeline.load(nodeFolder(MODEL));
    try {
      expect(pipe.clipVision?.config.imageSize).toBe(32);
      const img = noGrad(() => tidy(() => pipe.txt2img(Tensor.from(gaussianNoise(256, 1), [1, 4, 8, 8]), 'a red square on a white background', { steps: 5 }).keep()));
      expect(img.shape).toEqual([1, 3, 32, 32]);
      const v = await img.data();
      img.dispose();
      expect(v.every((x) => Number.isFinite(x) && x >= 0 && x <= 1)).toBe(true);
    } finally {
      pipe.dispose();
    }
  });

  it('has a judge that recognizes clean renders of every concept', async () => {
    const judge = await Judge.load(join(MODEL, 'judge'));
    try {
      const B = 72;
      const specs = Array.from({ length: B }, (_, i) => balancedSpec(100_000 + i, { seed: 7 }));
      const px = new Float32Array(B * 3 * 32 * 32);
      specs.forEach((s, i) => px.set(render(s), i * 3 * 32 * 32));
      const got = await judge.classify(px, B);
      const acc = got.filter((g, i) => g.concept === specs[i].concept).length / B;
      expect(acc).toBeGreaterThan(0.85);
    } finally {
      judge.dispose();
    }
  });

  it('has an autoencoder that keeps every colour: the judge recognizes its reconstructions', async () => {
    // a VAE that shifts rare colours towards frequent ones makes tail concepts unreachable from any seed
    const judge = await Judge.load(join(MODEL, 'judge'));
    const pipe = await StableDiffusionPipeline.load(nodeFolder(MODEL));
    try {
      const B = 144;
      const specs = Array.from({ length: B }, (_, i) => balancedSpec(100_000 + i, { seed: 7 }));
      const px = new Float32Array(B * 3 * 32 * 32);
      specs.forEach((s, i) => px.set(render(s), i * 3 * 32 * 32));
      const rec = noGrad(() => tidy(() => pipe.vae.decode(pipe.vae.encode(Tensor.from(px.map((v) => v * 2 - 1), [B, 3, 32, 32])).mean).keep()));
      const r = ((await rec.data()) as Float32Array).map((v) => Math.min(1, Math.max(0, (v + 1) / 2)));
      rec.dispose();
      const got = await judge.classify(r, B);
      const colour = got.filter((g, i) => g.colour === specs[i].colour).length / B;
      const both = got.filter((g, i) => g.concept === specs[i].concept).length / B;
      expect(colour).toBeGreaterThan(0.9);
      expect(both).toBeGreaterThan(0.7);
      for (const c of new Set(specs.map((s) => s.colour))) {
        const idx = specs.flatMap((s, i) => (s.colour === c ? [i] : []));
        expect(idx.filter((i) => got[i].colour === c).length / idx.length, c).toBeGreaterThan(0.6);
      }
    } finally {
      judge.dispose();
      pipe.dispose();
    }
  });
});
