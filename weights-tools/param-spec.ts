// The exact parameter list (names, shapes, init kind, fan-in) a diffusers 0.25 / transformers 4.30
// model has for a given config, so a weight file can be checked before any tensor is uploaded.
// Browser-safe.
import { WeightsError } from './errors.js';
import { ConfigReader, asConfigObject, type ConfigObject } from './config-reader.js';

export type ParamKind =
  | 'conv_weight' | 'linear_weight' | 'bias' | 'norm_weight' | 'norm_bias'
  | 'embedding' | 'class_embedding' | 'buffer_i64' | 'scalar';

export interface ParamSpec {
  name: string;
  shape: number[];
  kind: ParamKind;
  /** Inputs per output unit of the layer (weights and their bias); 0 where it has no meaning. */
  fanIn: number;
  /** Present in some checkpoints only (transformers' position_ids buffer). */
  optional?: boolean;
}

export const MODEL_CLASSES = [
  'UNet2DConditionModel', 'AutoencoderKL', 'CLIPTextModel', 'CLIPTextModelWithProjection',
  'CLIPVisionModel', 'CLIPVisionModelWithProjection', 'CLIPModel',
] as const;
export type ModelClassName = (typeof MODEL_CLASSES)[number];

class SpecBuilder {
  readonly list: ParamSpec[] = [];
  conv(name: string, out: number, inp: number, k: number, bias = true): void {
    this.list.push({ name: `${name}.weight`, shape: [out, inp, k, k], kind: 'conv_weight', fanIn: inp * k * k });
    if (bias) this.list.push({ name: `${name}.bias`, shape: [out], kind: 'bias', fanIn: inp * k * k });
  }
  linear(name: string, out: number, inp: number, bias = true): void {
    this.list.push({ name: `${name}.weight`, shape: [out, inp], kind: 'linear_weight', fanIn: inp });
    if (bias) this.list.push({ name: `${name}.bias`, shape: [out], kind: 'bias', fanIn: inp });
  }
  norm(name: string, ch: number): void {
    this.list.push({ name: `${name}.weight`, shape: [ch], kind: 'norm_weight', fanIn: 0 });
    this.list.push({ name: `${name}.bias`, shape: [ch], kind: 'norm_bias', fanIn: 0 });
  }
  embedding(name: string, n: number, dim: number): void {
    this.list.push({ name: `${name}.weight`, shape: [n, dim], kind: 'embedding', fanIn: 0 });
  }
  add(p: ParamSpec): void {
    this.list.push(p);
  }
}

// ---------------------------------------------------------------------------------------------
// Shared diffusers building blocks

function resnet(b: SpecBuilder, p: string, cin: number, cout: number, temb: number | null, tembMult = 1): void {
  b.norm(`${p}norm1`, cin);
  b.conv(`${p}conv1`, cout, cin, 3);
  if (temb !== null) b.linear(`${p}time_emb_proj`, cout * tembMult, temb);
  b.norm(`${p}norm2`, cout);
  b.conv(`${p}conv2`, cout, cout, 3);
  if (cin !== cout) b.conv(`${p}conv_shortcut`, cout, cin, 1);
}

function attention(b: SpecBuilder, p: string, queryDim: number, kvDim: number, inner: number, qkvBias: boolean): void {
  b.linear(`${p}to_q`, inner, queryDim, qkvBias);
  b.linear(`${p}to_k`, inner, kvDim, qkvBias);
  b.linear(`${p}to_v`, inner, kvDim, qkvBias);
  b.linear(`${p}to_out.0`, queryDim, inner);
}

