// CLIP text and vision encoders, matching transformers 4.30 `CLIPTextModel` and
// `CLIPVisionModelWithProjection`, configured only from their config.json (a `CLIPModel` config with
// text_config / vision_config works too) and reading the exact transformers parameter names.
//
// Text:   token_embedding(ids) + position_embedding(0..S-1) -> encoder layers (pre-LN, causal self-attention,
//         MLP with hidden_act) -> final_layer_norm. Pooled output = the row at argmax(ids) (the first EOS,
//         since EOS is the largest id of the CLIP vocabulary).
// Vision: patch conv (stride = patch, no bias) + class token + position embeddings -> pre_layrnorm
//         (transformers' spelling) -> encoder layers (no mask) -> post_layernorm on the class token ->
//         visual_projection (no bias).
//
// Browser-safe: model folders come in through a `FolderAccess`; the `...FromDir` loaders import the Node
// file access only when called.
import { Tensor, ShapeError } from '../engine/tensor.js';
import { add, mul, gelu, quickGelu, relu, silu, tanh, pow, scale, addScalar, affine, cast } from '../kernels/elementwise.js';
import { reshape, transpose, concat, gather, broadcastTo, slice } from '../kernels/shape.js';
import { attention } from '../kernels/attention.js';
import { conv2d } from '../kernels/conv2d.js';
import { linear, layerNorm, activationDtypes } from './nn.js';
import { Params, uploadWeights, type UploadOptions } from './weights.js';
import { ConfigReader, type ConfigObject } from '../weights-tools/config-reader.js';
import { subConfig } from '../weights-tools/param-spec.js';
import { openModelFolder, type FolderAccess } from '../weights-tools/model-folder.js';
import { WeightsError } from '../weights-tools/errors.js';

// ---------------------------------------------------------------------------------------------
// Configs

export type ClipActivation = 'quick_gelu' | 'gelu' | 'gelu_new' | 'gelu_pytorch_tanh' | 'gelu_fast' | 'relu' | 'silu';
const ACTIVATIONS: readonly string[] = ['quick_gelu', 'gelu', 'gelu_new', 'gelu_pytorch_tanh', 'gelu_fast', 'relu', 'silu'];

interface ClipEncoderConfig {
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  hiddenAct: ClipActivation;
  layerNormEps: number;
}

export interface ClipTextConfig extends ClipEncoderConfig {
  vocabSize: number;
  maxPositions: number;
  bosTokenId: number;
  eosTokenId: number;
  padTokenId: number;
  projectionDim: number;
}

export interface ClipVisionConfig extends ClipEncoderConfig {
  imageSize: number;
  patchSize: number;
  numChannels: number;
  projectionDim: number;
}

function encoderConfig(r: ConfigReader, defaults: { hidden: number; inter: number; layers: number; heads: number }): ClipEncoderConfig {
  const hiddenSize = r.int('hidden_size', defaults.hidden);
  const numHeads = r.int('num_attention_heads', defaults.heads);
  if (hiddenSize % numHeads) r.fail('num_attention_heads', `a divisor of hidden_size ${hiddenSize}`, numHeads);
  const act = r.str('hidden_act', 'quick_gelu')!;
  if (!ACTIVATIONS.includes(act)) r.fail('hidden_act', ACTIVATIONS.join(' | '), act);
  const eps = r.cfg['layer_norm_eps'] ?? 1e-5;
  if (typeof eps !== 'number' || !(eps > 0)) r.fail('layer_norm_eps', 'a positive number', eps);
  return {
    hiddenSize,
    intermediateSize: r.int('intermediate_size', defaults.inter),
    numLayers: r.int('num_hidden_layers', defaults.layers),
    numHeads,
    hiddenAct: act as ClipActivation,
    layerNormEps: eps,
  };
}

function intOr(r: ConfigReader, key: string, def: number): number {
  const v = r.cfg[key] ?? def;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) r.fail(key, 'a non-negative integer', v);
  return v;
}

/** The text tower's settings from a CLIPTextConfig or CLIPModel config (transformers 4.30 defaults). */
export function clipTextConfig(config: ConfigObject, file = 'config.json'): ClipTextConfig {
  const r = new ConfigReader(subConfig(config, 'text', file), file);
  return {
    ...encoderConfig(r, { hidden: 512, inter: 2048, layers: 12, heads: 8 }),
    vocabSize: r.int('vocab_size', 49408),
    maxPositions: r.int('max_position_embeddings', 77),
    bosTokenId: intOr(r, 'bos_token_id', 0),
    eosTokenId: intOr(r, 'eos_token_id', 2),
    padTokenId: intOr(r, 'pad_token_id', 1),
    projectionDim: r.int('projection_dim', 512),
  };
}

