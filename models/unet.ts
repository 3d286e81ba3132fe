// diffusers 0.25 UNet2DConditionModel (SD 1.x and SD 2.x), configured only from its config.json and
// reading the exact diffusers parameter names through `Params`. The module tree mirrors diffusers:
//   time_proj -> time_embedding -> conv_in -> down_blocks[i] (resnets, attentions, downsamplers)
//   -> mid_block -> up_blocks[i] (resnets, attentions, upsamplers) -> conv_norm_out -> silu -> conv_out
// The building blocks shared with the VAE (ResnetBlock2D, Downsample2D, Upsample2D, attention and the
// conv / group-norm helpers) are exported from here.
import { Tensor, ShapeError, tidy } from '../engine/tensor.js';
import { checkpoint } from '../engine/autodiff.js';
import { add, mul, silu, scale as scaleOp, addScalar, cast } from '../kernels/elementwise.js';
import { reshape, permute, concat, split } from '../kernels/shape.js';
import { linear as linearOp } from '../kernels/matmul.js';
import { layerNorm as layerNormOp } from '../kernels/layernorm.js';
import { conv2d } from '../kernels/conv2d.js';
import { groupNorm } from '../kernels/groupnorm.js';
import { attention } from '../kernels/attention.js';
import { geglu } from '../kernels/geglu.js';
import { upsampleNearest2x } from '../kernels/resample.js';
import { uploadWeights, type Params, type UploadOptions } from './weights.js';
import { ConfigReader, type ConfigObject } from '../weights-tools/config-reader.js';
import { WeightsError } from '../weights-tools/errors.js';
import { openModelFolder, type FolderAccess } from '../weights-tools/model-folder.js';
import { unetParamSpec } from '../weights-tools/param-spec.js';

/**
 * Called with each submodule's (first) output under its diffusers module path, e.g. `down_blocks.0`,
 * `mid_block.attentions.0`, `conv_out`. The tensor belongs to the model's scopes: call `t.keep()` (and
 * dispose it later) to read it after the forward returns.
 */
export type Capture = (name: string, t: Tensor) => void;

// ---------------------------------------------------------------------------------------------
// Layer helpers on `Params` scoped at the module (shared with the VAE)

// nn.Linear (a 1x1 conv weight is accepted as [O, C]) and nn.LayerNorm, shared with the other models
import { linear as linearP, layerNorm as layerNormP, activationDtypes } from './nn.js';
export { linearP, layerNormP };

/** nn.Conv2d with square kernel; padding defaults to (k-1)/2 ("same" for odd k at stride 1). */
export function convP(p: Params, x: Tensor, opts: { stride?: number; padding?: number | [number, number, number, number] } = {}): Tensor {
  const w = p.get('weight');
  const padding = opts.padding ?? (w.shape[2] - 1) >> 1;
  return conv2d(x, w, p.has('bias') ? p.get('bias') : undefined, { stride: opts.stride ?? 1, padding });
}

/** nn.GroupNorm with affine weight/bias, optionally followed by SiLU (fused). */
export function groupNormP(p: Params, x: Tensor, groups: number, eps: number, withSilu = false): Tensor {
  return groupNorm(x, groups, p.get('weight'), p.get('bias'), eps, { silu: withSilu });
}

export interface ResnetOptions {
  groups: number;
  eps: number;
  /** output is (shortcut + h) / outputScale */
  outputScale?: number;
  /** resnet_time_scale_shift "scale_shift": time_emb_proj gives scale and shift applied after norm2 */
  scaleShift?: boolean;
}

/**
 * ResnetBlock2D (pre-norm): norm1 -> silu -> conv1 (+ time_emb_proj(silu(temb)) per channel) -> norm2
 * -> silu -> conv2, plus the input (through conv_shortcut when channels change). `tembAct` is
 * silu(temb) [B, T] (diffusers applies the SiLU in every resnet; the model computes it once), or null.
 */
