// Golden runner for DDIM scheduler cases (scheduler/ddim_*): timesteps, betas, alphas_cumprod and every
// step of the chained procedure, starting from input.sample and feeding each step's own prev_sample into
// the next. The chain runs twice: on the GPU through the linear step coefficients (what pipelines use)
// and on the CPU through the float32 reference `step()`.
import { Tensor, mapRaw } from '../engine/index.js';
import { DdimScheduler } from './ddim.js';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { registerRunner, type GoldenContext } from './golden.js';

async function schedulerConfig(ctx: GoldenContext): Promise<Record<string, unknown>> {
  const c = ctx.meta.scheduler_config;
  if (c && typeof c === 'object') return c as Record<string, unknown>;
  if (typeof ctx.meta.model_dir === 'string') {
    return JSON.parse(await readFile(join(ctx.modelDir(), 'scheduler_config.json'), 'utf8'));
  }
  throw new Error('the case gives neither scheduler_config nor model_dir');
}

/** One DDIM step on the GPU: (prev, pred_original) = linear combinations of (sample, model_output). */
function gpuStep(sched: DdimScheduler, t: number, sample: Tensor, model: Tensor): { prev: Tensor; x0: Tensor } {
  const k = sched.stepCoeffs(t);
  return {
    prev: mapRaw('ddim_step', 'a * p0 + b * p1', [sample, model], k.sample, k.model),
    x0: mapRaw('ddim_step', 'a * p0 + b * p1', [sample, model], k.predSample, k.predModel),
  };
}

export async function runDdimCase(ctx: GoldenContext) {
  const sched = DdimScheduler.fromConfig(await schedulerConfig(ctx));
  const steps = typeof ctx.meta.num_inference_steps === 'number' ? ctx.meta.num_inference_steps : ctx.shape('timesteps')[0];
  sched.setTimesteps(steps);
  if (ctx.has('timesteps')) await ctx.check('timesteps', sched.timesteps, { tol: 0 });
  if (ctx.has('betas')) await ctx.check('betas', sched.betas);
  if (ctx.has('alphas_cumprod')) await ctx.check('alphas_cumprod', sched.alphasCumprod);
  if (ctx.has('final_alpha_cumprod')) await ctx.check('final_alpha_cumprod', [sched.finalAlphaCumprod]);

  const shape = ctx.shape('input.sample');
  const x0Host = await ctx.f32('input.sample');
  const linear = !sched.config.clipSample;
  let cpu = x0Host;
  let gpu = linear ? Tensor.from(x0Host, shape) : null;
  for (const [i, t] of sched.timesteps.entries()) {
    const p = `step${i}.`;
    if (!ctx.has(`${p}model_output`)) {
      ctx.fail(`${p}model_output`, 'golden tensor missing: the chain stops here');
      break;
    }
    const m = await ctx.f32(`${p}model_output`);
    if (ctx.has(`${p}sample`)) {
      await ctx.check(`${p}sample`, cpu, { note: 'cpu' });
      if (gpu) await ctx.check(`${p}sample`, gpu, { note: 'gpu' });
    }
    const out = sched.step(m, t, cpu);
    if (ctx.has(`${p}pred_original_sample`)) await ctx.check(`${p}pred_original_sample`, out.predOriginalSample, { note: 'cpu' });
    if (ctx.has(`${p}prev_sample`)) await ctx.check(`${p}prev_sample`, out.prevSample, { note: 'cpu' });
    cpu = out.prevSample;
    if (gpu) {
      const mt = Tensor.from(m, shape);
      const r = gpuStep(sched, t, gpu, mt);
      if (ctx.has(`${p}pred_original_sample`)) await ctx.check(`${p}pred_original_sample`, r.x0, { note: 'gpu' });
      if (ctx.has(`${p}prev_sample`)) await ctx.check(`${p}prev_sample`, r.prev, { note: 'gpu' });
      gpu.dispose();
      mt.dispose();
      r.x0.dispose();
      gpu = r.prev;
    }
  }
  gpu?.dispose();
  return ctx.checks;
}

registerRunner('DDIMScheduler', runDdimCase, {
  coverage: /^(timesteps|betas|alphas_cumprod|final_alpha_cumprod)$|^step\d+\.(sample|pred_original_sample|prev_sample)$/,
});