/** The vision tower's settings from a CLIPVisionConfig or CLIPModel config (transformers 4.30 defaults). */
export function clipVisionConfig(config: ConfigObject, file = 'config.json'): ClipVisionConfig {
  const r = new ConfigReader(subConfig(config, 'vision', file), file);
  const c = {
    ...encoderConfig(r, { hidden: 768, inter: 3072, layers: 12, heads: 12 }),
    imageSize: r.int('image_size', 224),
    patchSize: r.int('patch_size', 32),
    numChannels: r.int('num_channels', 3),
    projectionDim: r.int('projection_dim', 512),
  };
  if (c.imageSize % c.patchSize) r.fail('patch_size', `a divisor of image_size ${c.imageSize}`, c.patchSize);
  return c;
}

// ---------------------------------------------------------------------------------------------
// Shared encoder

function activation(kind: ClipActivation, x: Tensor): Tensor {
  switch (kind) {
    case 'quick_gelu':
      return quickGelu(x);
    case 'gelu':
      return gelu(x);
    case 'relu':
      return relu(x);
    case 'silu':
      return silu(x);
    default: {
      // tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
      const inner = affine(add(x, scale(pow(x, 3), 0.044715)), Math.sqrt(2 / Math.PI));
      return mul(scale(x, 0.5), addScalar(tanh(inner), 1));
    }
  }
}

/** One CLIPEncoderLayer: x + attn(ln1(x)), then + mlp(ln2(.)). */
function encoderLayer(p: Params, x: Tensor, cfg: ClipEncoderConfig, causal: boolean): Tensor {
  const eps = cfg.layerNormEps;
  const h = layerNorm(p.sub('layer_norm1'), x, eps);
  const a = p.sub('self_attn');
  const q = linear(a.sub('q_proj'), h);
  const k = linear(a.sub('k_proj'), h);
  const v = linear(a.sub('v_proj'), h);
  const o = attention(q, k, v, { heads: cfg.numHeads, scale: (cfg.hiddenSize / cfg.numHeads) ** -0.5, causal });
  const x1 = add(x, linear(a.sub('out_proj'), o));
  const h2 = layerNorm(p.sub('layer_norm2'), x1, eps);
  const m = linear(p.sub('mlp.fc2'), activation(cfg.hiddenAct, linear(p.sub('mlp.fc1'), h2)));
  return add(x1, m);
}

/** Runs the encoder layers; returns [input, after layer 1, ..., after layer n]. */
function encoder(p: Params, x: Tensor, cfg: ClipEncoderConfig, causal: boolean, layers = cfg.numLayers): Tensor[] {
  const states = [x];
  for (let i = 0; i < layers; i++) states.push(encoderLayer(p.sub(`encoder.layers.${i}`), states[i], cfg, causal));
  return states;
}

// ---------------------------------------------------------------------------------------------
// Text

export interface ClipTextOutput {
  /** final_layer_norm(last layer) [B, S, hidden] (SD1 conditioning) */
  lastHiddenState: Tensor;
  /** [embeddings, after layer 1, ..., after layer n], not normed */
  hiddenStates: Tensor[];
  /** final_layer_norm(hidden_states[-2]) (SD2 / OpenCLIP penultimate-layer conditioning) */
  penultimateNormed: Tensor;
  /** lastHiddenState at argmax(ids) per row (see `pool`) [B, hidden] */
  pooled: Tensor;
  /** text_projection(pooled) [B, projection_dim], when the weights have a text_projection */
  textEmbeds?: Tensor;
  /** the row index used for pooling, per batch item */
  poolIndex: number[];
}

export interface ClipTextForwardOptions {
  /** run only the first n encoder layers (hidden states stop there too); default all */
  layers?: number;
  /**
   * Which row is pooled: 'argmax' (default; transformers 4.30, and later versions whenever the config's
   * eos_token_id is 2, as in the SD checkpoints) takes the first largest id; 'eos' takes the first
   * eos_token_id (later transformers for other configs), falling back to argmax when a row has none.
   */
  pool?: 'argmax' | 'eos';
}

export class ClipTextModel {
  readonly config: ClipTextConfig;
  /** parameters at the checkpoint's root (text_model.* below it) */
  readonly params: Params;