export function resnetBlock(p: Params, x: Tensor, tembAct: Tensor | null, o: ResnetOptions): Tensor {
  let h = groupNormP(p.sub('norm1'), x, o.groups, o.eps, true);
  h = convP(p.sub('conv1'), h);
  const C = h.shape[1];
  let t: Tensor | null = null;
  if (tembAct && p.has('time_emb_proj.weight')) t = linearP(p.sub('time_emb_proj'), tembAct);
  if (t && o.scaleShift) {
    const [sc, sh] = split(t, 2, 1);
    h = groupNormP(p.sub('norm2'), h, o.groups, o.eps);
    h = add(mul(h, addScalar(reshape(sc, [sc.shape[0], C, 1, 1]), 1)), reshape(sh, [sh.shape[0], C, 1, 1]));
    h = silu(h);
  } else {
    if (t) h = add(h, reshape(t, [t.shape[0], C, 1, 1]));
    h = groupNormP(p.sub('norm2'), h, o.groups, o.eps, true);
  }
  h = convP(p.sub('conv2'), h);
  const sc = p.has('conv_shortcut.weight') ? convP(p.sub('conv_shortcut'), x, { padding: 0 }) : x;
  const out = add(sc, h);
  return o.outputScale && o.outputScale !== 1 ? scaleOp(out, 1 / o.outputScale) : out;
}

/** Downsample2D with a conv: stride 2 with `padding`; padding 0 means pad (right 1, bottom 1) first, as diffusers. */
export function downsample(p: Params, x: Tensor, padding: number): Tensor {
  return convP(p.sub('conv'), x, { stride: 2, padding: padding === 0 ? [0, 1, 0, 1] : padding });
}

/** Upsample2D with a conv: nearest 2x, then conv 3x3. */
export function upsample(p: Params, x: Tensor): Tensor {
  return convP(p.sub('conv'), upsampleNearest2x(x));
}

/** diffusers `Attention` core on tokens: to_q(x), to_k/to_v(context), fused multi-head attention, to_out.0. */
export function attentionP(p: Params, x: Tensor, context: Tensor, heads: number): Tensor {
  const q = linearP(p.sub('to_q'), x);
  const k = linearP(p.sub('to_k'), context);
  const v = linearP(p.sub('to_v'), context);
  return linearP(p.sub('to_out.0'), attention(q, k, v, { heads }));
}

/** NCHW -> tokens [B, H*W, C]. */
export function toTokens(x: Tensor): Tensor {
  const [B, C, H, W] = x.shape;
  return reshape(permute(x, [0, 2, 3, 1]), [B, H * W, C]);
}

/** tokens [B, H*W, C] -> NCHW. */
export function fromTokens(t: Tensor, H: number, W: number): Tensor {
  const [B, , C] = t.shape;
  return permute(reshape(t, [B, H, W, C]), [0, 3, 1, 2]);
}

// ---------------------------------------------------------------------------------------------
// Transformer2DModel (continuous input) with BasicTransformerBlocks

/** BasicTransformerBlock: self-attention, cross-attention on `context`, GEGLU feed-forward, each pre-norm with a residual. */
export function basicTransformerBlock(p: Params, x: Tensor, context: Tensor, heads: number): Tensor {
  let n = layerNormP(p.sub('norm1'), x);
  x = add(attentionP(p.sub('attn1'), n, n, heads), x);
  n = layerNormP(p.sub('norm2'), x);
  x = add(attentionP(p.sub('attn2'), n, context, heads), x);
  n = layerNormP(p.sub('norm3'), x);
  const ff = linearP(p.sub('ff.net.2'), geglu(linearP(p.sub('ff.net.0.proj'), n)));
  return add(ff, x);
}

export interface TransformerOptions {
  heads: number;
  groups: number;
  layers: number;
}

/**
 * Transformer2DModel: GroupNorm (eps 1e-6) -> proj_in -> blocks -> proj_out -> + input. proj_in/out are
 * 1x1 convs (SD 1.x) or linears (SD 2.x, use_linear_projection); both are applied on tokens, which is the
 * same computation (a 1x1 conv is a linear over channels).
 */
