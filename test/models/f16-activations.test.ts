// The models with f16 activations (`activations: 'f16'`, where the device has shader-f16) against the
// diffusers/transformers goldens, which were computed in fp32. Each stored activation is rounded to 11
// significant bits, and the roundings of a whole network add up, so the tolerances here are loose
// (normalized max error, see the numbers per check); the same checks at fp32 tolerances live in the
// model tests. What these catch: a kernel that stores the wrong dtype, drops a gradient, or reads f16 as f32.
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { add, grad, init, mul, rt, sum, Tensor, tidyAsync } from '../../engine/index.js';
import { discoverCases, GoldenContext, type GoldenCase } from '../../models/golden.js';
import { loadParts } from '../../models/golden-seedselect.js';
import { parseUNetConfig, UNet2DConditionModel } from '../../models/unet.js';
import { AutoencoderKL, parseVaeConfig } from '../../models/vae.js';
import { ClipVisionModel, clipVisionConfig } from '../../models/clip.js';
import { referenceConstants, seedSelectLoss } from '../../models/seedselect.js';
import { openSafetensorsFile } from '../../weights-tools/node-source.js';
import { relErr } from '../helpers/check.js';

const golden = path.resolve('..', 'shared', 'golden');
const COLD = 900_000;
let cases: GoldenCase[] = [];
beforeAll(async () => {
  await init();
  cases = await discoverCases(golden);
});

async function withCase(name: string, fn: (ctx: GoldenContext) => Promise<void>) {
  const c = cases.find((x) => x.name === name);
  if (!c) throw new Error(`golden case ${name} not found under ${golden}`);
  const file = await openSafetensorsFile(c.tensorsPath);
  const ctx = new GoldenContext(c, file);
  try {
    await tidyAsync(() => fn(ctx));
  } finally {
    await ctx.cleanup();
    await file.close();
  }
}

const load = async (ctx: GoldenContext, n: string) => Tensor.from(await ctx.f32(n), ctx.shape(n));

async function expectNear(what: string, got: Tensor, ref: Float32Array, tol: number) {
  const e = relErr(await got.data(), ref);
  console.log(`${what}: normalized max error ${e.toExponential(2)} (tolerance ${tol})`);
  expect(e, what).toBeLessThanOrEqual(tol);
}

function skipWithoutF16(ctx: { skip: () => void }) {
  if (!rt().features.has('shader-f16')) ctx.skip();
}

