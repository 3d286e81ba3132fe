// Golden runners for whole SeedSelect chains: `seedselect_official` (the official code's loss: last three
// steps scored with 1 - cosine to the normalized CLIP centroid after clamp + bicubic resize, AdamW with the
// lr drop) and `seedselect` (final step only, plain L2 distance to the mean embedding, Adam). Both check the
// reference constants, every DDIM step's latent, the losses, d loss / d z_T and the optimizer trajectory,
// using the same library code (models/seedselect.ts) that `seedselect generate` runs.
import { Tensor, noGrad, tidy, tidyAsync, grad } from '../engine/index.js';
import { nodeFolder } from '../weights-tools/node-source.js';
import { loadUNet } from './unet.js';
import { loadVae } from './vae.js';
import { loadClipTextModel, loadClipVisionModel } from './clip.js';
import { DdimScheduler } from './ddim.js';
import { readConfig } from '../weights-tools/model-folder.js';
import { OPENAI_CLIP_MEAN, OPENAI_CLIP_STD } from './pipeline.js';
import { guidedStep, officialLr, optimizeSeed, referenceConstants, seedSelectLoss, type DiffusionParts, type LossOptions } from './seedselect.js';
import { affine, scale } from '../kernels/elementwise.js';
import { TOLERANCES, registerRunner, type GoldenContext } from './golden.js';

/** The golden case's models as SeedSelect parts; `activations` is the storage of their activations. */
export async function loadParts(ctx: GoldenContext, activations: 'f32' | 'f16' = 'f32'): Promise<DiffusionParts & { text: Awaited<ReturnType<typeof loadClipTextModel>> }> {
  const m = ctx.meta.models as Record<string, string> | undefined;
  if (!m?.unet || !m.vae || !m.text_encoder || !m.image_encoder || !m.scheduler)
    throw new Error(`${ctx.name}: golden JSON "models" must name unet, vae, text_encoder, image_encoder and scheduler folders`);
  const unet = await loadUNet(nodeFolder(ctx.path(m.unet)));
  const vae = await loadVae(nodeFolder(ctx.path(m.vae)));
  const text = await loadClipTextModel(nodeFolder(ctx.path(m.text_encoder)));
  const vision = await loadClipVisionModel(nodeFolder(ctx.path(m.image_encoder)));
  ctx.onCleanup(() => [unet, vae, text, vision].forEach((x) => x.dispose()));
  const schedFolder = nodeFolder(ctx.path(m.scheduler));
  const scheduler = DdimScheduler.fromConfig(await readConfig(schedFolder, 'scheduler_config.json'));
  return {
    text,
    unet: (s, t, c) => unet.forward(s, t, c, { activations }),
    vaeDecode: (z) => vae.decode(z, { activations }),
    vaeEncode: (x) => {
      const d = vae.encode(x, { activations });
      return { mean: d.mean, std: d.std };
    },
    clipImageEmbeds: (px) => vision.forward(px, { activations }).imageEmbeds!,
    scheduler,
    vaeScale: vae.config.scalingFactor,
    clipSize: vision.config.imageSize,
    clipMean: (ctx.meta.clip_mean as number[]) ?? OPENAI_CLIP_MEAN,
    clipStd: (ctx.meta.clip_std as number[]) ?? OPENAI_CLIP_STD,
  };
}

/** Compare an optimizer iterate, tolerating sign flips where the reference gradient is at the fp32 noise (README caveat). */
async function checkIterate(ctx: GoldenContext, name: string, got: Float32Array, gradName: string) {
  const ref = await ctx.f32(name);
  const g = ctx.has(gradName) ? await ctx.f32(gradName) : null;
  const adj = Float32Array.from(got);
  let excused = 0;
  if (g)
    for (let i = 0; i < adj.length; i++)
      if (Math.abs(g[i]) < 1e-5 && Math.abs(adj[i] - ref[i]) <= 0.02) {
        adj[i] = ref[i];
        excused++;
      }
  await ctx.check(name, adj, { tol: TOLERANCES.chain, note: excused ? `${excused} elements with |ref grad| < 1e-5 compared with atol 0.02` : undefined });
}