/** Transformer2DModel (continuous input): GroupNorm, proj_in, BasicTransformerBlocks, proj_out. */
function transformer2d(
  b: SpecBuilder, p: string, ch: number, heads: number, layers: number, cross: number, linearProj: boolean,
): void {
  const inner = heads * Math.floor(ch / heads);
  b.norm(`${p}norm`, ch);
  if (linearProj) b.linear(`${p}proj_in`, inner, ch);
  else b.conv(`${p}proj_in`, inner, ch, 1);
  for (let j = 0; j < layers; j++) {
    const q = `${p}transformer_blocks.${j}.`;
    b.norm(`${q}norm1`, inner);
    attention(b, `${q}attn1.`, inner, inner, inner, false);
    b.norm(`${q}norm2`, inner);
    attention(b, `${q}attn2.`, inner, cross, inner, false);
    b.norm(`${q}norm3`, inner);
    b.linear(`${q}ff.net.0.proj`, inner * 4 * 2, inner); // GEGLU: value and gate halves
    b.linear(`${q}ff.net.2`, inner, inner * 4);
  }
  if (linearProj) b.linear(`${p}proj_out`, ch, inner);
  else b.conv(`${p}proj_out`, ch, inner, 1);
}

// ---------------------------------------------------------------------------------------------
// UNet2DConditionModel

const UNET_DOWN = ['CrossAttnDownBlock2D', 'DownBlock2D'];
const UNET_UP = ['CrossAttnUpBlock2D', 'UpBlock2D'];

