import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DdimScheduler, fmaF32, torchLinspaceF32 } from '../../models/ddim.js';
import { openSafetensorsFile } from '../../weights-tools/node-source.js';
import type { SafetensorsFile } from '../../weights-tools/safetensors.js';

const golden = path.resolve('..', 'shared', 'golden');
const schedDir = path.join(golden, 'scheduler');

function relErr(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  let maxErr = 0;
  let maxRef = 0;
  for (let i = 0; i < ref.length; i++) {
    maxErr = Math.max(maxErr, Math.abs(got[i] - ref[i]));
    maxRef = Math.max(maxRef, Math.abs(ref[i]));
  }
  return maxErr / maxRef;
}

for (const kind of ['epsilon', 'v_prediction'] as const) {
  for (const steps of [5, 50]) {
    const name = `ddim_${kind}_${steps}`;
    describe(name, () => {
      const meta = JSON.parse(readFileSync(path.join(schedDir, `${name}.json`), 'utf8'));
      let file: SafetensorsFile;
      let sched: DdimScheduler;
      beforeAll(async () => {
        file = await openSafetensorsFile(path.join(schedDir, `${name}.safetensors`));
        sched = DdimScheduler.fromConfig(meta.scheduler_config);
        sched.setTimesteps(meta.num_inference_steps);
      });
      afterAll(async () => {
        await file?.close();
      });

      it('timesteps', async () => {
        const ref = Array.from(await file.readI64('timesteps'), Number);
        expect(sched.timesteps).toEqual(ref);
        expect(sched.timesteps).toEqual(meta.timesteps);
      });

      it('betas and alphas_cumprod are bit-exact', async () => {
        expect(Array.from(sched.betas)).toEqual(Array.from(await file.readF32('betas')));
        const ref = await file.readF32('alphas_cumprod');
        expect(Array.from(sched.alphasCumprod)).toEqual(Array.from(ref));
        expect(sched.finalAlphaCumprod).toBe((await file.readF32('final_alpha_cumprod'))[0]);
        expect(sched.initNoiseSigma).toBe(1);
      });

      it('CPU step chain matches every prev_sample / pred_original_sample', async () => {
        let sample = await file.readF32('input.sample');
        let worst = 0;
        for (const [i, t] of sched.timesteps.entries()) {
          const refIn = await file.readF32(`step${i}.sample`);
          expect(relErr(sample, refIn)).toBeLessThan(1e-4);
          const out = sched.step(await file.readF32(`step${i}.model_output`), t, sample);
          const ePrev = relErr(out.prevSample, await file.readF32(`step${i}.prev_sample`));
          const eX0 = relErr(out.predOriginalSample, await file.readF32(`step${i}.pred_original_sample`));
          worst = Math.max(worst, ePrev, eX0);
          sample = out.prevSample;
        }
        // The float32 op order follows diffusers, so this is far below the 1e-4 budget.
        expect(worst).toBeLessThan(1e-6);
      });

      it('linear coefficients reproduce every step from the reference inputs', async () => {
        const coeffs = sched.allStepCoeffs();
        expect(coeffs.map((c) => c.t)).toEqual(sched.timesteps);
        for (const [i, c] of coeffs.entries()) {
          const x = await file.readF32(`step${i}.sample`);
          const m = await file.readF32(`step${i}.model_output`);
          const prev = x.map((xv, j) => c.sample * xv + c.model * m[j]);
          const x0 = x.map((xv, j) => c.predSample * xv + c.predModel * m[j]);
          expect(relErr(prev, await file.readF32(`step${i}.prev_sample`))).toBeLessThan(1e-4);
          expect(relErr(x0, await file.readF32(`step${i}.pred_original_sample`))).toBeLessThan(1e-4);
          expect(c.prevT).toBe(c.t - 1000 / steps);
          if (c.prevT < 0) expect(c.alphaProdPrev).toBe(sched.finalAlphaCumprod);
        }
      });
    });
  }
}

