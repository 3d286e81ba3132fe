import { describe, it, expect } from 'vitest';
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import {
  paramSpec, countParams, checkAgainstSpec, assertMatchesSpec, modelClassOf, type ParamSpec,
} from '../../weights-tools/param-spec.js';
import { openSafetensorsFile } from '../../weights-tools/node-source.js';
import { expectWeightsError, GOLDEN } from './helpers.js';

const json = (p: string) => JSON.parse(readFileSync(p, 'utf8'));

// Every golden model folder with weights, discovered rather than listed.
const folders = readdirSync(join(GOLDEN, 'models')).filter((d) => existsSync(join(GOLDEN, 'models', d, 'config.json')));

describe('param spec matches every golden model folder exactly', () => {
  it('finds the golden folders', () => expect(folders.length).toBeGreaterThanOrEqual(6));

  for (const d of folders) {
    it(d, async () => {
      const dir = join(GOLDEN, 'models', d);
      const file = ['diffusion_pytorch_model.safetensors', 'model.safetensors'].map((f) => join(dir, f)).find(existsSync)!;
      const spec = paramSpec(json(join(dir, 'config.json')));
      const st = await openSafetensorsFile(file);
      const r = checkAgainstSpec(spec, st.tensors, file);
      await st.close();
      expect(r.missing.map((m) => m.name)).toEqual([]);
      expect(r.unexpected.map((u) => u.name)).toEqual([]);
      expect(r.wrongShape).toEqual([]);
      // Optional buffers are present in these transformers-4.30 files too, so the sets are equal.
      expect(new Set(spec.map((p) => p.name))).toEqual(new Set(st.tensors.keys()));
    });
  }

  it('parameter counts in the golden README', () => {
    const counts: Record<string, number> = { unet_sd1: 1_106_212, unet_sd2: 2_164_452, vae: 843_847, clip_text_sd1: 68_473, clip_text_sd2: 68_473, clip_vision: 24_655 };
    for (const [d, n] of Object.entries(counts)) expect(countParams(paramSpec(json(join(GOLDEN, 'models', d, 'config.json'))))).toBe(n);
  });
});