describe('models with f16 activations vs the fp32 goldens', () => {
  it('UNet (SD 2 style, checkpointed): output and the gradients of sample and encoder states', async (t) => {
    skipWithoutF16(t);
    await withCase('unet_sd2', async (ctx) => {
      const { folder, params } = await ctx.loadModel(ctx.modelDir());
      const model = new UNet2DConditionModel(parseUNetConfig(folder.config), params);
      const sample = (await load(ctx, 'input.sample')).requireGrad();
      const ehs = (await load(ctx, 'input.encoder_hidden_states')).requireGrad();
      const inside = new Map<string, string>();
      const capture = (name: string, t: Tensor) => inside.set(name, t.dtype);
      const out = model.forward(sample, await ctx.ints('input.timestep'), ehs, { activations: 'f16', checkpoint: true, capture });
      expect(out.dtype).toBe('f32');
      expect([inside.get('conv_in'), inside.get('mid_block'), inside.get('conv_out')]).toEqual(['f16', 'f16', 'f16']);
      await expectNear('unet output', out, await ctx.f32('output.sample'), 5e-3);
      const [gs, ge] = grad(sum(mul(out, await load(ctx, 'loss.R'))), [sample, ehs]);
      expect(gs.dtype).toBe('f32');
      await expectNear('unet grad sample', gs, await ctx.f32('grad.input.sample'), 1e-2);
      await expectNear('unet grad encoder states', ge, await ctx.f32('grad.input.encoder_hidden_states'), 1e-2);
    });
  }, COLD);

  it('VAE decode: image and the latent gradient', async (t) => {
    skipWithoutF16(t);
    await withCase('vae', async (ctx) => {
      const { folder, params } = await ctx.loadModel(ctx.modelDir());
      const vae = new AutoencoderKL(parseVaeConfig(folder.config), params);
      const latent = (await load(ctx, 'input.latent')).requireGrad();
      const inside = new Map<string, string>();
      const dec = vae.decode(latent, { activations: 'f16', checkpoint: true, capture: (name, t) => inside.set(name, t.dtype) });
      expect(dec.dtype).toBe('f32');
      expect(inside.get('decoder.mid_block')).toBe('f16');
      await expectNear('vae decode', dec, await ctx.f32('decode.sample'), 5e-3);
      const [g] = grad(sum(mul(dec, await load(ctx, 'loss.R_dec'))), [latent]);
      await expectNear('vae grad latent', g, await ctx.f32('decode.grad.input.latent'), 1e-2);
    });
  }, COLD);

  it('CLIP vision: image embeddings and the pixel gradient', async (t) => {
    skipWithoutF16(t);
    await withCase('clip_vision', async (ctx) => {
      const { folder, params } = await ctx.loadModel(ctx.modelDir());
      const model = new ClipVisionModel(clipVisionConfig(folder.config), params);
      const pixels = (await load(ctx, 'input.pixel_values')).requireGrad();
      const out = model.forward(pixels, { activations: 'f16' });
      expect(out.lastHiddenState.dtype).toBe('f16');
      expect(out.imageEmbeds!.dtype).toBe('f32');
      await expectNear('clip image embeds', out.imageEmbeds!, await ctx.f32('output.image_embeds'), 5e-3);
      // the golden's loss: sum(image_embeds * R_embeds) + sum(last_hidden_state * R_hidden)
      const loss = add(sum(mul(out.imageEmbeds!, await load(ctx, 'loss.R_embeds'))), sum(mul(out.lastHiddenState, await load(ctx, 'loss.R_hidden'))));
      const [g] = grad(loss, [pixels]);
      await expectNear('clip grad pixels', g, await ctx.f32('grad.input.pixel_values'), 1e-2);
    });
  }, COLD);

  it('SeedSelect chain (official recipe): loss and the gradient with respect to z_T', async (t) => {
    skipWithoutF16(t);
    await withCase('seedselect_official', async (ctx) => {
      const parts = await loadParts(ctx, 'f16');
      const uncond = await ctx.ints('input.uncond_ids');
      const cond = await ctx.ints('input.cond_ids');
      const emb = parts.text.forward([...uncond, ...cond], [2, uncond.length]).lastHiddenState;
      const m = ctx.meta as Record<string, unknown>;
      const opts = {
        steps: m.num_inference_steps as number,
        guidance: (m.guidance_scale as number) ?? 7.5,
        stepWeights: m.semantic_weights as number[],
        semantic: 'cosine' as const,
        clampDecoded: true,
        semanticWeight: (m.loss_weights as { semantic: number }).semantic,
        appearanceWeight: (m.loss_weights as { appearance: number }).appearance,
      };
      const refs = referenceConstants(parts, await load(ctx, 'input.ref_images_clip'), await load(ctx, 'input.ref_images_vae'), {
        semantic: 'cosine',
        vaeNoise: await load(ctx, 'input.ref_vae_eps'),
      });
      const z = (await load(ctx, 'input.z_T')).requireGrad();
      const l = seedSelectLoss(parts, z, emb, refs, opts);
      const total = await l.total.item();
      const want = (await ctx.f32('loss.total'))[0];
      console.log(`seedselect loss f16 activations ${total} vs golden ${want}`);
      expect(Math.abs(total - want)).toBeLessThanOrEqual(2e-3 * Math.abs(want));
      const [g] = grad(l.total, [z]);
      // twenty guided UNet calls, three decodes and CLIP passes, each rounding its activations: measured ~1e-2
      await expectNear('seedselect grad z_T', g, await ctx.f32('grad.z_T'), 3e-2);
    });
  }, COLD);
});