  constructor(config: ClipTextConfig | ConfigObject, params: Params) {
    this.config = 'vocabSize' in config ? (config as ClipTextConfig) : clipTextConfig(config as ConfigObject);
    this.params = params;
  }

  /** Encode token ids (host array, row-major [B, S]). Gradients flow to any weight marked requiresGrad. */
  forward(ids: ArrayLike<number> | BigInt64Array, shape: [number, number], opts: ClipTextForwardOptions = {}): ClipTextOutput {
    const c = this.config;
    const [B, S] = shape;
    const n = B * S;
    if (ids.length !== n) throw new ShapeError(`CLIP text: ${ids.length} ids do not fill [${shape}]`);
    if (S > c.maxPositions) throw new ShapeError(`CLIP text: sequence length ${S} exceeds max_position_embeddings ${c.maxPositions}`);
    const idList = Array.from(ids as ArrayLike<number | bigint>, Number);
    for (let i = 0; i < n; i++)
      if (!(idList[i] >= 0 && idList[i] < c.vocabSize)) throw new ShapeError(`CLIP text: id ${idList[i]} at position ${i} is outside the vocabulary (${c.vocabSize})`);
    const layers = opts.layers ?? c.numLayers;
    if (!Number.isInteger(layers) || layers < 1 || layers > c.numLayers) throw new ShapeError(`CLIP text: layers must be in 1..${c.numLayers}, got ${layers}`);
    const p = this.params.sub('text_model');
    const tok = gather(p.get('embeddings.token_embedding.weight'), idList, [B, S]);
    const pos = gather(p.get('embeddings.position_embedding.weight'), [...Array(S).keys()], [1, S]);
    const hiddenStates = encoder(p, add(tok, pos), c, true, layers);
    const ln = p.sub('final_layer_norm');
    const lastHiddenState = layerNorm(ln, hiddenStates[layers], c.layerNormEps);
    const penultimateNormed = layerNorm(ln, hiddenStates[layers - 1], c.layerNormEps);
    const poolIndex: number[] = [];
    for (let b = 0; b < B; b++) {
      const row = idList.slice(b * S, (b + 1) * S);
      const eos = opts.pool === 'eos' ? row.indexOf(c.eosTokenId) : -1;
      let best = 0;
      if (eos >= 0) best = eos;
      else for (let s = 1; s < S; s++) if (row[s] > row[best]) best = s;
      poolIndex.push(best);
    }
    const pooled = gather(reshape(lastHiddenState, [n, c.hiddenSize]), poolIndex.map((s, b) => b * S + s), [B]);
    const out: ClipTextOutput = { lastHiddenState, hiddenStates, penultimateNormed, pooled, poolIndex };
    if (this.params.has('text_projection.weight')) out.textEmbeds = linear(this.params.sub('text_projection'), pooled);
    return out;
  }

