// Name maps from original checkpoint layouts to diffusers/transformers names (browser-safe):
//  * LDM single-file Stable Diffusion: model.diffusion_model.* (UNet), first_stage_model.* (VAE),
//    cond_stage_model.transformer.* (SD1, HF CLIP inside) or cond_stage_model.model.* (SD2, OpenCLIP).
//  * OpenCLIP vision towers: visual.* -> CLIPVisionModelWithProjection.
// Each map is derived from the target model's ParamSpec, so it covers exactly the parameters the
// config implies: target name -> { source name, transform }.
import { WeightsError } from './errors.js';
import type { ConfigObject } from './config-reader.js';
import { ConfigReader } from './config-reader.js';
import { paramSpec, type ParamSpec, type ModelClassName } from './param-spec.js';

export type KeyTransform = 'none' | 'squeeze1x1' | 'split_q' | 'split_k' | 'split_v' | 'transpose';

export interface KeySource {
  source: string;
  transform: KeyTransform;
  /** The target may legitimately be absent from the source (position_ids buffers). */
  optional?: boolean;
}

/** Target (diffusers/transformers) name -> where it comes from. */
export type KeyMap = Map<string, KeySource>;

type Rule = (name: string) => KeySource | null | undefined;

function buildMap(spec: ParamSpec[], rule: Rule, what: string): KeyMap {
  const map: KeyMap = new Map();
  for (const p of spec) {
    const src = rule(p.name);
    if (src === null) continue; // deliberately not stored in this layout
    if (!src) throw new WeightsError('BAD_CONFIG', `no ${what} name for this parameter`, { tensor: p.name });
    map.set(p.name, p.optional ? { ...src, optional: true } : src);
  }
  return map;
}

const plain = (source: string): KeySource => ({ source, transform: 'none' });

// ---------------------------------------------------------------------------------------------
// LDM UNet (openaimodel.py): input_blocks / middle_block / output_blocks with running indices.

const LDM_RESNET: Record<string, string> = {
  norm1: 'in_layers.0', conv1: 'in_layers.2', time_emb_proj: 'emb_layers.1',
  norm2: 'out_layers.0', conv2: 'out_layers.3', conv_shortcut: 'skip_connection',
};

function ldmResnet(rest: string): string | undefined {
  const m = /^([a-z_0-9]+)\.(weight|bias)$/.exec(rest);
  return m && LDM_RESNET[m[1]] ? `${LDM_RESNET[m[1]]}.${m[2]}` : undefined;
}

export function ldmUnetKeyMap(config: ConfigObject, prefix = 'model.diffusion_model.'): KeyMap {
  const spec = paramSpec(config, { className: 'UNet2DConditionModel' });
  const r = new ConfigReader(config, 'unet config');
  const n = r.intList('block_out_channels', [320, 640, 1280, 1280]).length;
  const layers = r.intPerBlock('layers_per_block', 2, n);
  const upTypes = r.strList('up_block_types', []);
  // input_blocks.0 is conv_in; each level adds its resnets, then its downsampler.
  const downIdx: number[][] = [];
  const downsampleIdx: number[] = [];
  let k = 1;
  for (let i = 0; i < n; i++) {
    downIdx.push(Array.from({ length: layers[i] }, () => k++));
    downsampleIdx.push(i < n - 1 ? k++ : -1);
  }
  const upLayers = [...layers].reverse();
  const upIdx: number[][] = [];
  k = 0;
  for (let i = 0; i < n; i++) upIdx.push(Array.from({ length: upLayers[i] + 1 }, () => k++));

  const rule: Rule = (name) => {
    let m: RegExpExecArray | null;
    const P = prefix;
    if ((m = /^conv_in\.(.+)$/.exec(name))) return plain(`${P}input_blocks.0.0.${m[1]}`);
    if ((m = /^time_embedding\.linear_([12])\.(.+)$/.exec(name))) return plain(`${P}time_embed.${m[1] === '1' ? 0 : 2}.${m[2]}`);
    if (name === 'class_embedding.weight') return plain(`${P}label_emb.weight`);
    if ((m = /^conv_norm_out\.(.+)$/.exec(name))) return plain(`${P}out.0.${m[1]}`);
    if ((m = /^conv_out\.(.+)$/.exec(name))) return plain(`${P}out.2.${m[1]}`);
    if ((m = /^down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$/.exec(name))) {
      const rest = ldmResnet(m[3]);
      return rest ? plain(`${P}input_blocks.${downIdx[+m[1]][+m[2]]}.0.${rest}`) : undefined;
    }
    if ((m = /^down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$/.exec(name))) return plain(`${P}input_blocks.${downIdx[+m[1]][+m[2]]}.1.${m[3]}`);
    if ((m = /^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$/.exec(name))) return plain(`${P}input_blocks.${downsampleIdx[+m[1]]}.0.op.${m[2]}`);
    if ((m = /^mid_block\.resnets\.([01])\.(.+)$/.exec(name))) {
      const rest = ldmResnet(m[2]);
      return rest ? plain(`${P}middle_block.${m[1] === '0' ? 0 : 2}.${rest}`) : undefined;
    }
    if ((m = /^mid_block\.attentions\.0\.(.+)$/.exec(name))) return plain(`${P}middle_block.1.${m[1]}`);
    if ((m = /^up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$/.exec(name))) {
      const rest = ldmResnet(m[3]);
      return rest ? plain(`${P}output_blocks.${upIdx[+m[1]][+m[2]]}.0.${rest}`) : undefined;
    }
    if ((m = /^up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$/.exec(name))) return plain(`${P}output_blocks.${upIdx[+m[1]][+m[2]]}.1.${m[3]}`);
    if ((m = /^up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$/.exec(name))) {
      const i = +m[1];
      const slot = upTypes[i] === 'CrossAttnUpBlock2D' ? 2 : 1; // after the resnet (and attention)
      return plain(`${P}output_blocks.${upIdx[i][upIdx[i].length - 1]}.${slot}.conv.${m[2]}`);
    }
    return undefined;
  };
  return buildMap(spec, rule, 'LDM UNet');
}