export function transformer2d(p: Params, x: Tensor, context: Tensor, o: TransformerOptions): Tensor {
  const [, , H, W] = x.shape;
  let t = toTokens(groupNormP(p.sub('norm'), x, o.groups, 1e-6));
  t = linearP(p.sub('proj_in'), t);
  for (let j = 0; j < o.layers; j++) t = basicTransformerBlock(p.sub(`transformer_blocks.${j}`), t, context, o.heads);
  t = linearP(p.sub('proj_out'), t);
  return add(fromTokens(t, H, W), x);
}

// ---------------------------------------------------------------------------------------------
// Timestep embedding (host side)

/**
 * diffusers `get_timestep_embedding` for host timesteps, [B, dim] row-major. Frequencies are rounded to
 * float32 the way PyTorch computes them (float32 arange, exponent and exp), the arguments t * freq are
 * rounded to float32, then sin/cos are evaluated in float64 (arguments reach ~1000 rad, far outside the
 * range where WGSL sin/cos are accurate).
 */
export function timestepEmbedding(timesteps: readonly number[], dim: number, flipSinToCos: boolean, freqShift: number, maxPeriod = 10000, scale = 1): Float32Array {
  const f = Math.fround;
  const half = Math.floor(dim / 2);
  const freqs = new Float64Array(half);
  const c = f(-Math.log(maxPeriod));
  const d = f(half - freqShift);
  for (let i = 0; i < half; i++) freqs[i] = f(Math.exp(f(f(c * i) / d)));
  const out = new Float32Array(timesteps.length * dim);
  for (let b = 0; b < timesteps.length; b++) {
    const t = f(timesteps[b]);
    for (let i = 0; i < half; i++) {
      const a = f(f(t * freqs[i]) * f(scale));
      const s = Math.sin(a);
      const co = Math.cos(a);
      // torch.cat([sin, cos]); flip_sin_to_cos swaps the halves to [cos, sin]
      out[b * dim + i] = flipSinToCos ? co : s;
      out[b * dim + half + i] = flipSinToCos ? s : co;
    }
    // odd dim: a zero column at the end (already zero)
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Config

export type DownBlockType = 'CrossAttnDownBlock2D' | 'DownBlock2D';
export type UpBlockType = 'CrossAttnUpBlock2D' | 'UpBlock2D';

export interface UNetConfig {
  inChannels: number;
  outChannels: number;
  blockOutChannels: number[];
  downBlockTypes: DownBlockType[];
  upBlockTypes: UpBlockType[];
  hasMidBlock: boolean;
  layersPerBlock: number[];
  transformerLayersPerBlock: number[];
  /** attention heads per down block (diffusers' num_attention_heads, or attention_head_dim when that is null) */
  heads: number[];
  crossAttentionDim: number[];
  useLinearProjection: boolean;
  timeEmbedDim: number;
  flipSinToCos: boolean;
  freqShift: number;
  normNumGroups: number;
  normEps: number;
  downsamplePadding: number;
  midBlockScaleFactor: number;
  scaleShift: boolean;
  centerInputSample: boolean;
  sampleSize?: number;
}

function num(r: ConfigReader, key: string, def: number): number {
  const v = r.cfg[key] ?? def;
  if (typeof v !== 'number' || !Number.isFinite(v)) r.fail(key, 'a number', v);
  return v as number;
}

/** Parse and validate a diffusers UNet2DConditionModel config.json object. */
export function parseUNetConfig(cfg: ConfigObject, file = 'config.json'): UNetConfig {
  unetParamSpec(cfg, file); // rejects unsupported features and inconsistent block lists
  const r = new ConfigReader(cfg, file);
  r.requireDefault('act_fn', 'silu');
  r.requireDefault('resnet_skip_time_act', false);
  r.requireDefault('time_embedding_act_fn', null);
  r.requireDefault('timestep_post_act', null);
  r.requireDefault('cross_attention_norm', null);
  r.requireDefault('resnet_out_scale_factor', 1);
  r.requireDefault('mid_block_only_cross_attention', null);
  const boc = r.intList('block_out_channels', [320, 640, 1280, 1280]);
  const n = boc.length;
  const downBlockTypes = r.strList('down_block_types', ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D']) as DownBlockType[];
  const upBlockTypes = r.strList('up_block_types', ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D']) as UpBlockType[];
  if (cfg['norm_num_groups'] === null) r.fail('norm_num_groups', 'a positive integer (null is not supported)', null);
  const headsKey = r.has('num_attention_heads') ? 'num_attention_heads' : 'attention_head_dim';
  const heads = r.intPerBlock(headsKey, 8, n);
  const groups = r.int('norm_num_groups', 32);
  for (let i = 0; i < n; i++) {
    if (boc[i] % groups) r.fail('norm_num_groups', `a divisor of every block_out_channels entry (${boc})`, groups);
    if (boc[i] % heads[i]) r.fail(headsKey, `a head count dividing block_out_channels[${i}] = ${boc[i]}`, heads[i]);
  }
  const shift = r.str('resnet_time_scale_shift', 'default');
  const ck = [r.int('conv_in_kernel', 3), r.int('conv_out_kernel', 3)];
  for (const k of ck) if (k % 2 === 0) r.fail('conv_in_kernel', 'an odd kernel size', k);
  return {
    inChannels: r.int('in_channels', 4),
    outChannels: r.int('out_channels', 4),
    blockOutChannels: boc,
    downBlockTypes,
    upBlockTypes,
    hasMidBlock: cfg['mid_block_type'] !== null,
    layersPerBlock: r.intPerBlock('layers_per_block', 2, n),
    transformerLayersPerBlock: r.intPerBlock('transformer_layers_per_block', 1, n),
    heads,
    crossAttentionDim: r.intPerBlock('cross_attention_dim', 1280, n),
    useLinearProjection: r.bool('use_linear_projection', false),
    timeEmbedDim: r.has('time_embedding_dim') ? r.int('time_embedding_dim', 0) : boc[0] * 4,
    flipSinToCos: r.bool('flip_sin_to_cos', true),
    freqShift: num(r, 'freq_shift', 0),
    normNumGroups: groups,
    normEps: num(r, 'norm_eps', 1e-5),
    downsamplePadding: cfg['downsample_padding'] === 0 ? 0 : r.int('downsample_padding', 1),
    midBlockScaleFactor: num(r, 'mid_block_scale_factor', 1),
    scaleShift: shift === 'scale_shift',
    centerInputSample: r.bool('center_input_sample', false),
    sampleSize: typeof cfg['sample_size'] === 'number' ? (cfg['sample_size'] as number) : undefined,
  };
}

// ---------------------------------------------------------------------------------------------
// The model

export interface UNetForwardOptions {
  /** receives every submodule output by diffusers module path (see `Capture`) */
  capture?: Capture;
  /**
   * Gradient checkpointing: each (resnet, attention) unit of a down block, the mid block and each up block
   * keep only their outputs and are recomputed during backward. Parameters used inside receive their
   * gradients in `.grad` (use `backward()`); `grad(y, [params])` only sees gradients of the block inputs.
   * Needs at least one input (sample or encoder states) that requires grad to record anything.
   */
  checkpoint?: boolean;
  /**
   * Storage of the activations (and their gradients) inside the model: 'f16' halves their memory and
   * bandwidth where the device has shader-f16 (arithmetic stays f32); default: the sample's dtype. The sample,
   * the time embedding and the encoder states are cast on entry; the result has the sample's dtype.
   */
  activations?: 'f32' | 'f16';
}

export class UNet2DConditionModel {
  readonly config: UNetConfig;
  constructor(
    config: UNetConfig | ConfigObject,
    readonly params: Params,
  ) {
    this.config = 'blockOutChannels' in config ? (config as UNetConfig) : parseUNetConfig(config as ConfigObject);
  }

  /** 2^(number of downsamplers): sample height and width must be multiples of this. */
  get downscale(): number {
    return 2 ** (this.config.blockOutChannels.length - 1);
  }

  /**
   * sample [B, in_channels, h, w], timesteps (host numbers: one per batch element, or one for all),
   * encoderHiddenStates [B, S, cross_attention_dim] -> the predicted sample [B, out_channels, h, w].
   * All intermediates are freed (or, when recording autodiff, kept only as far as backward needs them).
   */
  forward(sample: Tensor, timesteps: number | readonly number[], encoderHiddenStates: Tensor, opts: UNetForwardOptions = {}): Tensor {
    const c = this.config;
    const P = this.params;
    const cap = opts.capture;
    if (sample.rank !== 4 || sample.shape[1] !== c.inChannels)
      throw new ShapeError(`UNet: sample must be [B, ${c.inChannels}, h, w], got [${sample.shape}]`);
    const [B, , Hs, Ws] = sample.shape;
    if (Hs % this.downscale || Ws % this.downscale)
      throw new ShapeError(`UNet: sample height and width must be multiples of ${this.downscale}, got ${Hs}x${Ws}`);
    if (encoderHiddenStates.rank !== 3 || encoderHiddenStates.shape[0] !== B)
      throw new ShapeError(`UNet: encoder hidden states must be [${B}, S, C], got [${encoderHiddenStates.shape}]`);
    const ts = typeof timesteps === 'number' ? [timesteps] : [...timesteps];
    if (ts.length !== B && ts.length !== 1) throw new ShapeError(`UNet: ${ts.length} timesteps for a batch of ${B}`);
    const tsB = ts.length === B ? ts : new Array(B).fill(ts[0]);
    const { act, out: outDtype } = activationDtypes('UNet', sample, opts.activations);

    const n = c.blockOutChannels.length;
    const g = c.normNumGroups;
    const resOpts: ResnetOptions = { groups: g, eps: c.normEps, scaleShift: c.scaleShift };

    // Run a unit (tidy, or checkpointed unless `ck` is false); captures only on the first run, never in a
    // recomputation.
    const run = (name: string, fn: (cap: Capture | undefined, ...xs: Tensor[]) => Tensor, inputs: Tensor[], ck = true): Tensor => {
      let first = true;
      const f = (...xs: Tensor[]) => {
        const capNow = first ? cap : undefined;
        first = false;
        return fn(capNow, ...xs);
      };
      return opts.checkpoint && ck ? checkpoint(f, inputs, name) : tidy(() => f(...inputs));
    };

    return tidy(() => {
      const temb = Tensor.from(timestepEmbedding(tsB, c.blockOutChannels[0], c.flipSinToCos, c.freqShift), [B, c.blockOutChannels[0]]);
      cap?.('time_proj', temb);
      const emb = tidy(() => linearP(P.sub('time_embedding.linear_2'), silu(linearP(P.sub('time_embedding.linear_1'), temb))));
      cap?.('time_embedding', emb);
      const tembAct = cast(silu(emb), act);
      const ehs = cast(encoderHiddenStates, act);
      const x = cast(sample, act);

      let h = tidy(() => convP(P.sub('conv_in'), c.centerInputSample ? addScalar(scaleOp(x, 2), -1) : x));
      cap?.('conv_in', h);
      const skips: Tensor[] = [h];

      // down
      for (let i = 0; i < n; i++) {
        const bp = P.sub(`down_blocks.${i}`);
        const name = `down_blocks.${i}`;
        const cross = c.downBlockTypes[i] === 'CrossAttnDownBlock2D';
        const tOpts: TransformerOptions = { heads: c.heads[i], groups: g, layers: c.transformerLayersPerBlock[i] };
        for (let j = 0; j < c.layersPerBlock[i]; j++) {
          h = run(`${name}.${j}`, (cp, x, t, e) => {
            let y = resnetBlock(bp.sub(`resnets.${j}`), x, t, resOpts);
            cp?.(`${name}.resnets.${j}`, y);
            if (cross) {
              y = transformer2d(bp.sub(`attentions.${j}`), y, e, tOpts);
              cp?.(`${name}.attentions.${j}`, y);
            }
            return y;
          }, [h, tembAct, ehs]);
          skips.push(h);
        }
        if (i < n - 1) {
          h = run(`${name}.downsamplers.0`, (cp, x) => {
            const y = downsample(bp.sub('downsamplers.0'), x, c.downsamplePadding);
            cp?.(`${name}.downsamplers.0`, y);
            return y;
          }, [h], false); // one conv whose output is kept as a skip anyway: nothing to save
          skips.push(h);
        }
        cap?.(name, h);
      }

      // mid
      if (c.hasMidBlock) {
        const mp = P.sub('mid_block');
        const mid: ResnetOptions = { ...resOpts, outputScale: c.midBlockScaleFactor };
        const tOpts: TransformerOptions = { heads: c.heads[n - 1], groups: g, layers: c.transformerLayersPerBlock[n - 1] };
        h = run('mid_block', (cp, x, t, e) => {
          let y = resnetBlock(mp.sub('resnets.0'), x, t, mid);
          cp?.('mid_block.resnets.0', y);
          y = transformer2d(mp.sub('attentions.0'), y, e, tOpts);
          cp?.('mid_block.attentions.0', y);
          y = resnetBlock(mp.sub('resnets.1'), y, t, mid);
          cp?.('mid_block.resnets.1', y);
          return y;
        }, [h, tembAct, ehs]);
        cap?.('mid_block', h);
      }

      // up
      const rHeads = [...c.heads].reverse();
      const rLayers = [...c.layersPerBlock].reverse();
      const rT = [...c.transformerLayersPerBlock].reverse();
      for (let i = 0; i < n; i++) {
        const bp = P.sub(`up_blocks.${i}`);
        const name = `up_blocks.${i}`;
        const cross = c.upBlockTypes[i] === 'CrossAttnUpBlock2D';
        const tOpts: TransformerOptions = { heads: rHeads[i], groups: g, layers: rT[i] };
        const nl = rLayers[i] + 1;
        const res = skips.splice(skips.length - nl, nl);
        const last = i === n - 1;
        h = run(name, (cp, x, t, e, ...rs) => {
          let y = x;
          for (let j = 0; j < nl; j++) {
            // diffusers pops the most recent skip first
            y = resnetBlock(bp.sub(`resnets.${j}`), concat([y, rs[nl - 1 - j]], 1), t, resOpts);
            cp?.(`${name}.resnets.${j}`, y);
            if (cross) {
              y = transformer2d(bp.sub(`attentions.${j}`), y, e, tOpts);
              cp?.(`${name}.attentions.${j}`, y);
            }
          }
          if (!last) {
            y = upsample(bp.sub('upsamplers.0'), y);
            cp?.(`${name}.upsamplers.0`, y);
          }
          return y;
        }, [h, tembAct, ehs, ...res]);
        cap?.(name, h);
      }

      // out
      return tidy(() => {
        let y: Tensor;
        if (cap) {
          y = groupNormP(P.sub('conv_norm_out'), h, g, c.normEps);
          cap('conv_norm_out', y);
          y = silu(y);
        } else y = groupNormP(P.sub('conv_norm_out'), h, g, c.normEps, true);
        y = convP(P.sub('conv_out'), y);
        cap?.('conv_out', y);
        return cast(y, outDtype);
      });
    });
  }

  dispose() {
    this.params.dispose();
  }
}

/**
 * Load a UNet2DConditionModel folder (config.json + diffusion_pytorch_model.safetensors), checking every
 * tensor name and shape against the config before uploading.
 */
export async function loadUNet(folder: FolderAccess, opts: UploadOptions = {}): Promise<UNet2DConditionModel> {
  const mf = await openModelFolder(folder);
  if (mf.className !== 'UNet2DConditionModel')
    throw new WeightsError('BAD_CONFIG', 'not a UNet2DConditionModel folder', { file: folder.name, expected: 'UNet2DConditionModel', found: mf.className });
  const config = parseUNetConfig(mf.config, `${folder.name}/config.json`);
  try {
    const params = await uploadWeights(mf.weights, opts);
    return new UNet2DConditionModel(config, params);
  } finally {
    await mf.weights.close();
  }
}
