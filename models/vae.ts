// diffusers 0.25 AutoencoderKL, configured only from its config.json, reading the exact diffusers
// parameter names. Module tree:
//   encoder: conv_in -> down_blocks[i] (resnets, downsamplers) -> mid_block (resnet, attention, resnet)
//            -> conv_norm_out -> silu -> conv_out;  quant_conv -> mean / logvar
//   decoder: post_quant_conv; conv_in -> mid_block -> up_blocks[i] (resnets, upsamplers)
//            -> conv_norm_out -> silu -> conv_out
import { Tensor, ShapeError, tidy } from '../engine/tensor.js';
import { checkpoint } from '../engine/autodiff.js';
import { add, mul, clamp, exp, silu, scale as scaleOp, cast } from '../kernels/elementwise.js';
import { split } from '../kernels/shape.js';
import { uploadWeights, type Params, type UploadOptions } from './weights.js';
import { ConfigReader, type ConfigObject } from '../weights-tools/config-reader.js';
import { WeightsError } from '../weights-tools/errors.js';
import { openModelFolder, type FolderAccess } from '../weights-tools/model-folder.js';
import { vaeParamSpec } from '../weights-tools/param-spec.js';
import { activationDtypes } from './nn.js';
import {
  attentionP, convP, downsample, fromTokens, groupNormP, resnetBlock, toTokens, upsample,
  type Capture, type ResnetOptions,
} from './unet.js';

export interface VaeConfig {
  inChannels: number;
  outChannels: number;
  latentChannels: number;
  blockOutChannels: number[];
  layersPerBlock: number;
  normNumGroups: number;
  scalingFactor: number;
  midBlockAddAttention: boolean;
  useQuantConv: boolean;
  usePostQuantConv: boolean;
  sampleSize?: number;
}

/** Parse and validate a diffusers AutoencoderKL config.json object. */
export function parseVaeConfig(cfg: ConfigObject, file = 'config.json'): VaeConfig {
  vaeParamSpec(cfg, file); // block types and lists
  const r = new ConfigReader(cfg, file);
  r.requireDefault('act_fn', 'silu');
  const boc = r.intList('block_out_channels', [64]);
  const groups = r.int('norm_num_groups', 32);
  for (const ch of boc) if (ch % groups) r.fail('norm_num_groups', `a divisor of every block_out_channels entry (${boc})`, groups);
  const sf = cfg['scaling_factor'] ?? 0.18215;
  if (typeof sf !== 'number' || !(sf > 0)) r.fail('scaling_factor', 'a positive number', sf);
  return {
    inChannels: r.int('in_channels', 3),
    outChannels: r.int('out_channels', 3),
    latentChannels: r.int('latent_channels', 4),
    blockOutChannels: boc,
    layersPerBlock: r.int('layers_per_block', 1),
    normNumGroups: groups,
    scalingFactor: sf as number,
    midBlockAddAttention: r.bool('mid_block_add_attention', true),
    useQuantConv: r.bool('use_quant_conv', true),
    usePostQuantConv: r.bool('use_post_quant_conv', true),
    sampleSize: typeof cfg['sample_size'] === 'number' ? (cfg['sample_size'] as number) : undefined,
  };
}

/** The diagonal Gaussian posterior: mean, logvar (clamped to [-30, 20]) and std = exp(logvar / 2). */
export interface LatentDist {
  mean: Tensor;
  logvar: Tensor;
  std: Tensor;
}

export interface VaeForwardOptions {
  /** receives submodule outputs by diffusers module path (`encoder.down_blocks.0`, `quant_conv`, ...); keep() what you need */
  capture?: Capture;
  /**
   * Gradient checkpointing per down/mid/up block: only block outputs are kept and each block is recomputed
   * in backward. Parameters used inside get their gradients in `.grad` (use `backward()`).
   */
  checkpoint?: boolean;
  /**
   * Storage of the activations (and their gradients) inside the model: 'f16' where the device has shader-f16
   * (arithmetic stays f32); default: the input's dtype. The result has the input's dtype.
   */
  activations?: 'f32' | 'f16';
}

const EPS = 1e-6;


