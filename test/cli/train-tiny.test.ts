// `seedselect train-tiny --plan`: per-stage overrides are parsed strictly (a typo must not silently train
// with the defaults).
import { describe, expect, it } from 'vitest';
import { parsePlan } from '../../cli/commands/train-tiny.js';
import { UserError } from '../../cli/errors.js';
import { DEFAULT_PLAN, reproduceCommand, trainingTime, type StageName, type StagePlan } from '../../tiny/train.js';

describe('seedselect train-tiny --plan', () => {
  it('accepts per-stage overrides of steps, batch and lr', () => {
    expect(parsePlan('{"vae":{"steps":1000,"batch":16},"unet":{"lr":0.002}}')).toEqual({ vae: { steps: 1000, batch: 16 }, unet: { lr: 0.002 } });
  });
  it('rejects bad JSON, unknown stages and fields, and bad values, naming them', () => {
    expect(() => parsePlan('{unet:1}')).toThrow(UserError);
    expect(() => parsePlan('[1]')).toThrow(/JSON object keyed by stage/);
    expect(() => parsePlan('{"vea":{"steps":1}}')).toThrow(/unknown stage "vea"/);
    expect(() => parsePlan('{"vae":{"step":1}}')).toThrow(/vae\.step is not a plan field/);
    expect(() => parsePlan('{"vae":{"steps":-3}}')).toThrow(/vae\.steps must be a positive integer/);
    expect(() => parsePlan('{"vae":{"batch":2.5}}')).toThrow(/vae\.batch must be a positive integer/);
    expect(() => parsePlan('{"unet":{"lr":"0.1"}}')).toThrow(/unet\.lr must be a positive number/);
    expect(() => parsePlan('{"unet":5}')).toThrow(/unet must be an object/);
  });
});

describe('model card: the command that reproduces a run', () => {
  const o = { trainSize: 20000, seed: 0, vaeKlWeight: 1e-3, vaeData: 'train' as const };
  it('is the plain command for the default options', () => {
    expect(reproduceCommand(o, DEFAULT_PLAN)).toBe('npx tsx cli/seedselect.ts train-tiny --out DIR');
  });
  it('names only what differs, as flags that parse back to the same plan', () => {
    const plan: Record<StageName, StagePlan> = structuredClone(DEFAULT_PLAN);
    plan.unet.steps = 1600;
    plan.unet.lr = 0.002;
    const cmd = reproduceCommand({ ...o, seed: 3, vaeKlWeight: 1e-4, vaeData: 'balanced' }, plan);
    expect(cmd).toContain('--seed 3');
    expect(cmd).toContain('--vae-kl 0.0001');
    expect(cmd).toContain('--vae-data balanced');
    const json = /--plan '(.*)'/.exec(cmd)![1];
    expect(parsePlan(json)).toEqual({ unet: { steps: 1600, lr: 0.002 } });
  });
});

describe('model card: training time per adapter', () => {
  it('sums the stages per adapter, naming stages without a recorded one', () => {
    const stages = [
      { seconds: 120, adapter: 'NVIDIA H200' },
      { seconds: 60, adapter: 'NVIDIA H200' },
      { seconds: 1074 },
    ];
    expect(trainingTime(stages, 'an unrecorded adapter')).toBe('3 minutes on NVIDIA H200 + 18 minutes on an unrecorded adapter');
    expect(trainingTime([{ seconds: 3600, adapter: 'llvmpipe' }], 'x')).toBe('60 minutes on llvmpipe');
  });
});
