import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  ldmUnetKeyMap, ldmVaeKeyMap, ldmClipTextKeyMap, openClipTextKeyMap, openClipVisionKeyMap,
  invertKeyMap, transformBytes, checkKeyMapSources, type KeyMap, type InvertedEntry,
} from '../../weights-tools/keymap.js';
import { KeyMappedReader, detectLayout, ldmPartReader } from '../../weights-tools/checkpoint.js';
import { paramSpec, type ParamSpec, type ModelClassName } from '../../weights-tools/param-spec.js';
import { encodeSafetensors, openSafetensors, bytesSource, type TensorInfo, type TensorReader } from '../../weights-tools/safetensors.js';
import { openSafetensorsFile } from '../../weights-tools/node-source.js';
import type { ConfigObject } from '../../weights-tools/config-reader.js';
import { expectWeightsError, GOLDEN } from './helpers.js';

const json = (p: string): ConfigObject => JSON.parse(readFileSync(p, 'utf8'));
const M = join(GOLDEN, 'models');
const C = join(GOLDEN, 'configs');

interface Case {
  label: string;
  config: ConfigObject;
  cls: ModelClassName;
  map: (c: ConfigObject) => KeyMap;
  prefix: string;
}

const tiny: Array<Case & { weights: string }> = [
  { label: 'unet_sd1 (LDM)', config: json(`${M}/unet_sd1/config.json`), cls: 'UNet2DConditionModel', map: (c) => ldmUnetKeyMap(c), prefix: 'model.diffusion_model.', weights: `${M}/unet_sd1/diffusion_pytorch_model.safetensors` },
  { label: 'unet_sd2 (LDM)', config: json(`${M}/unet_sd2/config.json`), cls: 'UNet2DConditionModel', map: (c) => ldmUnetKeyMap(c), prefix: 'model.diffusion_model.', weights: `${M}/unet_sd2/diffusion_pytorch_model.safetensors` },
  { label: 'vae (LDM)', config: json(`${M}/vae/config.json`), cls: 'AutoencoderKL', map: (c) => ldmVaeKeyMap(c), prefix: 'first_stage_model.', weights: `${M}/vae/diffusion_pytorch_model.safetensors` },
  { label: 'clip_text_sd1 (LDM SD1)', config: json(`${M}/clip_text_sd1/config.json`), cls: 'CLIPTextModel', map: (c) => ldmClipTextKeyMap(c), prefix: 'cond_stage_model.transformer.', weights: `${M}/clip_text_sd1/model.safetensors` },
  { label: 'clip_text_sd2 (OpenCLIP text)', config: json(`${M}/clip_text_sd2/config.json`), cls: 'CLIPTextModel', map: (c) => openClipTextKeyMap(c), prefix: 'cond_stage_model.model.', weights: `${M}/clip_text_sd2/model.safetensors` },
  { label: 'clip_vision (OpenCLIP visual)', config: json(`${M}/clip_vision/config.json`), cls: 'CLIPVisionModelWithProjection', map: (c) => openClipVisionKeyMap(c), prefix: 'visual.', weights: `${M}/clip_vision/model.safetensors` },
];

const real: Case[] = [
  { label: 'SD 1.5 UNet', config: json(`${C}/sd-1.5/unet/config.json`), cls: 'UNet2DConditionModel', map: (c) => ldmUnetKeyMap(c), prefix: 'model.diffusion_model.' },
  { label: 'SD 2.1-base UNet', config: json(`${C}/sd-2.1-base/unet/config.json`), cls: 'UNet2DConditionModel', map: (c) => ldmUnetKeyMap(c), prefix: 'model.diffusion_model.' },
  { label: 'SD VAE', config: json(`${C}/sd-1.5/vae/config.json`), cls: 'AutoencoderKL', map: (c) => ldmVaeKeyMap(c), prefix: 'first_stage_model.' },
  { label: 'SD 1.5 text encoder', config: json(`${C}/sd-1.5/text_encoder/config.json`), cls: 'CLIPTextModel', map: (c) => ldmClipTextKeyMap(c), prefix: 'cond_stage_model.transformer.' },
  { label: 'SD 2.1 text encoder (OpenCLIP)', config: json(`${C}/sd-2.1-base/text_encoder/config.json`), cls: 'CLIPTextModel', map: (c) => openClipTextKeyMap(c), prefix: 'cond_stage_model.model.' },
  { label: 'CLIP ViT-H/14 vision (OpenCLIP)', config: json(`${C}/clip-vit-h-14/config.json`), cls: 'CLIPVisionModelWithProjection', map: (c) => openClipVisionKeyMap(c), prefix: 'visual.' },
  { label: 'CLIP ViT-L/14 vision (OpenCLIP)', config: json(`${C}/clip-vit-l-14/config.json`), cls: 'CLIPVisionModelWithProjection', map: (c) => openClipVisionKeyMap(c), prefix: 'visual.' },
];

