// CLIP text/vision encoders and DDIM against ../shared/golden through the golden runners (every output,
// hidden state, activation, loss and listed gradient), with both kernel variants; plus CLIPModel folders
// (text_config / vision_config), the `layers` option (SD2 penultimate conditioning) and input errors.
import path from 'node:path';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Tensor, ShapeError, tidy } from '../../engine/index.js';
import { setMatmulVariant } from '../../kernels/matmul.js';
import { setAttentionVariant } from '../../kernels/attention.js';
import { runGoldenFolder, type CaseCheck } from '../../models/golden.js';
import {
  clipTextConfig, clipVisionConfig, loadClipTextModelFromDir, loadClipVisionModelFromDir, ClipTextModel,
} from '../../models/clip.js';
import { openSafetensorsFile, writeSafetensorsFile } from '../../weights-tools/node-source.js';
import { WeightsError } from '../../weights-tools/errors.js';
import { gpu, relErr } from '../helpers/check.js';

const GOLDEN = path.resolve('..', 'shared', 'golden');

function failures(checks: CaseCheck[]): string {
  return checks
    .filter((c) => !c.ok)
    .map((c) => `${c.case} ${c.tensor} (${c.kind}): err ${c.err} > tol ${c.tol}${c.note ? ` [${c.note}]` : ''}`)
    .join('\n');
}

function byCase(checks: CaseCheck[]): Map<string, CaseCheck[]> {
  const m = new Map<string, CaseCheck[]>();
  for (const c of checks) m.set(c.case, [...(m.get(c.case) ?? []), c]);
  return m;
}

beforeAll(async () => {
  await gpu();
});
afterAll(() => {
  setMatmulVariant(null);
  setAttentionVariant(null);
});

describe('golden: CLIP text/vision and DDIM', () => {
  it('every check of the clip_* and ddim_* cases passes (default kernel variants)', async () => {
    const checks = await runGoldenFolder(GOLDEN, { filter: /^(clip_|ddim_)/ });
    expect(failures(checks)).toBe('');
    const cases = byCase(checks);
    for (const name of ['clip_text_sd1', 'clip_text_sd2', 'clip_vision']) expect(cases.has(name), name).toBe(true);
    expect([...cases.keys()].filter((n) => n.startsWith('ddim_')).length).toBe(4);
    // what the CLIP cases cover: outputs, hidden states, the scalar loss and every listed gradient
    const text = cases.get('clip_text_sd1')!.map((c) => c.tensor);
    expect(text).toEqual(expect.arrayContaining([
      'output.last_hidden_state', 'output.pooler_output', 'output.penultimate_normed', 'output.hidden_states.0',
      'output.hidden_states.5', 'loss', 'grad.param.text_model.embeddings.token_embedding.weight',
    ]));
    const vision = cases.get('clip_vision')!;
    expect(vision.map((c) => c.tensor)).toEqual(expect.arrayContaining([
      'output.image_embeds', 'act.vision_model.embeddings', 'grad.input.pixel_values',
      'grad.param.vision_model.embeddings.class_embedding', 'grad.param.vision_model.embeddings.patch_embedding.weight',
    ]));
    expect(vision.filter((c) => c.kind === 'gradient').length).toBe(13);
    // the DDIM chain is checked on both paths
    const d = cases.get('ddim_epsilon_50')!;
    expect(d.filter((c) => c.tensor === 'step49.prev_sample').map((c) => c.note).sort()).toEqual(['cpu', 'gpu']);
    for (const c of checks) expect(c.tol, `${c.case} ${c.tensor}`).toBeLessThanOrEqual(5e-4);
  });

  it('CLIP cases also pass with the shared-memory matmul and attention variants', async () => {
    setMatmulVariant('shared');
    setAttentionVariant('shared');
    try {
      const checks = await runGoldenFolder(GOLDEN, { filter: /^clip_/ });
      expect(checks.length).toBeGreaterThan(50);
      expect(failures(checks)).toBe('');
    } finally {
      setMatmulVariant(null);
      setAttentionVariant(null);
    }
  });
});