describe('DdimScheduler config handling', () => {
  it('loads the SD scheduler folders and PNDM-style configs', () => {
    for (const dir of ['models/scheduler', 'models/scheduler_v_prediction', 'configs/sd-1.5/scheduler', 'configs/sd-2.1-base/scheduler']) {
      const json = JSON.parse(readFileSync(path.join(golden, dir, 'scheduler_config.json'), 'utf8'));
      const s = DdimScheduler.fromConfig(json);
      expect(s.config.betaSchedule).toBe('scaled_linear');
      expect(s.config.clipSample).toBe(false);
      expect(s.setTimesteps(5)).toEqual([801, 601, 401, 201, 1]);
      expect(s.config.predictionType).toBe(dir.includes('v_prediction') ? 'v_prediction' : 'epsilon');
    }
  });

  it('uses DDIMScheduler defaults for missing keys', () => {
    const s = DdimScheduler.fromConfig({ _class_name: 'DDIMScheduler' });
    expect(s.config.clipSample).toBe(true);
    expect(s.config.setAlphaToOne).toBe(true);
    expect(s.finalAlphaCumprod).toBe(1);
    s.setTimesteps(4);
    expect(() => s.stepCoeffs(s.timesteps[0])).toThrow(/clip_sample/);
  });

  it('matches numpy timestep spacings', () => {
    const make = (timestepSpacing: 'leading' | 'trailing' | 'linspace') =>
      new DdimScheduler({ timestepSpacing, stepsOffset: 1, clipSample: false });
    // Values from numpy (diffusers 0.25.1 set_timesteps formulas).
    expect(make('leading').setTimesteps(3)).toEqual([667, 334, 1]);
    expect(make('trailing').setTimesteps(3)).toEqual([999, 666, 332]);
    expect(make('trailing').setTimesteps(7)).toEqual([999, 856, 713, 570, 428, 285, 142]);
    expect(make('linspace').setTimesteps(4)).toEqual([999, 666, 333, 0]);
    expect(make('linspace').setTimesteps(7)).toEqual([999, 832, 666, 500, 333, 166, 0]);
  });

  it('sample prediction coefficients agree with the CPU step', () => {
    const s = new DdimScheduler({ betaSchedule: 'scaled_linear', betaStart: 0.00085, betaEnd: 0.012, clipSample: false, setAlphaToOne: false, stepsOffset: 1, predictionType: 'sample' });
    s.setTimesteps(10);
    const x = Float32Array.from({ length: 16 }, (_, i) => Math.sin(i + 1));
    const m = Float32Array.from({ length: 16 }, (_, i) => Math.cos(3 * i));
    for (const t of s.timesteps) {
      const c = s.stepCoeffs(t);
      const out = s.step(m, t, x);
      expect(relErr(x.map((v, j) => c.sample * v + c.model * m[j]), out.prevSample)).toBeLessThan(1e-5);
      expect(relErr(x.map((v, j) => c.predSample * v + c.predModel * m[j]), out.predOriginalSample)).toBeLessThan(1e-6);
    }
  });
});

describe('float32 helpers', () => {
  it('fmaF32 rounds once', () => {
    const a = Math.fround(1 + 2 ** -12);
    // a*a = 1 + 2^-11 + 2^-24 is exactly halfway between two float32 values (ties to even) ...
    expect(fmaF32(a, a, 0)).toBe(1 + 2 ** -11);
    // ... and a tiny addend that float64 loses must still break the tie upwards.
    expect(fmaF32(a, a, 2 ** -80)).toBe(1 + 2 ** -11 + 2 ** -23);
    expect(fmaF32(a, a, -(2 ** -80))).toBe(1 + 2 ** -11);
    expect(Math.fround(a * a + 2 ** -80)).toBe(1 + 2 ** -11); // plain double rounding gets it wrong
    expect(fmaF32(2, 3, 1)).toBe(7);
  });

  it('torchLinspaceF32 pins the end points', () => {
    const v = torchLinspaceF32(0.1, 0.9, 37);
    expect(v[0]).toBe(Math.fround(0.1));
    expect(v[36]).toBe(Math.fround(0.9));
    expect(Array.from(torchLinspaceF32(2, 5, 1))).toEqual([2]);
  });
});