/** Every diffusers param is mapped once, and every source element feeds exactly one target. */
function checkCoverage(spec: ParamSpec[], map: KeyMap, prefix: string): Map<string, InvertedEntry> {
  const mappable = spec.filter((p) => map.has(p.name)).map((p) => p.name);
  const skipped = spec.filter((p) => !map.has(p.name));
  expect(skipped.every((p) => p.optional), `unmapped: ${skipped.map((p) => p.name)}`).toBe(true);
  expect(new Set(map.keys())).toEqual(new Set(mappable));
  const inv = invertKeyMap(map, spec);
  for (const [src, e] of inv) {
    expect(src.startsWith(prefix)).toBe(true);
    const kinds = e.targets.map((t) => t.transform).sort();
    if (kinds.some((k) => k.startsWith('split'))) expect(kinds).toEqual(['split_k', 'split_q', 'split_v']);
    else expect(kinds.length).toBe(1);
  }
  const targetsSeen = [...inv.values()].flatMap((e) => e.targets.map((t) => t.target));
  expect(targetsSeen.length).toBe(new Set(targetsSeen).size);
  expect(targetsSeen.length).toBe(map.size);
  return inv;
}

/** A TensorReader holding only shapes (for full-size configs whose data would be gigabytes). */
function shapeOnlyReader(inv: Map<string, InvertedEntry>): TensorReader {
  const tensors = new Map<string, TensorInfo>();
  for (const [name, e] of inv) tensors.set(name, { name, dtype: 'F32', shape: e.shape, byteOffset: 0, byteLength: 4 * e.shape.reduce((a, d) => a * d, 1) });
  const no = () => Promise.reject(new Error('no data'));
  return { name: 'shapes', tensors, metadata: {}, readBytes: no, readF32: no, readI64: no, readAsF16Bits: no, close: async () => {} };
}

describe('key maps cover every parameter exactly once (real configs, shapes only)', () => {
  for (const c of real) {
    it(c.label, () => {
      const spec = paramSpec(c.config, { className: c.cls });
      const map = c.map(c.config);
      const inv = checkCoverage(spec, map, c.prefix);
      const mapped = new KeyMappedReader(shapeOnlyReader(inv), map, spec);
      for (const p of spec) {
        if (p.optional && !map.has(p.name)) continue;
        expect(mapped.tensors.get(p.name)?.shape, p.name).toEqual(p.shape);
      }
      expect(mapped.tensors.size).toBe(map.size);
    });
  }

  it('uses the known LDM / OpenCLIP names', () => {
    const u = ldmUnetKeyMap(real[0].config);
    expect(u.get('down_blocks.0.downsamplers.0.conv.weight')!.source).toBe('model.diffusion_model.input_blocks.3.0.op.weight');
    expect(u.get('up_blocks.0.upsamplers.0.conv.weight')!.source).toBe('model.diffusion_model.output_blocks.2.1.conv.weight');
    expect(u.get('up_blocks.1.upsamplers.0.conv.weight')!.source).toBe('model.diffusion_model.output_blocks.5.2.conv.weight');
    expect(u.get('up_blocks.3.attentions.2.proj_out.weight')!.source).toBe('model.diffusion_model.output_blocks.11.1.proj_out.weight');
    expect(u.get('mid_block.resnets.1.time_emb_proj.weight')!.source).toBe('model.diffusion_model.middle_block.2.emb_layers.1.weight');
    expect(u.get('down_blocks.1.resnets.0.conv_shortcut.weight')!.source).toBe('model.diffusion_model.input_blocks.4.0.skip_connection.weight');
    expect(u.get('time_embedding.linear_2.bias')!.source).toBe('model.diffusion_model.time_embed.2.bias');
    expect(u.get('conv_out.weight')!.source).toBe('model.diffusion_model.out.2.weight');
    const v = ldmVaeKeyMap(real[2].config);
    expect(v.get('decoder.up_blocks.0.upsamplers.0.conv.weight')!.source).toBe('first_stage_model.decoder.up.3.upsample.conv.weight');
    expect(v.get('encoder.mid_block.attentions.0.to_out.0.weight')).toEqual({ source: 'first_stage_model.encoder.mid.attn_1.proj_out.weight', transform: 'squeeze1x1' });
    expect(v.get('encoder.mid_block.attentions.0.to_q.bias')).toEqual({ source: 'first_stage_model.encoder.mid.attn_1.q.bias', transform: 'none' });
    const t = openClipTextKeyMap(real[4].config);
    expect(t.get('text_model.encoder.layers.22.self_attn.v_proj.bias')).toEqual({ source: 'cond_stage_model.model.transformer.resblocks.22.attn.in_proj_bias', transform: 'split_v' });
    const vis = openClipVisionKeyMap(real[5].config);
    expect(vis.get('visual_projection.weight')).toEqual({ source: 'visual.proj', transform: 'transpose' });
  });
});

