// AutoencoderKL against the diffusers golden: encode (latent_dist mean / logvar / std, encoder activations,
// loss and gradients) and decode (sample, decoder activations, loss and gradients), with and without
// gradient checkpointing; latent sampling and no GPU memory growth over no-grad calls.
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { init, noGrad, rt, Tensor, tidyAsync } from '../../engine/index.js';
import { discoverCases, GoldenContext, runCase, type CaseCheck, type GoldenCase } from '../../models/golden.js';
import { runVaeCase } from '../../models/golden-vae.js';
import { AutoencoderKL, loadVae } from '../../models/vae.js';
import { nodeFolder, openSafetensorsFile } from '../../weights-tools/node-source.js';
import { rand } from '../helpers/check.js';

const golden = path.resolve('..', 'shared', 'golden');
// A cold Mesa shader cache makes the first run compile every kernel (minutes on lavapipe); warm runs take seconds.
const COLD = 600_000;

function report(checks: CaseCheck[]) {
  const bad = checks.filter((c) => !c.ok);
  const worst = (k: string) => Math.max(0, ...checks.filter((c) => c.kind === k && Number.isFinite(c.err)).map((c) => c.err));
  console.log(
    `${checks[0]?.case}: ${checks.length} checks, worst output ${worst('output').toExponential(2)}, activation ${worst('activation').toExponential(2)}, ` +
      `gradient ${worst('gradient').toExponential(2)}, loss ${worst('loss').toExponential(2)}`,
  );
  expect(bad.map((c) => `${c.tensor} [${c.kind}] err ${c.err} tol ${c.tol}${c.note ? ` (${c.note})` : ''}`)).toEqual([]);
}

let vaeCase: GoldenCase;
beforeAll(async () => {
  await init();
  const c = (await discoverCases(golden)).find((x) => x.name === 'vae');
  if (!c) throw new Error(`golden case vae not found under ${golden}`);
  vaeCase = c;
});

/** Peak GPU bytes above the starting point while running `fn`. */
async function peakOf(fn: () => Promise<unknown>): Promise<number> {
  const base = rt().memory().liveBytes;
  rt().resetPeak();
  await fn();
  return rt().memory().peakBytes - base;
}
let plainPeak: number | undefined;

describe('AutoencoderKL golden', () => {
  it('vae: encode and decode outputs, activations, losses and gradients', async () => {
    let checks: CaseCheck[] = [];
    plainPeak = await peakOf(async () => (checks = await runCase(vaeCase)));
    for (const n of ['encode.mean', 'encode.logvar', 'encode.std', 'decode.sample', 'encode.loss', 'decode.loss'])
      expect(checks.some((c) => c.tensor === n)).toBe(true);
    expect(checks.filter((c) => c.kind === 'gradient').length).toBeGreaterThan(10);
    report(checks);
  }, COLD);

  it('vae with gradient checkpointing: same results through backward(), lower peak memory', async () => {
    const file = await openSafetensorsFile(vaeCase.tensorsPath);
    const ctx = new GoldenContext(vaeCase, file);
    let peak = 0;
    try {
      peak = await peakOf(() => tidyAsync(() => runVaeCase(ctx, { checkpoint: true })));
    } finally {
      await ctx.cleanup();
      await file.close();
    }
    report(ctx.checks);
    if (plainPeak !== undefined) {
      console.log(`vae peak GPU memory: ${(plainPeak / 2 ** 20).toFixed(1)} MiB plain, ${(peak / 2 ** 20).toFixed(1)} MiB checkpointed`);
      expect(peak).toBeLessThan(plainPeak);
    }
  }, COLD);
});

describe('AutoencoderKL', () => {
  it('samples mean + std * noise; repeated no-grad encode/decode leave no GPU memory behind', async () => {
    const vae: AutoencoderKL = await loadVae(nodeFolder(path.join(golden, 'models', 'vae')));
    try {
      const c = vae.config;
      expect(vae.scalingFactor).toBeCloseTo(0.18215, 10);
      const f = vae.downscale;
      const H = 4 * f;
      const img = Tensor.from(rand(c.inChannels * H * H, 11), [1, c.inChannels, H, H]);
      const noiseData = rand(c.latentChannels * 16, 12);
      const noise = Tensor.from(noiseData, [1, c.latentChannels, 4, 4]);
      const live: number[] = [];
      for (let i = 0; i < 3; i++) {
        const { z, mean, std, dec } = noGrad(() => {
          const dist = vae.encode(img);
          const z = AutoencoderKL.sample(dist, noise);
          const dec = vae.decode(z);
          dist.logvar.dispose();
          return { z, mean: dist.mean, std: dist.std, dec };
        });
        expect([...z.shape]).toEqual([1, c.latentChannels, 4, 4]);
        expect([...dec.shape]).toEqual([1, c.outChannels, H, H]);
        const [zd, md, sd] = [await z.data(), await mean.data(), await std.data()];
        for (let k = 0; k < zd.length; k++) expect(zd[k]).toBeCloseTo(md[k] + sd[k] * noiseData[k], 5);
        for (const t of [z, mean, std, dec]) t.dispose();
        live.push(rt().memory().liveBytes);
      }
      expect(live[1]).toBe(live[0]);
      expect(live[2]).toBe(live[0]);
      img.dispose();
      noise.dispose();
    } finally {
      vae.dispose();
    }
  }, COLD);
});