  dispose() {
    this.params.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// Vision

export interface ClipVisionOutput {
  /** class token + patch embeddings + position embeddings, before pre_layrnorm [B, 1+P, hidden] */
  embeddings: Tensor;
  /** [after pre_layrnorm, after layer 1, ..., after layer n] */
  hiddenStates: Tensor[];
  /** encoder output, not post-normed [B, 1+P, hidden] */
  lastHiddenState: Tensor;
  /** post_layernorm(lastHiddenState[:, 0]) [B, hidden] */
  pooled: Tensor;
  /** visual_projection(pooled) [B, projection_dim], when the weights have a visual_projection */
  imageEmbeds?: Tensor;
}

export class ClipVisionModel {
  readonly config: ClipVisionConfig;
  readonly params: Params;

  constructor(config: ClipVisionConfig | ConfigObject, params: Params) {
    this.config = 'imageSize' in config ? (config as ClipVisionConfig) : clipVisionConfig(config as ConfigObject);
    this.params = params;
  }

  /**
   * Encode normalized pixels [B, C, image_size, image_size]. `activations: 'f16'` runs the encoder layers with
   * f16 activations (where the device has shader-f16; arithmetic stays f32): the hidden states are f16, the
   * pooled output and the image embeddings are given in the pixels' dtype.
   */
  forward(pixels: Tensor, opts: { activations?: 'f32' | 'f16' } = {}): ClipVisionOutput {
    const c = this.config;
    const { act, out: outDtype } = activationDtypes('CLIP vision', pixels, opts.activations);
    if (pixels.rank !== 4 || pixels.shape[1] !== c.numChannels || pixels.shape[2] !== c.imageSize || pixels.shape[3] !== c.imageSize)
      throw new ShapeError(`CLIP vision: pixel_values must be [B, ${c.numChannels}, ${c.imageSize}, ${c.imageSize}], got [${pixels.shape}]`);
    const B = pixels.shape[0];
    const h = c.hiddenSize;
    const g = c.imageSize / c.patchSize;
    const p = this.params.sub('vision_model');
    const e = p.sub('embeddings');
    // the embeddings (patches, class and position tables) in f32, then the encoder in the activation dtype
    const patches = conv2d(cast(pixels, 'f32'), e.get('patch_embedding.weight'), undefined, { stride: c.patchSize });
    const tokens = transpose(reshape(patches, [B, h, g * g]), 1, 2);
    const cls = broadcastTo(reshape(e.get('class_embedding'), [1, 1, h]), [B, 1, h]);
    const posTable = e.get('position_embedding.weight');
    if (posTable.shape[0] !== g * g + 1) throw new ShapeError(`CLIP vision: ${posTable.shape[0]} position embeddings for ${g * g + 1} tokens`);
    const embeddings = add(concat([cls, tokens], 1), reshape(posTable, [1, g * g + 1, h]));
    const pre = layerNorm(p.sub('pre_layrnorm'), cast(embeddings, act), c.layerNormEps);
    const hiddenStates = encoder(p, pre, c, false);
    const lastHiddenState = hiddenStates[hiddenStates.length - 1];
    const first = reshape(slice(lastHiddenState, { 1: [0, 1] }), [B, h]);
    const pooled = cast(layerNorm(p.sub('post_layernorm'), first, c.layerNormEps), outDtype);
    const out: ClipVisionOutput = { embeddings, hiddenStates, lastHiddenState, pooled };
    if (this.params.has('visual_projection.weight')) out.imageEmbeds = linear(this.params.sub('visual_projection'), pooled);
    return out;
  }

  dispose() {
    this.params.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// Loading

async function loadTower(folder: FolderAccess, which: 'text' | 'vision', opts: UploadOptions) {
  const mf = await openModelFolder(folder);
  try {
    const prefix = which === 'text' ? 'text_model.' : 'vision_model.';
    const extra = which === 'text' ? 'text_projection.' : 'visual_projection.';
    if (![...mf.weights.tensors.keys()].some((n) => n.startsWith(prefix)))
      throw new WeightsError('MISSING_TENSOR', `a ${mf.className} folder has no CLIP ${which} tower`, { file: mf.weights.name, expected: `${prefix}* tensors`, found: 'none' });
    const filter = (n: string) => (n.startsWith(prefix) || n.startsWith(extra)) && (!opts.filter || opts.filter(n));
    const params = await uploadWeights(mf.weights, { ...opts, filter });
    return { config: mf.config, params };
  } finally {
    await mf.weights.close();
  }
}

/** A CLIP text encoder from a model folder (CLIPTextModel, CLIPTextModelWithProjection or CLIPModel). */
export async function loadClipTextModel(folder: FolderAccess, opts: UploadOptions = {}): Promise<ClipTextModel> {
  const { config, params } = await loadTower(folder, 'text', opts);
  return new ClipTextModel(clipTextConfig(config, `${folder.name}/config.json`), params);
}

/** A CLIP vision encoder from a model folder (CLIPVisionModel[WithProjection] or CLIPModel). */
export async function loadClipVisionModel(folder: FolderAccess, opts: UploadOptions = {}): Promise<ClipVisionModel> {
  const { config, params } = await loadTower(folder, 'vision', opts);
  return new ClipVisionModel(clipVisionConfig(config, `${folder.name}/config.json`), params);
}

/** Node: `loadClipTextModel` on a local directory. */
export async function loadClipTextModelFromDir(dir: string, opts: UploadOptions = {}): Promise<ClipTextModel> {
  const { nodeFolder } = await import('../weights-tools/node-source.js');
  return loadClipTextModel(nodeFolder(dir), opts);
}

/** Node: `loadClipVisionModel` on a local directory. */
export async function loadClipVisionModelFromDir(dir: string, opts: UploadOptions = {}): Promise<ClipVisionModel> {
  const { nodeFolder } = await import('../weights-tools/node-source.js');
  return loadClipVisionModel(nodeFolder(dir), opts);
}