/** Build the original-layout tensor for a source from the diffusers tensors it feeds. */
function toSourceBytes(e: InvertedEntry, targetBytes: (n: string) => Uint8Array, targetShape: (n: string) => number[]): Uint8Array {
  if (e.targets.length === 3) {
    const order = ['split_q', 'split_k', 'split_v'].map((k) => e.targets.find((t) => t.transform === k)!.target);
    const parts = order.map(targetBytes);
    const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }
  const { target, transform } = e.targets[0];
  return transform === 'transpose' ? transformBytes('transpose', targetShape(target), targetBytes(target), 4) : targetBytes(target);
}

describe('round trip: golden diffusers weights -> synthetic original-layout file -> key-mapped reader', () => {
  for (const c of tiny) {
    it(c.label, async () => {
      const spec = paramSpec(c.config, { className: c.cls });
      const map = c.map(c.config);
      const inv = checkCoverage(spec, map, c.prefix);
      const golden = await openSafetensorsFile(c.weights);
      const bytes = new Map<string, Uint8Array>();
      for (const name of golden.tensors.keys()) bytes.set(name, await golden.readBytes(name));
      const shapeOf = (n: string) => golden.tensors.get(n)!.shape;
      const file = encodeSafetensors([...inv].map(([name, e]) => ({ name, dtype: golden.tensors.get(e.targets[0].target)!.dtype, shape: e.shape, data: toSourceBytes(e, (n) => bytes.get(n)!, shapeOf) })));
      const src = await openSafetensors(bytesSource(file, 'ldm.safetensors'));
      const mapped = new KeyMappedReader(src, map, spec);
      for (const p of spec) {
        if (!map.has(p.name)) continue;
        expect(mapped.tensors.get(p.name)!.shape).toEqual(p.shape);
        const got = await mapped.readBytes(p.name);
        expect(Buffer.from(got).equals(Buffer.from(bytes.get(p.name)!)), p.name).toBe(true);
      }
      expect([...(await mapped.readF32(spec[0].name))]).toEqual([...(await golden.readF32(spec[0].name))]);
      await golden.close();
    });
  }
});