// ---------------------------------------------------------------------------------------------
// LDM VAE (ldm/modules/diffusionmodules/model.py): encoder.down.i.block.j, decoder.up.(reversed).

const VAE_RESNET: Record<string, string> = { norm1: 'norm1', conv1: 'conv1', norm2: 'norm2', conv2: 'conv2', conv_shortcut: 'nin_shortcut' };
const VAE_ATTN: Record<string, string> = { group_norm: 'norm', to_q: 'q', to_k: 'k', to_v: 'v', 'to_out.0': 'proj_out' };

export function ldmVaeKeyMap(config: ConfigObject, prefix = 'first_stage_model.'): KeyMap {
  const spec = paramSpec(config, { className: 'AutoencoderKL' });
  const n = new ConfigReader(config, 'vae config').intList('block_out_channels', [64]).length;
  const P = prefix;
  const res = (rest: string) => {
    const m = /^([a-z_0-9]+)\.(weight|bias)$/.exec(rest);
    return m && VAE_RESNET[m[1]] ? `${VAE_RESNET[m[1]]}.${m[2]}` : undefined;
  };
  const rule: Rule = (name) => {
    let m: RegExpExecArray | null;
    if ((m = /^(encoder|decoder)\.(conv_in|conv_out)\.(.+)$/.exec(name))) return plain(P + name);
    if ((m = /^(encoder|decoder)\.conv_norm_out\.(.+)$/.exec(name))) return plain(`${P}${m[1]}.norm_out.${m[2]}`);
    if ((m = /^(quant_conv|post_quant_conv)\.(.+)$/.exec(name))) return plain(P + name);
    if ((m = /^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$/.exec(name))) {
      const r = res(m[3]);
      return r ? plain(`${P}encoder.down.${m[1]}.block.${m[2]}.${r}`) : undefined;
    }
    if ((m = /^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$/.exec(name))) return plain(`${P}encoder.down.${m[1]}.downsample.conv.${m[2]}`);
    if ((m = /^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$/.exec(name))) {
      const r = res(m[3]);
      return r ? plain(`${P}decoder.up.${n - 1 - +m[1]}.block.${m[2]}.${r}`) : undefined;
    }
    if ((m = /^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$/.exec(name))) return plain(`${P}decoder.up.${n - 1 - +m[1]}.upsample.conv.${m[2]}`);
    if ((m = /^(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)$/.exec(name))) {
      const r = res(m[3]);
      return r ? plain(`${P}${m[1]}.mid.block_${+m[2] + 1}.${r}`) : undefined;
    }
    if ((m = /^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)$/.exec(name))) {
      // LDM's attention uses 1x1 convs; diffusers uses Linear layers.
      const transform: KeyTransform = m[3] === 'weight' && m[2] !== 'group_norm' ? 'squeeze1x1' : 'none';
      return { source: `${P}${m[1]}.mid.attn_1.${VAE_ATTN[m[2]]}.${m[3]}`, transform };
    }
    return undefined;
  };
  return buildMap(spec, rule, 'LDM VAE');
}