export function unetParamSpec(config: ConfigObject, file = 'config.json'): ParamSpec[] {
  const r = new ConfigReader(config, file);
  for (const k of ['class_embed_type', 'addition_embed_type', 'encoder_hid_dim', 'time_cond_proj_dim', 'reverse_transformer_layers_per_block']) r.requireDefault(k, null);
  r.requireDefault('dual_cross_attention', false);
  r.requireDefault('class_embeddings_concat', false);
  r.requireDefault('time_embedding_type', 'positional');
  r.requireDefault('attention_type', 'default');
  const oca = config['only_cross_attention'];
  if (oca !== undefined && oca !== null && oca !== false && !(Array.isArray(oca) && oca.every((x) => x === false))) r.fail('only_cross_attention', 'false (only_cross_attention is not supported)', oca);

  const boc = r.intList('block_out_channels', [320, 640, 1280, 1280]);
  const n = boc.length;
  const downTypes = r.strList('down_block_types', ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D']);
  const upTypes = r.strList('up_block_types', ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D']);
  if (downTypes.length !== n) r.fail('down_block_types', `${n} entries (one per block_out_channels)`, downTypes);
  if (upTypes.length !== n) r.fail('up_block_types', `${n} entries (one per block_out_channels)`, upTypes);
  downTypes.forEach((t) => UNET_DOWN.includes(t) || r.fail('down_block_types', UNET_DOWN.join(' or '), t));
  upTypes.forEach((t) => UNET_UP.includes(t) || r.fail('up_block_types', UNET_UP.join(' or '), t));
  const midType = config['mid_block_type'] === null ? null : r.str('mid_block_type', 'UNetMidBlock2DCrossAttn');
  if (midType !== null && midType !== 'UNetMidBlock2DCrossAttn') r.fail('mid_block_type', 'UNetMidBlock2DCrossAttn or null', midType);

  const inCh = r.int('in_channels', 4);
  const outCh = r.int('out_channels', 4);
  const layers = r.intPerBlock('layers_per_block', 2, n);
  const tLayers = r.intPerBlock('transformer_layers_per_block', 1, n);
  // diffusers 0.25: `num_attention_heads = num_attention_heads or attention_head_dim` (a head count).
  const headsKey = r.has('num_attention_heads') ? 'num_attention_heads' : 'attention_head_dim';
  const heads = r.intPerBlock(headsKey, 8, n);
  const cross = r.intPerBlock('cross_attention_dim', 1280, n);
  const linearProj = r.bool('use_linear_projection', false);
  const kIn = r.int('conv_in_kernel', 3);
  const kOut = r.int('conv_out_kernel', 3);
  const ted = r.has('time_embedding_dim') ? r.int('time_embedding_dim', 0) : boc[0] * 4;
  const shift = r.str('resnet_time_scale_shift', 'default');
  if (shift !== 'default' && shift !== 'scale_shift') r.fail('resnet_time_scale_shift', '"default" or "scale_shift"', shift);
  const tm = shift === 'scale_shift' ? 2 : 1;
  const hasOutNorm = config['norm_num_groups'] !== null;
  if (hasOutNorm) r.int('norm_num_groups', 32);

  const b = new SpecBuilder();
  b.conv('conv_in', boc[0], inCh, kIn);
  b.linear('time_embedding.linear_1', ted, boc[0]);
  b.linear('time_embedding.linear_2', ted, ted);
  if (r.has('num_class_embeds')) b.embedding('class_embedding', r.int('num_class_embeds', 1), ted);

  let outC = boc[0];
  for (let i = 0; i < n; i++) {
    const inC = outC;
    outC = boc[i];
    const p = `down_blocks.${i}.`;
    for (let j = 0; j < layers[i]; j++) {
      resnet(b, `${p}resnets.${j}.`, j === 0 ? inC : outC, outC, ted, tm);
      if (downTypes[i] === 'CrossAttnDownBlock2D') transformer2d(b, `${p}attentions.${j}.`, outC, heads[i], tLayers[i], cross[i], linearProj);
    }
    if (i < n - 1) b.conv(`${p}downsamplers.0.conv`, outC, outC, 3);
  }

  if (midType !== null) {
    const c = boc[n - 1];
    resnet(b, 'mid_block.resnets.0.', c, c, ted, tm);
    transformer2d(b, 'mid_block.attentions.0.', c, heads[n - 1], tLayers[n - 1], cross[n - 1], linearProj);
    resnet(b, 'mid_block.resnets.1.', c, c, ted, tm);
  }

  const rb = [...boc].reverse();
  const rHeads = [...heads].reverse();
  const rLayers = [...layers].reverse();
  const rT = [...tLayers].reverse();
  const rCross = [...cross].reverse();
  outC = rb[0];
  for (let i = 0; i < n; i++) {
    const prevC = outC;
    outC = rb[i];
    const inC = rb[Math.min(i + 1, n - 1)];
    const p = `up_blocks.${i}.`;
    const nl = rLayers[i] + 1;
    for (let j = 0; j < nl; j++) {
      const skip = j === nl - 1 ? inC : outC;
      const resIn = j === 0 ? prevC : outC;
      resnet(b, `${p}resnets.${j}.`, resIn + skip, outC, ted, tm);
      if (upTypes[i] === 'CrossAttnUpBlock2D') transformer2d(b, `${p}attentions.${j}.`, outC, rHeads[i], rT[i], rCross[i], linearProj);
    }
    if (i < n - 1) b.conv(`${p}upsamplers.0.conv`, outC, outC, 3);
  }

  if (hasOutNorm) b.norm('conv_norm_out', boc[0]);
  b.conv('conv_out', outCh, boc[0], kOut);
  return b.list;
}

// ---------------------------------------------------------------------------------------------
// AutoencoderKL

function vaeMid(b: SpecBuilder, p: string, c: number, withAttention: boolean): void {
  resnet(b, `${p}resnets.0.`, c, c, null);
  if (withAttention) {
    b.norm(`${p}attentions.0.group_norm`, c);
    attention(b, `${p}attentions.0.`, c, c, c, true);
  }
  resnet(b, `${p}resnets.1.`, c, c, null);
}

export function vaeParamSpec(config: ConfigObject, file = 'config.json'): ParamSpec[] {
  const r = new ConfigReader(config, file);
  const boc = r.intList('block_out_channels', [64]);
  const n = boc.length;
  const downTypes = r.strList('down_block_types', ['DownEncoderBlock2D']);
  const upTypes = r.strList('up_block_types', ['UpDecoderBlock2D']);
  if (downTypes.length !== n || downTypes.some((t) => t !== 'DownEncoderBlock2D')) r.fail('down_block_types', `${n} x DownEncoderBlock2D`, downTypes);
  if (upTypes.length !== n || upTypes.some((t) => t !== 'UpDecoderBlock2D')) r.fail('up_block_types', `${n} x UpDecoderBlock2D`, upTypes);
  const inCh = r.int('in_channels', 3);
  const outCh = r.int('out_channels', 3);
  const latent = r.int('latent_channels', 4);
  const L = r.int('layers_per_block', 1);
  r.int('norm_num_groups', 32);
  const midAttn = r.bool('mid_block_add_attention', true);
  const quant = r.bool('use_quant_conv', true);
  const postQuant = r.bool('use_post_quant_conv', true);

  const b = new SpecBuilder();
  // Encoder (double_z: conv_out gives mean and logvar).
  b.conv('encoder.conv_in', boc[0], inCh, 3);
  let outC = boc[0];
  for (let i = 0; i < n; i++) {
    const inC = outC;
    outC = boc[i];
    for (let j = 0; j < L; j++) resnet(b, `encoder.down_blocks.${i}.resnets.${j}.`, j === 0 ? inC : outC, outC, null);
    if (i < n - 1) b.conv(`encoder.down_blocks.${i}.downsamplers.0.conv`, outC, outC, 3);
  }
  vaeMid(b, 'encoder.mid_block.', boc[n - 1], midAttn);
  b.norm('encoder.conv_norm_out', boc[n - 1]);
  b.conv('encoder.conv_out', 2 * latent, boc[n - 1], 3);
  if (quant) b.conv('quant_conv', 2 * latent, 2 * latent, 1);
  if (postQuant) b.conv('post_quant_conv', latent, latent, 1);

  // Decoder: mirror image, one extra resnet per block.
  b.conv('decoder.conv_in', boc[n - 1], latent, 3);
  vaeMid(b, 'decoder.mid_block.', boc[n - 1], midAttn);
  const rb = [...boc].reverse();
  outC = rb[0];
  for (let i = 0; i < n; i++) {
    const prevC = outC;
    outC = rb[i];
    for (let j = 0; j < L + 1; j++) resnet(b, `decoder.up_blocks.${i}.resnets.${j}.`, j === 0 ? prevC : outC, outC, null);
    if (i < n - 1) b.conv(`decoder.up_blocks.${i}.upsamplers.0.conv`, outC, outC, 3);
  }
  b.norm('decoder.conv_norm_out', boc[0]);
  b.conv('decoder.conv_out', outCh, boc[0], 3);
  return b.list;
}

// ---------------------------------------------------------------------------------------------
// CLIP (transformers 4.30)

/** transformers' CLIPTextConfig / CLIPVisionConfig defaults, used when a field is absent. */
const TEXT_DEFAULTS = { vocab_size: 49408, hidden_size: 512, intermediate_size: 2048, num_hidden_layers: 12, max_position_embeddings: 77, projection_dim: 512 };
const VISION_DEFAULTS = { hidden_size: 768, intermediate_size: 3072, num_hidden_layers: 12, num_channels: 3, image_size: 224, patch_size: 32, projection_dim: 512 };

function clipEncoder(b: SpecBuilder, p: string, h: number, inter: number, layers: number): void {
  for (let i = 0; i < layers; i++) {
    const q = `${p}encoder.layers.${i}.`;
    for (const x of ['k_proj', 'v_proj', 'q_proj', 'out_proj']) b.linear(`${q}self_attn.${x}`, h, h);
    b.norm(`${q}layer_norm1`, h);
    b.linear(`${q}mlp.fc1`, inter, h);
    b.linear(`${q}mlp.fc2`, h, inter);
    b.norm(`${q}layer_norm2`, h);
  }
}

/** The text (or vision) part of a config that may be a full CLIPModel config. */
export function subConfig(config: ConfigObject, which: 'text' | 'vision', file: string): ConfigObject {
  const nested = config[`${which}_config`];
  if (nested === undefined || nested === null) return config;
  const sub = { ...asConfigObject(nested, file) };
  // A CLIPModel's projection_dim lives at the top level; the sub-config copy may be missing.
  if (sub['projection_dim'] === undefined && config['projection_dim'] !== undefined) sub['projection_dim'] = config['projection_dim'];
  return sub;
}

function clipText(b: SpecBuilder, cfg: ConfigObject, file: string): number {
  const r = new ConfigReader(cfg, file);
  const h = r.int('hidden_size', TEXT_DEFAULTS.hidden_size);
  const maxPos = r.int('max_position_embeddings', TEXT_DEFAULTS.max_position_embeddings);
  b.embedding('text_model.embeddings.token_embedding', r.int('vocab_size', TEXT_DEFAULTS.vocab_size), h);
  b.embedding('text_model.embeddings.position_embedding', maxPos, h);
  b.add({ name: 'text_model.embeddings.position_ids', shape: [1, maxPos], kind: 'buffer_i64', fanIn: 0, optional: true });
  clipEncoder(b, 'text_model.', h, r.int('intermediate_size', TEXT_DEFAULTS.intermediate_size), r.int('num_hidden_layers', TEXT_DEFAULTS.num_hidden_layers));
  b.norm('text_model.final_layer_norm', h);
  return h;
}

function clipVision(b: SpecBuilder, cfg: ConfigObject, file: string): number {
  const r = new ConfigReader(cfg, file);
  const h = r.int('hidden_size', VISION_DEFAULTS.hidden_size);
  const img = r.int('image_size', VISION_DEFAULTS.image_size);
  const patch = r.int('patch_size', VISION_DEFAULTS.patch_size);
  const ch = r.int('num_channels', VISION_DEFAULTS.num_channels);
  const positions = Math.floor(img / patch) ** 2 + 1;
  b.add({ name: 'vision_model.embeddings.class_embedding', shape: [h], kind: 'class_embedding', fanIn: 0 });
  b.conv('vision_model.embeddings.patch_embedding', h, ch, patch, false);
  b.embedding('vision_model.embeddings.position_embedding', positions, h);
  b.add({ name: 'vision_model.embeddings.position_ids', shape: [1, positions], kind: 'buffer_i64', fanIn: 0, optional: true });
  b.norm('vision_model.pre_layrnorm', h); // transformers' spelling
  clipEncoder(b, 'vision_model.', h, r.int('intermediate_size', VISION_DEFAULTS.intermediate_size), r.int('num_hidden_layers', VISION_DEFAULTS.num_hidden_layers));
  b.norm('vision_model.post_layernorm', h);
  return h;
}

export function clipParamSpec(cls: ModelClassName, config: ConfigObject, file = 'config.json'): ParamSpec[] {
  const b = new SpecBuilder();
  const text = subConfig(config, 'text', file);
  const vision = subConfig(config, 'vision', file);
  const proj = (c: ConfigObject) => new ConfigReader(c, file).int('projection_dim', TEXT_DEFAULTS.projection_dim);
  if (cls === 'CLIPTextModel' || cls === 'CLIPTextModelWithProjection' || cls === 'CLIPModel') {
    const h = clipText(b, text, file);
    if (cls === 'CLIPTextModelWithProjection') b.linear('text_projection', proj(text), h, false);
  }
  if (cls === 'CLIPVisionModel' || cls === 'CLIPVisionModelWithProjection' || cls === 'CLIPModel') {
    const h = clipVision(b, vision, file);
    if (cls !== 'CLIPVisionModel') b.linear('visual_projection', proj(cls === 'CLIPModel' ? config : vision), h, false);
  }
  if (cls === 'CLIPModel') {
    const th = new ConfigReader(text, file).int('hidden_size', TEXT_DEFAULTS.hidden_size);
    b.linear('text_projection', proj(config), th, false);
    b.add({ name: 'logit_scale', shape: [], kind: 'scalar', fanIn: 0 });
  }
  return b.list;
}

// ---------------------------------------------------------------------------------------------
// Dispatch

/** The model class a config describes: diffusers `_class_name`, else transformers `architectures`/`model_type`. */
export function modelClassOf(config: ConfigObject, file = 'config.json'): ModelClassName {
  const candidates: unknown[] = [config['_class_name']];
  if (Array.isArray(config['architectures'])) candidates.push(config['architectures'][0]);
  for (const c of candidates) {
    if (typeof c === 'string' && (MODEL_CLASSES as readonly string[]).includes(c)) return c as ModelClassName;
  }
  const byType: Record<string, ModelClassName> = { clip_text_model: 'CLIPTextModel', clip_vision_model: 'CLIPVisionModel', clip: 'CLIPModel' };
  const mt = config['model_type'];
  if (typeof mt === 'string' && byType[mt]) return byType[mt];
  throw new WeightsError('BAD_CONFIG', 'cannot tell which model this config describes', {
    file, expected: `_class_name or architectures[0] in ${MODEL_CLASSES.join(', ')}`,
    found: JSON.stringify(candidates.find((c) => c !== undefined) ?? config['model_type'] ?? null),
  });
}

export function paramSpec(config: unknown, opts: { file?: string; className?: ModelClassName } = {}): ParamSpec[] {
  const file = opts.file ?? 'config.json';
  const cfg = asConfigObject(config, file);
  const cls = opts.className ?? modelClassOf(cfg, file);
  if (cls === 'UNet2DConditionModel') return unetParamSpec(cfg, file);
  if (cls === 'AutoencoderKL') return vaeParamSpec(cfg, file);
  return clipParamSpec(cls, cfg, file);
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, d) => a * d, 1);
}