/** VAE attention block (diffusers `Attention` with group_norm, one head, residual, rescale 1) on NCHW. */
export function vaeAttention(p: Params, x: Tensor, groups: number): Tensor {
  const [, , H, W] = x.shape;
  // diffusers builds it with attention_head_dim = channels, i.e. one head over all C channels
  const t = toTokens(groupNormP(p.sub('group_norm'), x, groups, EPS));
  return add(fromTokens(attentionP(p, t, t, 1), H, W), x);
}

export class AutoencoderKL {
  readonly config: VaeConfig;
  constructor(
    config: VaeConfig | ConfigObject,
    readonly params: Params,
  ) {
    this.config = 'blockOutChannels' in config ? (config as VaeConfig) : parseVaeConfig(config as ConfigObject);
  }

  get scalingFactor(): number {
    return this.config.scalingFactor;
  }

  /** 2^(number of downsamplers): the image-to-latent size ratio. */
  get downscale(): number {
    return 2 ** (this.config.blockOutChannels.length - 1);
  }

  private get res(): ResnetOptions {
    return { groups: this.config.normNumGroups, eps: EPS };
  }

  /** One block: tidy, or checkpointed when asked (`ck` false for single convs, where it would save nothing). */
  private run(opts: VaeForwardOptions, name: string, fn: (cap: Capture | undefined, x: Tensor) => Tensor, x: Tensor, ck = true): Tensor {
    let first = true;
    const f = (y: Tensor) => {
      const c = first ? opts.capture : undefined;
      first = false;
      return fn(c, y);
    };
    const y = opts.checkpoint && ck ? checkpoint(f, [x], name) : tidy(() => f(x));
    opts.capture?.(name, y);
    return y;
  }

  private midBlock(p: Params, x: Tensor, cap: Capture | undefined, prefix: string): Tensor {
    let y = resnetBlock(p.sub('resnets.0'), x, null, this.res);
    cap?.(`${prefix}.resnets.0`, y);
    if (this.config.midBlockAddAttention) {
      y = vaeAttention(p.sub('attentions.0'), y, this.config.normNumGroups);
      cap?.(`${prefix}.attentions.0`, y);
    }
    y = resnetBlock(p.sub('resnets.1'), y, null, this.res);
    cap?.(`${prefix}.resnets.1`, y);
    return y;
  }

  /** The encoder plus quant_conv: the moments [B, 2 * latent, h, w]. */
  encodeMoments(x: Tensor, opts: VaeForwardOptions = {}): Tensor {
    const c = this.config;
    const P = this.params.sub('encoder');
    const cap = opts.capture;
    if (x.rank !== 4 || x.shape[1] !== c.inChannels) throw new ShapeError(`VAE encode: image must be [B, ${c.inChannels}, H, W], got [${x.shape}]`);
    if (x.shape[2] % this.downscale || x.shape[3] % this.downscale)
      throw new ShapeError(`VAE encode: image height and width must be multiples of ${this.downscale}, got ${x.shape[2]}x${x.shape[3]}`);
    const n = c.blockOutChannels.length;
    const dts = activationDtypes('VAE encode', x, opts.activations);
    return tidy(() => {
      let h = this.run(opts, 'encoder.conv_in', (_, y) => convP(P.sub('conv_in'), y), cast(x, dts.act), false);
      for (let i = 0; i < n; i++) {
        const name = `encoder.down_blocks.${i}`;
        const bp = P.sub(`down_blocks.${i}`);
        h = this.run(opts, name, (cp, y) => {
          for (let j = 0; j < c.layersPerBlock; j++) {
            y = resnetBlock(bp.sub(`resnets.${j}`), y, null, this.res);
            cp?.(`${name}.resnets.${j}`, y);
          }
          if (i < n - 1) {
            y = downsample(bp.sub('downsamplers.0'), y, 0);
            cp?.(`${name}.downsamplers.0`, y);
          }
          return y;
        }, h);
      }
      h = this.run(opts, 'encoder.mid_block', (cp, y) => this.midBlock(P.sub('mid_block'), y, cp, 'encoder.mid_block'), h);
      return tidy(() => {
        let y = groupNormP(P.sub('conv_norm_out'), h, c.normNumGroups, EPS, !cap);
        if (cap) {
          cap('encoder.conv_norm_out', y);
          y = silu(y);
        }
        y = convP(P.sub('conv_out'), y);
        cap?.('encoder.conv_out', y);
        if (c.useQuantConv) {
          y = convP(this.params.sub('quant_conv'), y, { padding: 0 });
          cap?.('quant_conv', y);
        }
        return cast(y, dts.out);
      });
    });
  }