async function run(ctx: GoldenContext, official: boolean) {
  const parts = await loadParts(ctx);
  const chain = { tol: TOLERANCES.chain };
  const uncond = await ctx.ints('input.uncond_ids');
  const cond = await ctx.ints('input.cond_ids');
  const emb = noGrad(() => tidy(() => parts.text.forward([...uncond, ...cond], [2, uncond.length]).lastHiddenState)).keep();
  ctx.onCleanup(() => emb.dispose());
  await ctx.check('const.emb', emb, { kind: 'output' });

  const steps = official ? (ctx.meta.num_inference_steps as number) : ctx.shape('timesteps')[0];
  const opts: LossOptions = official
    ? {
        steps,
        guidance: (ctx.meta.guidance_scale as number) ?? 7.5,
        stepWeights: ctx.meta.semantic_weights as number[],
        semantic: 'cosine',
        clampDecoded: true,
        semanticWeight: (ctx.meta.loss_weights as { semantic: number }).semantic,
        appearanceWeight: (ctx.meta.loss_weights as { appearance: number }).appearance,
      }
    : { steps, guidance: 7.5, stepWeights: [1], semantic: 'l2', clampDecoded: false, semanticWeight: 0.8, appearanceWeight: 0.2 };

  // reference constants
  const load = async (n: string) => Tensor.from(await ctx.f32(n), ctx.shape(n));
  const refs = await tidyAsync(async () => {
    if (official) {
      const [clip01, vaeImgs, eps] = [await load('input.ref_images_clip'), await load('input.ref_images_vae'), await load('input.ref_vae_eps')];
      return referenceConstants(parts, clip01, vaeImgs, { semantic: 'cosine', vaeNoise: eps });
    }
    const imgs = await load('input.refs');
    return referenceConstants(parts, affine(imgs, 0.5, 0.5), imgs, { semantic: 'l2' });
  });
  refs.clipCentroid.keep();
  refs.vaeCentroid.keep();
  ctx.onCleanup(() => {
    refs.clipCentroid.dispose();
    refs.vaeCentroid.dispose();
  });
  if (official) {
    await ctx.check('const.clip_centroid', refs.clipCentroid, { kind: 'output' });
    await ctx.check('const.vae_centroid', refs.vaeCentroid, { kind: 'output' });
  } else {
    await ctx.check('const.ref_embeds_mean', refs.clipCentroid, { kind: 'output' });
    await ctx.check('const.ref_latents_mean', refs.vaeCentroid, { kind: 'output' });
  }

  // the sampler chain, step by step
  const zT = await ctx.f32('input.z_T');
  const shape = ctx.shape('input.z_T');
  parts.scheduler.setTimesteps(steps);
  await ctx.check('timesteps', parts.scheduler.timesteps, { tol: 0 });
  await noGrad(() =>
    tidyAsync(async () => {
      let z = Tensor.from(zT, shape);
      for (const [i, c] of parts.scheduler.allStepCoeffs().entries()) {
        z = guidedStep(parts, z, c, emb, opts.guidance!);
        if (ctx.has(`step${i}.latent_out`)) await ctx.check(`step${i}.latent_out`, z, chain);
      }
    }),
  );

  // losses and the gradient with respect to the seed (checkpointed chain, as the product runs it)
  await tidyAsync(async () => {
    const z = Tensor.from(zT, shape).requireGrad();
    const l = seedSelectLoss(parts, z, emb, refs, opts);
    await ctx.check('loss.total', [await l.total.item()], { ...chain, kind: 'loss' });
    await ctx.check('loss.semantic', [await l.semantic.item()], { ...chain, kind: 'loss' });
    await ctx.check('loss.appearance', [await l.appearance.item()], { ...chain, kind: 'loss' });
    await ctx.check('z_0', l.z0, chain);
    const [g] = grad(l.total, [z]);
    await ctx.check('grad.z_T', g, chain);
  });

  // gradients with respect to the intermediates the golden lists, on an unchecked (fully recorded) chain
  const wanted = ctx.names('grad.').filter((n) => n.startsWith('grad.step'));
  const fromParts = ctx.has('grad.z_T.from_semantic') || ctx.has('grad.z_T.from_appearance');
  if (wanted.length || fromParts)
    await tidyAsync(async () => {
      const z = Tensor.from(zT, shape).requireGrad();
      const captured = new Map<string, Tensor>();
      const l = seedSelectLoss(parts, z, emb, refs, { ...opts, checkpoint: false, capture: (n, t) => captured.set(n, t) });
      const names = wanted.map((n) => n.slice('grad.'.length)).filter((n) => captured.has(n));
      const gs = grad(l.total, names.map((n) => captured.get(n)!), undefined, false, true);
      for (const [k, n] of names.entries()) await ctx.check(`grad.${n}`, gs[k], chain);
      for (const n of wanted) if (!captured.has(n.slice('grad.'.length))) ctx.fail(n, 'the chain has no such intermediate');
      if (ctx.has('grad.z_T.from_semantic')) await ctx.check('grad.z_T.from_semantic', grad(scale(l.semantic, opts.semanticWeight!), [z], undefined, false, true)[0], chain);
      if (ctx.has('grad.z_T.from_appearance')) await ctx.check('grad.z_T.from_appearance', grad(scale(l.appearance, opts.appearanceWeight!), [z])[0], chain);
    });

  // the optimizer trajectory
  const prefix = official ? 'adamw' : 'adam';
  const iterations = official ? (ctx.meta.adamw_iterations as number) : [0, 1, 2, 3, 4, 5].filter((k) => ctx.has(`adam.step${k}.z_after`)).length;
  const lrs = ctx.meta.adamw_lr_per_iteration as number[] | undefined;
  const zs: Float32Array[] = [];
  const res = await optimizeSeed(parts, zT, shape, emb, refs, {
    ...opts,
    iterations,
    optimizer: official ? 'adamw' : 'adam',
    lr: official ? (k) => lrs?.[k] ?? officialLr(k) : 0.01,
    weightDecay: official ? ((ctx.meta.adamw_weight_decay as number) ?? 0.01) : 0,
    onIteration: async (_info, z) => {
      zs.push(Float32Array.from(await z()));
    },
  });
  for (let k = 0; k < iterations; k++) {
    const p = `${prefix}.step${k}.`;
    await ctx.check(`${p}loss_total`, [res.history[k].total], { ...chain, kind: 'loss' });
    await checkIterate(ctx, `${p}z_after`, zs[k], `${p}grad`);
  }
}

registerRunner('seedselect_official', (ctx) => run(ctx, true));
registerRunner('seedselect', (ctx) => run(ctx, false));