describe('param counts of the real configs', () => {
  const C = join(GOLDEN, 'configs');
  const cases: Array<[string, number, string?]> = [
    ['sd-1.5/unet', 859_520_964],
    ['sd-2.1-base/unet', 865_910_724],
    ['sd-1.5/vae', 83_653_863],
    ['sd-2.1-base/vae', 83_653_863],
    ['sd-1.5/text_encoder', 123_060_480],
    ['sd-2.1-base/text_encoder', 340_387_840],
    ['clip-vit-l-14', 427_616_513],
    ['clip-vit-h-14', 986_109_441],
    ['clip-vit-l-14', 303_179_776, 'CLIPVisionModel'],
    ['clip-vit-h-14', 630_766_080, 'CLIPVisionModel'],
  ];
  for (const [p, n, cls] of cases) {
    it(`${p}${cls ? ` (${cls})` : ''} has ${n.toLocaleString('en-US')} parameters`, () => {
      const spec = paramSpec(json(join(C, p, 'config.json')), cls ? { className: cls as 'CLIPVisionModel' } : {});
      expect(countParams(spec)).toBe(n);
    });
  }

  it('SD1 uses conv proj_in/out, SD2 linear; heads do not change shapes; GEGLU is 8x wide', () => {
    const sd1 = new Map(paramSpec(json(join(C, 'sd-1.5/unet/config.json'))).map((p) => [p.name, p]));
    const sd2 = new Map(paramSpec(json(join(C, 'sd-2.1-base/unet/config.json'))).map((p) => [p.name, p]));
    const a = 'down_blocks.0.attentions.0.';
    expect(sd1.get(`${a}proj_in.weight`)!.shape).toEqual([320, 320, 1, 1]);
    expect(sd2.get(`${a}proj_in.weight`)!.shape).toEqual([320, 320]);
    expect(sd1.get(`${a}transformer_blocks.0.attn2.to_k.weight`)!.shape).toEqual([320, 768]);
    expect(sd2.get(`${a}transformer_blocks.0.attn2.to_k.weight`)!.shape).toEqual([320, 1024]);
    expect(sd1.get(`${a}transformer_blocks.0.ff.net.0.proj.weight`)!.shape).toEqual([2560, 320]);
    expect(sd1.get('up_blocks.3.resnets.0.conv1.weight')!.shape).toEqual([320, 960, 3, 3]);
    expect(sd1.get('conv_in.weight')).toMatchObject({ kind: 'conv_weight', fanIn: 36 });
    expect(sd1.get('conv_in.bias')).toMatchObject({ kind: 'bias', fanIn: 36 });
  });

  it('the text encoder position_ids buffer is optional', () => {
    const spec = paramSpec(json(join(C, 'sd-1.5/text_encoder/config.json')));
    const pid = spec.find((p) => p.name === 'text_model.embeddings.position_ids')!;
    expect(pid).toMatchObject({ kind: 'buffer_i64', shape: [1, 77], optional: true });
    const withoutBuffer = new Map(spec.filter((p) => !p.optional).map((p) => [p.name, { shape: p.shape }]));
    expect(checkAgainstSpec(spec, withoutBuffer, 'x').ok).toBe(true);
  });

  it('honours transformer_layers_per_block and num_attention_heads', () => {
    const cfg = { ...json(join(GOLDEN, 'models/unet_sd1/config.json')), transformer_layers_per_block: [2, 1], num_attention_heads: 3 };
    const names = paramSpec(cfg).map((p) => p.name);
    expect(names).toContain('down_blocks.0.attentions.0.transformer_blocks.1.attn1.to_q.weight');
    expect(names).toContain('up_blocks.1.attentions.2.transformer_blocks.1.norm3.bias');
    expect(names).not.toContain('mid_block.attentions.0.transformer_blocks.1.norm1.weight');
    // 3 heads over 32 channels: inner dim 3 * floor(32 / 3) = 30.
    expect(paramSpec(cfg).find((p) => p.name === 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight')!.shape).toEqual([30, 30]);
  });
});

describe('checking weights against a spec', () => {
  const spec: ParamSpec[] = paramSpec(json(join(GOLDEN, 'models/clip_vision/config.json')));
  const full = () => new Map(spec.map((p) => [p.name, { shape: [...p.shape] }]));

  it('reports missing, unexpected and wrongly shaped tensors readably', () => {
    const t = full();
    t.delete('visual_projection.weight');
    t.set('extra.weight', { shape: [1] });
    t.set('vision_model.pre_layrnorm.weight', { shape: [33] });
    const r = checkAgainstSpec(spec, t, 'm.safetensors');
    expect(r.ok).toBe(false);
    expect(r.missing.map((m) => m.name)).toEqual(['visual_projection.weight']);
    expect(r.unexpected.map((u) => u.name)).toEqual(['extra.weight']);
    expect(r.wrongShape).toEqual([{ name: 'vision_model.pre_layrnorm.weight', expected: [32], found: [33] }]);
    expect(r.text).toContain('vision_model.pre_layrnorm.weight: expected [32], found [33]');
    expect(r.text).toContain('visual_projection.weight [16, 32]');
  });

  it('throws SHAPE_MISMATCH before MISSING_TENSOR before UNEXPECTED_TENSOR', async () => {
    const t = full();
    t.set('vision_model.post_layernorm.bias', { shape: [2] });
    t.delete('visual_projection.weight');
    await expectWeightsError(() => assertMatchesSpec(spec, t, 'm.safetensors'), 'SHAPE_MISMATCH', { file: 'm.safetensors', tensor: 'vision_model.post_layernorm.bias' });
    const t2 = full();
    t2.delete('visual_projection.weight');
    await expectWeightsError(() => assertMatchesSpec(spec, t2, 'm.safetensors'), 'MISSING_TENSOR', { file: 'm.safetensors', tensor: 'visual_projection.weight' });
    const t3 = full();
    t3.set('x', { shape: [] });
    await expectWeightsError(() => assertMatchesSpec(spec, t3, 'm.safetensors'), 'UNEXPECTED_TENSOR', { file: 'm.safetensors', tensor: 'x' });
    expect(() => assertMatchesSpec(spec, full(), 'm.safetensors')).not.toThrow();
  });
});

describe('config validation', () => {
  const unet = () => json(join(GOLDEN, 'models/unet_sd1/config.json'));
  it('rejects malformed or unsupported configs with BAD_CONFIG naming the file', async () => {
    await expectWeightsError(() => paramSpec({ ...unet(), block_out_channels: 'wide' }, { file: 'u/config.json' }), 'BAD_CONFIG', { file: 'u/config.json' });
    await expectWeightsError(() => paramSpec({ ...unet(), down_block_types: ['CrossAttnDownBlock2D'] }, { file: 'u/config.json' }), 'BAD_CONFIG', { file: 'u/config.json' });
    await expectWeightsError(() => paramSpec({ ...unet(), attention_head_dim: [1, 2, 3] }, { file: 'u/config.json' }), 'BAD_CONFIG', { file: 'u/config.json' });
    await expectWeightsError(() => paramSpec({ ...unet(), layers_per_block: -1 }, { file: 'u/config.json' }), 'BAD_CONFIG', { file: 'u/config.json' });
    await expectWeightsError(() => paramSpec({ ...unet(), addition_embed_type: 'text_time' }, { file: 'u/config.json' }), 'BAD_CONFIG', { file: 'u/config.json' });
    await expectWeightsError(() => paramSpec({ ...unet(), up_block_types: ['UpBlock2D', 'AttnUpBlock2D'] }, { file: 'u/config.json' }), 'BAD_CONFIG', { file: 'u/config.json' });
    await expectWeightsError(() => paramSpec({ hello: 1 }, { file: 'c.json' }), 'BAD_CONFIG', { file: 'c.json' });
    await expectWeightsError(() => paramSpec([1, 2], { file: 'c.json' }), 'BAD_CONFIG', { file: 'c.json' });
  });

  it('recognises classes from _class_name, architectures and model_type', () => {
    expect(modelClassOf({ _class_name: 'AutoencoderKL' })).toBe('AutoencoderKL');
    expect(modelClassOf({ architectures: ['CLIPVisionModelWithProjection'] })).toBe('CLIPVisionModelWithProjection');
    expect(modelClassOf({ model_type: 'clip_text_model' })).toBe('CLIPTextModel');
    expect(modelClassOf({ model_type: 'clip' })).toBe('CLIPModel');
  });
});
