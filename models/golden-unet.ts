// Golden runner for UNet2DConditionModel cases (unet_sd1, unet_sd2 and any other config): checks the
// output, every act.<module path> activation, the scalar loss sum(output.sample * loss.R) and every
// gradient the golden file lists (grad.input.<input name>, grad.param.<parameter name>).
import { Tensor, grad, backward, mul, sum } from '../engine/index.js';
import { UNet2DConditionModel, parseUNetConfig } from './unet.js';
import { registerRunner, type GoldenContext, type CaseCheck } from './golden.js';
import type { Params } from './weights.js';

/** The leaves to differentiate with respect to: [golden gradient name, tensor] for each `<prefix>grad.*`. */
export function gradTargets(ctx: GoldenContext, prefix: string, params: Params, inputs: Record<string, Tensor>): [string, Tensor][] {
  const out: [string, Tensor][] = [];
  for (const n of ctx.names(`${prefix}grad.`)) {
    const rest = n.slice(`${prefix}grad.`.length);
    let t: Tensor | undefined;
    if (rest.startsWith('param.')) {
      const w = rest.slice('param.'.length);
      if (params.has(w)) t = params.get(w);
    } else if (rest.startsWith('input.')) t = inputs[rest.slice('input.'.length)];
    if (!t) {
      ctx.fail(n, `nothing in the model or its inputs is named "${rest}"`);
      continue;
    }
    out.push([n, t.requireGrad()]);
  }
  return out;
}

/** Collects captured activations that the golden file has (`<prefix>act.<name>`), kept until `dispose`. */
export class ActivationStore {
  readonly map = new Map<string, Tensor>();
  constructor(
    private ctx: GoldenContext,
    private prefix = 'act.',
  ) {}
  readonly capture = (name: string, t: Tensor) => {
    const key = this.prefix + name;
    if (this.ctx.has(key) && !this.map.has(key)) this.map.set(key, t.keep());
  };
  /** Check every golden activation under the prefix (missing ones fail). */
  async checkAll(): Promise<void> {
    for (const n of this.ctx.names(this.prefix)) {
      const t = this.map.get(n);
      if (t) await this.ctx.check(n, t, { kind: 'activation' });
      else this.ctx.fail(n, 'the model did not produce this activation', 'activation');
    }
  }
  dispose() {
    for (const t of this.map.values()) t.dispose();
    this.map.clear();
  }
}

/**
 * Gradients of `loss` for each target: with `viaBackward`, accumulated `.grad` of leaves (what
 * checkpointed models need); otherwise `grad()`.
 */
export async function checkGrads(ctx: GoldenContext, loss: Tensor, targets: [string, Tensor][], viaBackward = false): Promise<void> {
  if (!targets.length) return;
  if (viaBackward) {
    for (const [, t] of targets) if (t.grad) (t.grad.dispose(), (t.grad = null));
    backward(loss);
    for (const [n, t] of targets) {
      if (t.grad) await ctx.check(n, t.grad, { kind: 'gradient' });
      else ctx.fail(n, 'no gradient reached this tensor', 'gradient');
    }
    for (const [, t] of targets) if (t.grad) (t.grad.dispose(), (t.grad = null));
    return;
  }
  const gs = grad(loss, targets.map(([, t]) => t));
  for (let i = 0; i < targets.length; i++) {
    await ctx.check(targets[i][0], gs[i], { kind: 'gradient' });
    gs[i].dispose();
  }
}

export interface UnetCaseOptions {
  /** run the model with gradient checkpointing (gradients then come from backward() into .grad) */
  checkpoint?: boolean;
}

export async function runUnetCase(ctx: GoldenContext, opts: UnetCaseOptions = {}): Promise<CaseCheck[]> {
  const dir = ctx.modelDir();
  const { folder, params } = await ctx.loadModel(dir);
  const model = new UNet2DConditionModel(parseUNetConfig(folder.config, `${dir}/config.json`), params);
  ctx.onCleanup(() => {
    for (const t of params.all()) t.requiresGrad = false;
  });

  const sample = Tensor.from(await ctx.f32('input.sample'), ctx.shape('input.sample'));
  const ehs = Tensor.from(await ctx.f32('input.encoder_hidden_states'), ctx.shape('input.encoder_hidden_states'));
  const timesteps = await ctx.ints('input.timestep');
  const targets = gradTargets(ctx, '', params, { sample, encoder_hidden_states: ehs });

  const acts = new ActivationStore(ctx);
  try {
    const out = model.forward(sample, timesteps, ehs, { capture: acts.capture, checkpoint: opts.checkpoint });
    for (const n of ctx.names('output.')) {
      if (n === 'output.sample') await ctx.check(n, out);
      else ctx.fail(n, 'the model does not produce this output');
    }
    await acts.checkAll();
    if (ctx.has('loss.R')) {
      const loss = sum(mul(out, Tensor.from(await ctx.f32('loss.R'), ctx.shape('loss.R'))));
      if (ctx.has('loss')) await ctx.checkLoss('loss', await loss.item(), [['output.sample', 'loss.R']]);
      await checkGrads(ctx, loss, targets, opts.checkpoint);
    } else for (const [n] of targets) ctx.fail(n, 'no loss.R cotangent in the golden file', 'gradient');
  } finally {
    acts.dispose();
  }
  return ctx.checks;
}

registerRunner('UNet2DConditionModel', (ctx) => runUnetCase(ctx));