describe('checkpoint layouts', () => {
  const names = (c: Case) => [...invertKeyMap(c.map(c.config), paramSpec(c.config, { className: c.cls })).keys()];
  const sd1 = [...names(real[0]), ...names(real[2]), ...names(real[3])];
  const sd2 = [...names(real[1]), ...names(real[2]), ...names(real[4])];

  it('recognises LDM SD1/SD2, OpenCLIP and diffusers/transformers names', () => {
    expect(detectLayout(sd1)).toBe('ldm-sd1');
    expect(detectLayout(sd2)).toBe('ldm-sd2');
    expect(detectLayout(names(real[5]))).toBe('openclip');
    expect(detectLayout(paramSpec(real[0].config).map((p) => p.name))).toBe('diffusers-unet');
    expect(detectLayout(paramSpec(real[2].config).map((p) => p.name))).toBe('diffusers-vae');
    expect(detectLayout(paramSpec(real[3].config).map((p) => p.name))).toBe('hf-clip-text');
    expect(detectLayout(['foo', 'bar'])).toBe('plain');
  });

  it('reports missing and wrongly shaped sources', () => {
    const c = tiny[0];
    const spec = paramSpec(c.config, { className: c.cls });
    const map = c.map(c.config);
    const inv = invertKeyMap(map, spec);
    const shapes = new Map([...inv].map(([n, e]) => [n, { shape: e.shape }]));
    expect(checkKeyMapSources(map, spec, shapes).ok).toBe(true);
    shapes.delete('model.diffusion_model.out.2.weight');
    shapes.set('model.diffusion_model.input_blocks.0.0.weight', { shape: [1] });
    shapes.set('model.diffusion_model.extra', { shape: [1] });
    const r = checkKeyMapSources(map, spec, shapes, 'model.diffusion_model.');
    expect(r.missing).toEqual(['model.diffusion_model.out.2.weight']);
    expect(r.wrongShape.map((w) => w.source)).toEqual(['model.diffusion_model.input_blocks.0.0.weight']);
    expect(r.unused).toEqual(['model.diffusion_model.extra']);
  });

  it('a key-mapped reader rejects missing or misshapen sources', async () => {
    const c = tiny[2];
    const spec = paramSpec(c.config, { className: c.cls });
    const map = c.map(c.config);
    const inv = invertKeyMap(map, spec);
    const entries = [...inv].filter(([n]) => n !== 'first_stage_model.quant_conv.bias').map(([name, e]) => ({ name, dtype: 'F32' as const, shape: e.shape, data: new Float32Array(e.shape.reduce((a, d) => a * d, 1)) }));
    const src = await openSafetensors(bytesSource(encodeSafetensors(entries), 'ldm.safetensors'));
    await expectWeightsError(() => new KeyMappedReader(src, map, spec), 'MISSING_TENSOR', { file: 'ldm.safetensors', tensor: 'quant_conv.bias' });
    const bad = entries.map((e) => (e.name.endsWith('mid.attn_1.q.weight') ? { ...e, shape: [e.shape[0], e.shape[1], 3, 3], data: new Float32Array(e.data.length * 9) } : e));
    const src2 = await openSafetensors(bytesSource(encodeSafetensors(bad), 'ldm.safetensors'));
    await expectWeightsError(() => new KeyMappedReader(src2, map, spec), 'SHAPE_MISMATCH', { file: 'ldm.safetensors' });
  });

  it('ldmPartReader maps a whole synthetic SD1-style file', async () => {
    const cfg = { unet: tiny[0].config, vae: tiny[2].config, text: tiny[3].config };
    const parts = [[ldmUnetKeyMap(cfg.unet), paramSpec(cfg.unet)], [ldmVaeKeyMap(cfg.vae), paramSpec(cfg.vae)], [ldmClipTextKeyMap(cfg.text), paramSpec(cfg.text)]] as const;
    const entries = parts.flatMap(([m, s]) => [...invertKeyMap(m, s)].map(([name, e]) => ({ name, dtype: 'F16' as const, shape: e.shape, data: new Uint16Array(e.shape.reduce((a, d) => a * d, 1)) })));
    const src = await openSafetensors(bytesSource(encodeSafetensors(entries), 'sd1.safetensors'));
    expect(detectLayout(src.tensors.keys())).toBe('ldm-sd1');
    const text = ldmPartReader(src, 'ldm-sd1', cfg, 'text');
    expect(text.tensors.has('text_model.embeddings.position_ids')).toBe(true);
    expect((await text.readAsF16Bits('text_model.final_layer_norm.weight')).length).toBe(32);
    const unet = ldmPartReader(src, 'ldm-sd1', cfg, 'unet');
    expect(unet.tensors.size).toBe(paramSpec(cfg.unet).length);
  });
});