// ---------------------------------------------------------------------------------------------
// CLIP text: SD1 stores transformers' CLIPTextModel verbatim; SD2 stores OpenCLIP's text tower.

/** SD1: cond_stage_model.transformer.text_model.* (older files omit the `text_model.` level). */
export function ldmClipTextKeyMap(config: ConfigObject, prefix = 'cond_stage_model.transformer.', withTextModelLevel = true): KeyMap {
  const spec = paramSpec(config, { className: 'CLIPTextModel' });
  return buildMap(spec, (name) => plain(prefix + (withTextModelLevel ? name : name.replace(/^text_model\./, ''))), 'LDM CLIP text');
}

const OPENCLIP_LAYER: Record<string, string> = {
  layer_norm1: 'ln_1', layer_norm2: 'ln_2', 'mlp.fc1': 'mlp.c_fc', 'mlp.fc2': 'mlp.c_proj', 'self_attn.out_proj': 'attn.out_proj',
};

/** Encoder layers are shared by OpenCLIP's text and vision towers. */
function openClipLayer(name: string, tower: string, P: string): KeySource | undefined {
  const m = new RegExp(`^${tower}\\.encoder\\.layers\\.(\\d+)\\.(.+)\\.(weight|bias)$`).exec(name);
  if (!m) return undefined;
  const base = `${P}transformer.resblocks.${m[1]}.`;
  const qkv = /^self_attn\.([qkv])_proj$/.exec(m[2]);
  if (qkv) return { source: `${base}attn.in_proj_${m[3]}`, transform: `split_${qkv[1]}` as KeyTransform };
  const mapped = OPENCLIP_LAYER[m[2]];
  return mapped ? plain(`${base}${mapped}.${m[3]}`) : undefined;
}

/** SD2: cond_stage_model.model.* (OpenCLIP ViT-H text tower) -> CLIPTextModel. */
export function openClipTextKeyMap(
  config: ConfigObject, prefix = 'cond_stage_model.model.', className: ModelClassName = 'CLIPTextModel',
): KeyMap {
  const spec = paramSpec(config, { className });
  const P = prefix;
  const rule: Rule = (name) => {
    if (name === 'text_model.embeddings.token_embedding.weight') return plain(`${P}token_embedding.weight`);
    if (name === 'text_model.embeddings.position_embedding.weight') return plain(`${P}positional_embedding`);
    if (name === 'text_model.embeddings.position_ids') return null; // OpenCLIP has no such buffer
    if (name.startsWith('text_model.final_layer_norm.')) return plain(`${P}ln_final.${name.split('.').pop()}`);
    if (name === 'text_projection.weight') return { source: `${P}text_projection`, transform: 'transpose' };
    return openClipLayer(name, 'text_model', P);
  };
  return buildMap(spec, rule, 'OpenCLIP text');
}

/** OpenCLIP visual.* -> CLIPVisionModelWithProjection (visual.proj is [hidden, proj], hence transposed). */
export function openClipVisionKeyMap(
  config: ConfigObject, prefix = 'visual.', className: ModelClassName = 'CLIPVisionModelWithProjection',
): KeyMap {
  const spec = paramSpec(config, { className });
  const P = prefix;
  const emb: Record<string, string> = {
    'vision_model.embeddings.class_embedding': 'class_embedding',
    'vision_model.embeddings.patch_embedding.weight': 'conv1.weight',
    'vision_model.embeddings.position_embedding.weight': 'positional_embedding',
  };
  const rule: Rule = (name) => {
    if (emb[name]) return plain(P + emb[name]);
    if (name === 'vision_model.embeddings.position_ids') return null;
    let m: RegExpExecArray | null;
    if ((m = /^vision_model\.pre_layrnorm\.(.+)$/.exec(name))) return plain(`${P}ln_pre.${m[1]}`);
    if ((m = /^vision_model\.post_layernorm\.(.+)$/.exec(name))) return plain(`${P}ln_post.${m[1]}`);
    if (name === 'visual_projection.weight') return { source: `${P}proj`, transform: 'transpose' };
    return openClipLayer(name, 'vision_model', P);
  };
  return buildMap(spec, rule, 'OpenCLIP vision');
}