/** Trainable parameter count (buffers such as position_ids excluded). */
export function countParams(spec: readonly ParamSpec[]): number {
  return spec.reduce((a, p) => a + (p.kind === 'buffer_i64' ? 0 : numel(p.shape)), 0);
}

// ---------------------------------------------------------------------------------------------
// Checking a weight file against a spec

export interface SpecReport {
  file: string;
  missing: ParamSpec[];
  unexpected: Array<{ name: string; shape: number[] }>;
  wrongShape: Array<{ name: string; expected: number[]; found: number[] }>;
  ok: boolean;
  /** Human-readable summary, one problem per line. */
  text: string;
}

const fmt = (s: readonly number[]) => `[${s.join(', ')}]`;

export function checkAgainstSpec(
  spec: readonly ParamSpec[], tensors: ReadonlyMap<string, { shape: number[] }>, file: string,
): SpecReport {
  const byName = new Map(spec.map((p) => [p.name, p]));
  const missing = spec.filter((p) => !p.optional && !tensors.has(p.name));
  const unexpected: SpecReport['unexpected'] = [];
  const wrongShape: SpecReport['wrongShape'] = [];
  for (const [name, t] of tensors) {
    const p = byName.get(name);
    if (!p) unexpected.push({ name, shape: [...t.shape] });
    else if (fmt(p.shape) !== fmt(t.shape)) wrongShape.push({ name, expected: p.shape, found: [...t.shape] });
  }
  const ok = !missing.length && !unexpected.length && !wrongShape.length;
  const lines = [`${file}: ${ok ? 'matches the config' : `${missing.length} missing, ${unexpected.length} unexpected, ${wrongShape.length} with the wrong shape`} (${spec.length} parameters expected, ${tensors.size} found)`];
  const section = <T>(title: string, items: T[], show: (x: T) => string) => {
    if (!items.length) return;
    lines.push(`  ${title}:`);
    for (const x of items.slice(0, 20)) lines.push(`    ${show(x)}`);
    if (items.length > 20) lines.push(`    ... and ${items.length - 20} more`);
  };
  section('wrong shape', wrongShape, (w) => `${w.name}: expected ${fmt(w.expected)}, found ${fmt(w.found)}`);
  section('missing', missing, (m) => `${m.name} ${fmt(m.shape)}`);
  section('unexpected', unexpected, (u) => `${u.name} ${fmt(u.shape)}`);
  return { file, missing, unexpected, wrongShape, ok, text: lines.join('\n') };
}

/** Throws SHAPE_MISMATCH, MISSING_TENSOR or UNEXPECTED_TENSOR (in that priority); the message ends with the full report. */
export function assertMatchesSpec(
  spec: readonly ParamSpec[], tensors: ReadonlyMap<string, { shape: number[] }>, file: string,
): void {
  const r = checkAgainstSpec(spec, tensors, file);
  if (r.ok) return;
  let err: WeightsError;
  if (r.wrongShape.length) {
    const w = r.wrongShape[0];
    err = new WeightsError('SHAPE_MISMATCH', 'shape contradicts the config', { file, tensor: w.name, expected: fmt(w.expected), found: fmt(w.found) });
  } else if (r.missing.length) {
    const m = r.missing[0];
    err = new WeightsError('MISSING_TENSOR', 'tensor required by the config is absent', { file, tensor: m.name, expected: fmt(m.shape), found: 'absent' });
  } else {
    const u = r.unexpected[0];
    err = new WeightsError('UNEXPECTED_TENSOR', "tensor is not part of the config's model", { file, tensor: u.name, expected: 'absent', found: fmt(u.shape) });
  }
  err.message += `\n${r.text}`;
  throw err;
}
