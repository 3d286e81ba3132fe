// Training the tiny-world models on the engine: a short run of every stage on a small training set must
// lower each loss, write a diffusers folder the product's own loader reads, and resume after a stop.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { init, Tensor, noGrad, tidy } from '../../engine/index.js';
import { STAGES, TrainAbortedError, trainTiny, type StageName, type StagePlan, type TrainLogEvent } from '../../tiny/train.js';
import { StableDiffusionPipeline, gaussianNoise } from '../../models/pipeline.js';
import { nodeFolder } from '../../weights-tools/node-source.js';

const PLAN: Record<StageName, Partial<StagePlan>> = {
  clip: { steps: 24, batch: 16, lr: 3e-3 },
  vae: { steps: 24, batch: 8, lr: 3e-3 },
  decoder: { steps: 16, batch: 8, lr: 3e-3 },
  unet: { steps: 24, batch: 16, lr: 2e-3 },
  judge: { steps: 24, batch: 16, lr: 5e-3 },
};

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

describe('train-tiny', () => {
  let dir: string;
  const losses: Record<string, number[]> = {};
  let stopped: unknown;

  beforeAll(async () => {
    await init();
    dir = await mkdtemp(join(tmpdir(), 'tiny-train-'));
    const onLog = (e: TrainLogEvent) => {
      if (e.message) return;
      (losses[e.stage] ??= [])[e.step - 1] = e.loss;
    };
    // first run: stop during the UNet stage (as Ctrl-C does), after its checkpoint
    const ctrl = new AbortController();
    try {
      await trainTiny({
        out: dir,
        trainSize: 48,
        plan: PLAN,
        checkpointSeconds: 1e9,
        signal: ctrl.signal,
        onLog: (e) => {
          onLog(e);
          if (e.stage === 'unet' && e.step === 10) ctrl.abort();
        },
      });
    } catch (e) {
      stopped = e;
    }
    // second run: resumes the UNet and finishes
    await trainTiny({ out: dir, trainSize: 48, plan: PLAN, checkpointSeconds: 1e9, onLog });
  }, 900_000);

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('stops with a resumable error and resumes where it stopped', () => {
    expect(stopped).toBeInstanceOf(TrainAbortedError);
    expect(String((stopped as Error).message)).toMatch(/unet step 10/);
    // every step of every stage ran exactly once
    for (const s of STAGES) {
      expect(losses[s]?.length, s).toBe(PLAN[s].steps);
      expect(losses[s].every(Number.isFinite), s).toBe(true);
    }
  });

  it('lowers every loss', () => {
    for (const s of STAGES) {
      const l = losses[s];
      const first = mean(l.slice(0, 4));
      const last = mean(l.slice(-4));
      expect(last, `${s}: ${l.map((x) => x.toFixed(3)).join(' ')}`).toBeLessThan(first);
    }
  });

  it('writes a diffusers pipeline folder that the loader reads, with the split and the judge', async () => {
    for (const f of ['model_index.json', 'concepts.json', 'training.json', 'judge/model.safetensors', 'image_encoder/preprocessor_config.json'])
      expect(existsSync(join(dir, f)), f).toBe(true);
    const split = JSON.parse(await readFile(join(dir, 'concepts.json'), 'utf8'));
    expect(split.head.length).toBeGreaterThan(0);
    expect(split.tail.length).toBeGreaterThan(0);
    const vae = JSON.parse(await readFile(join(dir, 'vae', 'config.json'), 'utf8'));
    expect(vae.scaling_factor).toBeGreaterThan(0);
    const pipe = await StableDiffusionPipeline.load(nodeFolder(dir));
    try {
      expect(pipe.clipVision).not.toBeNull();
      const img = noGrad(() => tidy(() => pipe.txt2img(Tensor.from(gaussianNoise(256, 0), [1, 4, 8, 8]), 'a red square on a white background', { steps: 3 }).keep()));
      expect(img.shape).toEqual([1, 3, 32, 32]);
      const v = await img.data();
      img.dispose();
      expect(v.every(Number.isFinite)).toBe(true);
    } finally {
      pipe.dispose();
    }
  });

  it('refuses to mix runs with different options in one folder', async () => {
    await expect(trainTiny({ out: dir, trainSize: 99, plan: PLAN })).rejects.toThrow(/other options/);
  });
});