// ---------------------------------------------------------------------------------------------
// Shapes and data under a transform

/** The source tensor's shape, given the target's. */
export function sourceShape(target: readonly number[], t: KeyTransform): number[] {
  switch (t) {
    case 'none': return [...target];
    case 'squeeze1x1': return [...target, 1, 1];
    case 'split_q': case 'split_k': case 'split_v': return [3 * target[0], ...target.slice(1)];
    case 'transpose': return [target[1], target[0]];
  }
}

/** The target's shape, given the source's (throws SHAPE_MISMATCH where the transform does not apply). */
export function targetShape(source: readonly number[], t: KeyTransform, ctx: { file?: string; tensor?: string } = {}): number[] {
  const bad = (expected: string) => new WeightsError('SHAPE_MISMATCH', `cannot apply ${t}`, { ...ctx, expected, found: `[${source.join(', ')}]` });
  switch (t) {
    case 'none': return [...source];
    case 'squeeze1x1':
      if (source.length !== 4 || source[2] !== 1 || source[3] !== 1) throw bad('[out, in, 1, 1]');
      return source.slice(0, 2);
    case 'split_q': case 'split_k': case 'split_v':
      if (source.length < 1 || source[0] % 3 !== 0) throw bad('a first dimension divisible by 3');
      return [source[0] / 3, ...source.slice(1)];
    case 'transpose':
      if (source.length !== 2) throw bad('a 2-D tensor');
      return [source[1], source[0]];
  }
}

/** Apply a transform to raw little-endian bytes of `elemBytes`-byte elements (dtype-agnostic). */
export function transformBytes(t: KeyTransform, srcShape: readonly number[], bytes: Uint8Array, elemBytes: number): Uint8Array {
  if (t === 'none' || t === 'squeeze1x1') return bytes;
  if (t === 'transpose') {
    const [rows, cols] = srcShape;
    const out = new Uint8Array(bytes.length);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        out.set(bytes.subarray((r * cols + c) * elemBytes, (r * cols + c + 1) * elemBytes), (c * rows + r) * elemBytes);
      }
    }
    return out;
  }
  const chunk = bytes.length / 3;
  const part = t === 'split_q' ? 0 : t === 'split_k' ? 1 : 2;
  return bytes.subarray(part * chunk, (part + 1) * chunk);
}

export interface InvertedEntry {
  shape: number[];
  targets: Array<{ target: string; transform: KeyTransform }>;
}

/** Source name -> its shape and the targets it feeds (q/k/v share one fused source). */
export function invertKeyMap(map: KeyMap, spec: readonly ParamSpec[]): Map<string, InvertedEntry> {
  const shapes = new Map(spec.map((p) => [p.name, p.shape]));
  const out = new Map<string, InvertedEntry>();
  for (const [target, { source, transform }] of map) {
    const shape = sourceShape(shapes.get(target)!, transform);
    const e = out.get(source);
    if (!e) out.set(source, { shape, targets: [{ target, transform }] });
    else {
      if (e.shape.join() !== shape.join()) throw new WeightsError('SHAPE_MISMATCH', 'targets disagree on the source shape', { tensor: source, expected: `[${e.shape}]`, found: `[${shape}]` });
      e.targets.push({ target, transform });
    }
  }
  return out;
}

export interface KeyMapCheck {
  missing: string[];
  unused: string[];
  wrongShape: Array<{ source: string; expected: number[]; found: number[] }>;
  ok: boolean;
}

/** Compare a source file's tensors with what the map needs (unused sources are reported, not errors). */
export function checkKeyMapSources(
  map: KeyMap, spec: readonly ParamSpec[], tensors: ReadonlyMap<string, { shape: number[] }>, sourcePrefix = '',
): KeyMapCheck {
  const inv = invertKeyMap(map, spec);
  const optional = new Set([...map.values()].filter((s) => s.optional).map((s) => s.source));
  const missing: string[] = [];
  const wrongShape: KeyMapCheck['wrongShape'] = [];
  for (const [source, e] of inv) {
    const t = tensors.get(source);
    if (!t) {
      if (!optional.has(source)) missing.push(source);
    } else if (t.shape.join() !== e.shape.join()) {
      wrongShape.push({ source, expected: e.shape, found: t.shape });
    }
  }
  const unused = [...tensors.keys()].filter((k) => k.startsWith(sourcePrefix) && !inv.has(k));
  return { missing, unused, wrongShape, ok: !missing.length && !wrongShape.length };
}