describe('CLIP models', () => {
  it('running one layer fewer gives the SD2 penultimate conditioning', async () => {
    const model = await loadClipTextModelFromDir(path.join(GOLDEN, 'models/clip_text_sd2'));
    const file = await openSafetensorsFile(path.join(GOLDEN, 'clip_text_sd2/golden.safetensors'));
    try {
      const ids = await file.readI64('input.input_ids');
      const [B, S] = file.tensors.get('input.input_ids')!.shape;
      const full = tidy(() => model.forward(ids, [B, S]));
      const eos = tidy(() => model.forward(ids, [B, S], { pool: 'eos' }));
      // row 0 is BOS + 12 ids + EOS, row 1 the empty prompt; padding is 0 for SD2
      expect(full.poolIndex).toEqual([13, 1]);
      expect(eos.poolIndex).toEqual([13, 1]);
      const out = tidy(() => model.forward(ids, [B, S], { layers: model.config.numLayers - 1 }).lastHiddenState);
      expect(out.shape).toEqual([B, S, model.config.hiddenSize]);
      expect(relErr(await out.data(), await file.readF32('output.penultimate_normed'))).toBeLessThan(1e-4);
      expect(relErr(await out.data(), await full.penultimateNormed.data())).toBeLessThan(1e-6);
      for (const t of [out, full.lastHiddenState, full.penultimateNormed, full.pooled, ...full.hiddenStates]) t.dispose();
      for (const t of [eos.lastHiddenState, eos.penultimateNormed, eos.pooled, ...eos.hiddenStates]) t.dispose();
    } finally {
      model.dispose();
      await file.close();
    }
  });

  it('loads both towers of a CLIPModel folder (text_config / vision_config) and matches the golden outputs', async () => {
    const tmp = await mkdtemp(path.join(tmpdir(), 'clip-model-'));
    try {
      const textCfg = JSON.parse(await readFile(path.join(GOLDEN, 'models/clip_text_sd1/config.json'), 'utf8'));
      const visionCfg = JSON.parse(await readFile(path.join(GOLDEN, 'models/clip_vision/config.json'), 'utf8'));
      delete visionCfg.projection_dim; // CLIPModel keeps projection_dim at the top level
      const config = { architectures: ['CLIPModel'], model_type: 'clip', projection_dim: 16, text_config: textCfg, vision_config: visionCfg };
      await writeFile(path.join(tmp, 'config.json'), JSON.stringify(config));
      const tensors: { name: string; dtype: 'F32' | 'I64'; shape: number[]; data: ArrayBufferView }[] = [];
      for (const m of ['clip_text_sd1', 'clip_vision']) {
        const f = await openSafetensorsFile(path.join(GOLDEN, 'models', m, 'model.safetensors'));
        for (const t of f.tensors.values()) tensors.push({ name: t.name, dtype: t.dtype as 'F32' | 'I64', shape: t.shape, data: await f.readBytes(t.name) });
        await f.close();
      }
      tensors.push({ name: 'text_projection.weight', dtype: 'F32', shape: [16, 32], data: new Float32Array(16 * 32).fill(0.01) });
      tensors.push({ name: 'logit_scale', dtype: 'F32', shape: [], data: new Float32Array([2.6592]) });
      await writeSafetensorsFile(path.join(tmp, 'model.safetensors'), tensors);

      expect(clipTextConfig(config).hiddenAct).toBe('quick_gelu');
      expect(clipVisionConfig(config).projectionDim).toBe(16);
      const text = await loadClipTextModelFromDir(tmp);
      const vision = await loadClipVisionModelFromDir(tmp);
      expect(text.params.has('vision_model.pre_layrnorm.weight')).toBe(false);
      const gt = await openSafetensorsFile(path.join(GOLDEN, 'clip_text_sd1/golden.safetensors'));
      const gv = await openSafetensorsFile(path.join(GOLDEN, 'clip_vision/golden.safetensors'));
      try {
        const [B, S] = gt.tensors.get('input.input_ids')!.shape;
        const ids = await gt.readI64('input.input_ids');
        const o = tidy(() => {
          const r = text.forward(ids, [B, S]);
          return { last: r.lastHiddenState, embeds: r.textEmbeds! };
        });
        expect(relErr(await o.last.data(), await gt.readF32('output.last_hidden_state'))).toBeLessThan(1e-4);
        expect(o.embeds.shape).toEqual([B, 16]);
        const px = Tensor.from(await gv.readF32('input.pixel_values'), gv.tensors.get('input.pixel_values')!.shape);
        const e = tidy(() => vision.forward(px).imageEmbeds!);
        expect(relErr(await e.data(), await gv.readF32('output.image_embeds'))).toBeLessThan(1e-4);
        for (const x of [o.last, o.embeds, px, e]) x.dispose();
      } finally {
        text.dispose();
        vision.dispose();
        await gt.close();
        await gv.close();
      }
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  });

  it('rejects bad inputs with clear errors', async () => {
    const vision = await loadClipVisionModelFromDir(path.join(GOLDEN, 'models/clip_vision'));
    const text = await loadClipTextModelFromDir(path.join(GOLDEN, 'models/clip_text_sd1'));
    try {
      const px = Tensor.from(new Float32Array(3 * 16 * 16), [1, 3, 16, 16]);
      expect(() => vision.forward(px)).toThrow(/pixel_values must be \[B, 3, 32, 32\]/);
      px.dispose();
      expect(() => text.forward(new Array(78).fill(1), [1, 78])).toThrow(ShapeError);
      expect(() => text.forward([5, 1000], [1, 2])).toThrow(/outside the vocabulary/);
      expect(() => text.forward([1, 2, 3], [1, 2])).toThrow(/do not fill/);
    } finally {
      vision.dispose();
      text.dispose();
    }
    await expect(loadClipVisionModelFromDir(path.join(GOLDEN, 'models/clip_text_sd1'))).rejects.toThrow(WeightsError);
    expect(() => new ClipTextModel({ hidden_size: 30, num_attention_heads: 4 }, undefined as never)).toThrow(/num_attention_heads/);
  });
});
