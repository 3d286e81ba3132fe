// Golden runner for AutoencoderKL cases: the encode half (latent_dist mean / logvar / std, the encoder and
// quant_conv activations, loss sum(mean * R_mean) + sum(std * R_std) and its gradients under
// encode.grad.*) and the decode half (decode.sample, post_quant_conv and decoder activations,
// loss sum(sample * R_dec), gradients under decode.grad.*). Either half runs only when its input is present.
import { Tensor, add, mul, sum } from '../engine/index.js';
import { AutoencoderKL, parseVaeConfig } from './vae.js';
import { registerRunner, type GoldenContext, type CaseCheck } from './golden.js';
import { ActivationStore, checkGrads, gradTargets } from './golden-unet.js';

export interface VaeCaseOptions {
  /** run the model with gradient checkpointing (gradients then come from backward() into .grad) */
  checkpoint?: boolean;
}

/** Cotangent name (after `loss.R_`) -> the output it multiplies. */
const ENCODE_TERMS: Record<string, 'mean' | 'std' | 'logvar'> = { mean: 'mean', std: 'std', logvar: 'logvar' };

async function lossOf(ctx: GoldenContext, terms: [Tensor, string, string][]): Promise<{ loss: Tensor | null; used: [string, string][] }> {
  let loss: Tensor | null = null;
  const used: [string, string][] = [];
  for (const [value, outName, rName] of terms) {
    if (!ctx.has(rName)) continue;
    const term = sum(mul(value, Tensor.from(await ctx.f32(rName), ctx.shape(rName))));
    loss = loss ? add(loss, term) : term;
    used.push([outName, rName]);
  }
  return { loss, used };
}

export async function runVaeCase(ctx: GoldenContext, opts: VaeCaseOptions = {}): Promise<CaseCheck[]> {
  const dir = ctx.modelDir();
  const { folder, params } = await ctx.loadModel(dir);
  const vae = new AutoencoderKL(parseVaeConfig(folder.config, `${dir}/config.json`), params);
  const resetGrad = () => {
    for (const t of params.all()) t.requiresGrad = false;
  };
  ctx.onCleanup(resetGrad);
  const acts = new ActivationStore(ctx);
  try {
    if (ctx.has('input.image')) {
      const image = Tensor.from(await ctx.f32('input.image'), ctx.shape('input.image'));
      const targets = gradTargets(ctx, 'encode.', params, { image });
      const dist = vae.encode(image, { capture: acts.capture, checkpoint: opts.checkpoint });
      for (const n of ctx.names('encode.')) {
        const field = n.slice('encode.'.length);
        if (field === 'mean' || field === 'logvar' || field === 'std') await ctx.check(n, dist[field], { kind: 'output' });
      }
      const { loss, used } = await lossOf(
        ctx,
        Object.entries(ENCODE_TERMS).map(([r, f]) => [dist[f], `encode.${f}`, `loss.R_${r}`] as [Tensor, string, string]),
      );
      if (loss) {
        if (ctx.has('encode.loss')) await ctx.checkLoss('encode.loss', await loss.item(), used);
        await checkGrads(ctx, loss, targets, opts.checkpoint);
      } else for (const [n] of targets) ctx.fail(n, 'no encode cotangents (loss.R_mean / loss.R_std) in the golden file', 'gradient');
      resetGrad();
    }
    if (ctx.has('input.latent')) {
      const latent = Tensor.from(await ctx.f32('input.latent'), ctx.shape('input.latent'));
      const targets = gradTargets(ctx, 'decode.', params, { latent });
      const dec = vae.decode(latent, { capture: acts.capture, checkpoint: opts.checkpoint });
      if (ctx.has('decode.sample')) await ctx.check('decode.sample', dec, { kind: 'output' });
      const { loss, used } = await lossOf(ctx, [[dec, 'decode.sample', 'loss.R_dec']]);
      if (loss) {
        if (ctx.has('decode.loss')) await ctx.checkLoss('decode.loss', await loss.item(), used);
        await checkGrads(ctx, loss, targets, opts.checkpoint);
      } else for (const [n] of targets) ctx.fail(n, 'no decode cotangent (loss.R_dec) in the golden file', 'gradient');
      resetGrad();
    }
    await acts.checkAll();
  } finally {
    acts.dispose();
  }
  return ctx.checks;
}

registerRunner('AutoencoderKL', (ctx) => runVaeCase(ctx));
