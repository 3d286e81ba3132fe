// Golden runners for the CLIP cases: text encoders (CLIPTextModel: clip_text_sd1 / clip_text_sd2) and the
// image encoder (CLIPVisionModelWithProjection: clip_vision). Each checks every output, hidden state and
// activation in the golden file, the scalar loss sum(output_i * R_i) over the cotangents present, and the
// gradients of that loss with respect to the listed inputs and weights.
import { Tensor, grad, add, mul, sum } from '../engine/index.js';
import { ClipTextModel, ClipVisionModel, clipTextConfig, clipVisionConfig } from './clip.js';
import { registerRunner, type GoldenContext } from './golden.js';
import type { Params } from './weights.js';

/** Mark the weights named by grad.param.* as requiring grad; returns [golden name, weight] pairs. */
function gradParams(ctx: GoldenContext, params: Params): [string, Tensor][] {
  const out: [string, Tensor][] = [];
  for (const n of ctx.names('grad.param.')) {
    const w = n.slice('grad.param.'.length);
    if (!params.has(w)) {
      ctx.fail(n, `no weight "${w}" in the model`);
      continue;
    }
    out.push([n, params.get(w).requireGrad()]);
  }
  return out;
}

/** loss = sum over present cotangents of sum(output * R); returns the loss tensor and the terms used. */
async function buildLoss(ctx: GoldenContext, terms: { r: string; output: string; value: Tensor | undefined }[]) {
  let loss: Tensor | null = null;
  const used: [string, string][] = [];
  for (const t of terms) {
    if (!ctx.has(t.r)) continue;
    if (!t.value) throw new Error(`the model has no ${t.output} for ${t.r}`);
    const term = sum(mul(t.value, Tensor.from(await ctx.f32(t.r), ctx.shape(t.r))));
    loss = loss ? add(loss, term) : term;
    used.push([t.output, t.r]);
  }
  return { loss, used };
}

async function checkLossAndGrads(ctx: GoldenContext, loss: Tensor | null, used: [string, string][], wrt: [string, Tensor][]) {
  if (!loss) {
    for (const [n] of wrt) ctx.fail(n, 'no loss cotangents (loss.R*) in the golden file');
    return;
  }
  if (ctx.has('loss')) await ctx.checkLoss('loss', await loss.item(), used);
  if (!wrt.length) return;
  const gs = grad(loss, wrt.map(([, t]) => t));
  for (let i = 0; i < wrt.length; i++) await ctx.check(wrt[i][0], gs[i]);
}

export async function runClipTextCase(ctx: GoldenContext) {
  const { folder, params } = await ctx.loadModel(ctx.modelDir());
  const model = new ClipTextModel(clipTextConfig(folder.config, `${ctx.modelDir()}/config.json`), params);
  const wrt = gradParams(ctx, params);
  const [B, S] = ctx.shape('input.input_ids');
  const out = model.forward(await ctx.ints('input.input_ids'), [B, S]);
  const byName: Record<string, Tensor | undefined> = {
    'output.last_hidden_state': out.lastHiddenState,
    'output.pooler_output': out.pooled,
    'output.penultimate_normed': out.penultimateNormed,
    'output.text_embeds': out.textEmbeds,
    'act.text_model.embeddings': out.hiddenStates[0],
    'act.text_model.final_layer_norm': out.lastHiddenState,
  };
  out.hiddenStates.forEach((h, i) => {
    byName[`output.hidden_states.${i}`] = h;
    if (i > 0) byName[`act.text_model.encoder.layers.${i - 1}`] = h;
  });
  for (const n of [...ctx.names('output.'), ...ctx.names('act.')]) {
    const t = byName[n];
    if (t) await ctx.check(n, t);
    else ctx.fail(n, 'the model does not produce this tensor');
  }
  const { loss, used } = await buildLoss(ctx, [
    { r: 'loss.R_last', output: 'output.last_hidden_state', value: out.lastHiddenState },
    { r: 'loss.R_pool', output: 'output.pooler_output', value: out.pooled },
    { r: 'loss.R_penultimate', output: 'output.penultimate_normed', value: out.penultimateNormed },
    { r: 'loss.R_embeds', output: 'output.text_embeds', value: out.textEmbeds },
  ]);
  await checkLossAndGrads(ctx, loss, used, wrt);
  return ctx.checks;
}

export async function runClipVisionCase(ctx: GoldenContext) {
  const { folder, params } = await ctx.loadModel(ctx.modelDir());
  const model = new ClipVisionModel(clipVisionConfig(folder.config, `${ctx.modelDir()}/config.json`), params);
  const wrt = gradParams(ctx, params);
  const pixels = Tensor.from(await ctx.f32('input.pixel_values'), ctx.shape('input.pixel_values'));
  if (ctx.has('grad.input.pixel_values')) wrt.unshift(['grad.input.pixel_values', pixels.requireGrad()]);
  for (const n of ctx.names('grad.input.')) if (n !== 'grad.input.pixel_values') ctx.fail(n, 'not an input of this model');
  const out = model.forward(pixels);
  const byName: Record<string, Tensor | undefined> = {
    'output.image_embeds': out.imageEmbeds,
    'output.last_hidden_state': out.lastHiddenState,
    'output.pooler_output': out.pooled,
    'act.vision_model.embeddings': out.embeddings,
    'act.vision_model.pre_layrnorm': out.hiddenStates[0],
    'act.vision_model.post_layernorm': out.pooled,
    'act.visual_projection': out.imageEmbeds,
  };
  out.hiddenStates.forEach((h, i) => {
    byName[`output.hidden_states.${i}`] = h;
    if (i > 0) byName[`act.vision_model.encoder.layers.${i - 1}`] = h;
  });
  for (const n of [...ctx.names('output.'), ...ctx.names('act.')]) {
    const t = byName[n];
    if (t) await ctx.check(n, t);
    else ctx.fail(n, 'the model does not produce this tensor');
  }
  const { loss, used } = await buildLoss(ctx, [
    { r: 'loss.R_embeds', output: 'output.image_embeds', value: out.imageEmbeds },
    { r: 'loss.R_hidden', output: 'output.last_hidden_state', value: out.lastHiddenState },
    { r: 'loss.R_pool', output: 'output.pooler_output', value: out.pooled },
  ]);
  await checkLossAndGrads(ctx, loss, used, wrt);
  return ctx.checks;
}

for (const k of ['CLIPTextModel', 'CLIPTextModelWithProjection']) registerRunner(k, runClipTextCase);
for (const k of ['CLIPVisionModelWithProjection', 'CLIPVisionModel']) registerRunner(k, runClipVisionCase);
