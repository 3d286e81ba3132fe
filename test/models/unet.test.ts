// UNet2DConditionModel against the diffusers goldens (SD 1.x-style conv projections with 8 heads; SD 2.x-style
// linear projections with per-block head counts and 8 groups): output, every activation, the loss and every
// listed gradient; the same with gradient checkpointing; and no GPU memory growth over no-grad forwards.
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { init, noGrad, rt, Tensor, tidyAsync } from '../../engine/index.js';
import { discoverCases, GoldenContext, runCase, type CaseCheck, type GoldenCase } from '../../models/golden.js';
import { runUnetCase } from '../../models/golden-unet.js';
import { UNet2DConditionModel, loadUNet, timestepEmbedding } from '../../models/unet.js';
import { nodeFolder, openSafetensorsFile } from '../../weights-tools/node-source.js';
import { rand } from '../helpers/check.js';

const golden = path.resolve('..', 'shared', 'golden');
// A cold Mesa shader cache makes the first run compile every kernel (minutes on lavapipe); warm runs take seconds.
const COLD = 600_000;

function report(checks: CaseCheck[]) {
  const bad = checks.filter((c) => !c.ok);
  const worst = (k: string) => Math.max(0, ...checks.filter((c) => c.kind === k && Number.isFinite(c.err) && c.tol >= 1e-4).map((c) => c.err));
  console.log(
    `${checks[0]?.case}: ${checks.length} checks, worst output ${worst('output').toExponential(2)}, activation ${worst('activation').toExponential(2)}, ` +
      `gradient ${worst('gradient').toExponential(2)}, loss ${worst('loss').toExponential(2)}`,
  );
  expect(bad.map((c) => `${c.tensor} [${c.kind}] err ${c.err} tol ${c.tol}${c.note ? ` (${c.note})` : ''}`)).toEqual([]);
}

let cases: GoldenCase[] = [];
beforeAll(async () => {
  await init();
  cases = await discoverCases(golden);
});

function caseNamed(name: string): GoldenCase {
  const c = cases.find((x) => x.name === name);
  if (!c) throw new Error(`golden case ${name} not found under ${golden}`);
  return c;
}

/** Peak GPU bytes above the starting point while running `fn`. */
async function peakOf(fn: () => Promise<unknown>): Promise<number> {
  const base = rt().memory().liveBytes;
  rt().resetPeak();
  await fn();
  return rt().memory().peakBytes - base;
}
const plainPeak: Record<string, number> = {};

describe('UNet2DConditionModel goldens', () => {
  for (const name of ['unet_sd1', 'unet_sd2']) {
    it(`${name}: output, activations, loss and gradients`, async () => {
      let checks: CaseCheck[] = [];
      plainPeak[name] = await peakOf(async () => (checks = await runCase(caseNamed(name))));
      expect(checks.length).toBeGreaterThan(30);
      expect(checks.some((c) => c.kind === 'gradient')).toBe(true);
      report(checks);
    }, COLD);
  }

  it('unet_sd2 with gradient checkpointing: same results through backward(), lower peak memory', async () => {
    const c = caseNamed('unet_sd2');
    const file = await openSafetensorsFile(c.tensorsPath);
    const ctx = new GoldenContext(c, file);
    let peak = 0;
    try {
      peak = await peakOf(() => tidyAsync(() => runUnetCase(ctx, { checkpoint: true })));
    } finally {
      await ctx.cleanup();
      await file.close();
    }
    report(ctx.checks);
    if (plainPeak.unet_sd2 !== undefined) {
      console.log(`unet_sd2 peak GPU memory: ${(plainPeak.unet_sd2 / 2 ** 20).toFixed(1)} MiB plain, ${(peak / 2 ** 20).toFixed(1)} MiB checkpointed`);
      expect(peak).toBeLessThan(plainPeak.unet_sd2);
    }
  }, COLD);
});

describe('UNet2DConditionModel', () => {
  it('timestep embedding: float64 sin/cos of float32-rounded arguments, flip and shift', () => {
    const e = timestepEmbedding([999, 0], 8, false, 1);
    // half = 4, freqs = exp(-ln(1e4) * i / 3)
    for (let i = 0; i < 4; i++) {
      const f = Math.exp((-Math.log(10000) * i) / 3);
      expect(e[i]).toBeCloseTo(Math.sin(999 * f), 4);
      expect(e[4 + i]).toBeCloseTo(Math.cos(999 * f), 4);
      expect(e[8 + i]).toBe(0);
      expect(e[12 + i]).toBe(1);
    }
    const flipped = timestepEmbedding([999], 8, true, 1);
    expect([...flipped.slice(0, 4)]).toEqual([...e.slice(4, 8)]);
  });

  it('no-grad forwards leave no GPU memory behind', async () => {
    const model: UNet2DConditionModel = await loadUNet(nodeFolder(path.join(golden, 'models', 'unet_sd1')));
    try {
      const c = model.config;
      const B = 2;
      const hw = 2 * model.downscale;
      const x = Tensor.from(rand(B * c.inChannels * hw * hw, 3), [B, c.inChannels, hw, hw]);
      const ehs = Tensor.from(rand(B * 77 * c.crossAttentionDim[0], 4), [B, 77, c.crossAttentionDim[0]]);
      const live: number[] = [];
      for (let i = 0; i < 3; i++) {
        const y = noGrad(() => model.forward(x, [500, 20], ehs));
        expect([...y.shape]).toEqual([B, c.outChannels, hw, hw]);
        await y.data();
        y.dispose();
        live.push(rt().memory().liveBytes);
      }
      expect(live[1]).toBe(live[0]);
      expect(live[2]).toBe(live[0]);
      x.dispose();
      ehs.dispose();
    } finally {
      model.dispose();
    }
  }, COLD);
});