  /** vae.encode(x).latent_dist: image [B, in, H, W] (in [-1, 1]) -> mean, logvar, std [B, latent, H/f, W/f]. */
  encode(x: Tensor, opts: VaeForwardOptions = {}): LatentDist {
    return tidy(() => {
      const moments = this.encodeMoments(x, opts);
      const [mean, lv] = split(moments, 2, 1);
      const logvar = clamp(lv, -30, 20);
      const std = exp(scaleOp(logvar, 0.5));
      return { mean, logvar, std };
    });
  }

  /** latent_dist.sample() with the given standard-normal noise: mean + std * noise. */
  static sample(dist: LatentDist, noise: Tensor): Tensor {
    return tidy(() => add(dist.mean, mul(dist.std, noise)));
  }

  /**
   * vae.decode(z).sample: post_quant_conv then the decoder, [B, latent, h, w] -> [B, out, h*f, w*f].
   * No 1/scaling_factor is applied here (divide the latent by `scalingFactor` first, as pipelines do).
   */
  decode(z: Tensor, opts: VaeForwardOptions = {}): Tensor {
    const c = this.config;
    const P = this.params.sub('decoder');
    const cap = opts.capture;
    if (z.rank !== 4 || z.shape[1] !== c.latentChannels) throw new ShapeError(`VAE decode: latent must be [B, ${c.latentChannels}, h, w], got [${z.shape}]`);
    const n = c.blockOutChannels.length;
    const dts = activationDtypes('VAE decode', z, opts.activations);
    return tidy(() => {
      let h = cast(z, dts.act);
      if (c.usePostQuantConv) h = this.run(opts, 'post_quant_conv', (_, y) => convP(this.params.sub('post_quant_conv'), y, { padding: 0 }), h, false);
      h = this.run(opts, 'decoder.conv_in', (_, y) => convP(P.sub('conv_in'), y), h, false);
      h = this.run(opts, 'decoder.mid_block', (cp, y) => this.midBlock(P.sub('mid_block'), y, cp, 'decoder.mid_block'), h);
      for (let i = 0; i < n; i++) {
        const name = `decoder.up_blocks.${i}`;
        const bp = P.sub(`up_blocks.${i}`);
        h = this.run(opts, name, (cp, y) => {
          for (let j = 0; j < c.layersPerBlock + 1; j++) {
            y = resnetBlock(bp.sub(`resnets.${j}`), y, null, this.res);
            cp?.(`${name}.resnets.${j}`, y);
          }
          if (i < n - 1) {
            y = upsample(bp.sub('upsamplers.0'), y);
            cp?.(`${name}.upsamplers.0`, y);
          }
          return y;
        }, h);
      }
      return tidy(() => {
        let y = groupNormP(P.sub('conv_norm_out'), h, c.normNumGroups, EPS, !cap);
        if (cap) {
          cap('decoder.conv_norm_out', y);
          y = silu(y);
        }
        y = convP(P.sub('conv_out'), y);
        cap?.('decoder.conv_out', y);
        return cast(y, dts.out);
      });
    });
  }

  dispose() {
    this.params.dispose();
  }
}

/** Load an AutoencoderKL folder (config.json + weights), checked against the config before upload. */
export async function loadVae(folder: FolderAccess, opts: UploadOptions = {}): Promise<AutoencoderKL> {
  const mf = await openModelFolder(folder);
  if (mf.className !== 'AutoencoderKL')
    throw new WeightsError('BAD_CONFIG', 'not an AutoencoderKL folder', { file: folder.name, expected: 'AutoencoderKL', found: mf.className });
  const config = parseVaeConfig(mf.config, `${folder.name}/config.json`);
  try {
    return new AutoencoderKL(config, await uploadWeights(mf.weights, opts));
  } finally {
    await mf.weights.close();
  }
}
