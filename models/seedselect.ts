// SeedSelect (Samuel et al., AAAI 2024): optimize the initial noise z_T of a frozen text-to-image diffusion
// model so that the generated image matches a few reference images, semantically (CLIP image embedding)
// and in appearance (VAE latent). Gradients flow back through the CLIP vision tower, the VAE decoder and
// every UNet call of the DDIM sampler. Each sampler step (and each scored decode + CLIP pass) is a
// checkpoint: only the per-step latents stay alive; everything else is recomputed during backward, so
// peak memory does not grow with the number of steps beyond one latent per step.
import { Tensor, noGrad, tidy, tidyAsync } from '../engine/tensor.js';
import { checkpoint, grad } from '../engine/autodiff.js';
import { rt } from '../engine/runtime.js';
import { Adam, AdamW } from '../engine/optim.js';
import { add, affine, clamp, div, mul, scale, sqrt, sub } from '../kernels/elementwise.js';
import { mean, sum } from '../kernels/reduce.js';
import { concat, reshape, split } from '../kernels/shape.js';
import { resizeBicubic } from '../kernels/resample.js';
import type { DdimScheduler, DdimStepCoeffs } from './ddim.js';

/** What SeedSelect needs from a Stable Diffusion pipeline plus a CLIP image tower. */
export interface DiffusionParts {
  /** model prediction (epsilon or v, as the scheduler expects) for sample [B,4,h,w] at timestep t with conditioning [B,L,C] */
  unet(sample: Tensor, t: number, cond: Tensor): Tensor;
  /** image in about [-1, 1] from an *unscaled* latent (already divided by the scaling factor) */
  vaeDecode(latent: Tensor): Tensor;
  /** latent distribution of images in [-1, 1] */
  vaeEncode(image: Tensor): { mean: Tensor; std: Tensor };
  /** CLIP image embeddings [B, P] of CLIP-normalized pixels [B, 3, S, S] */
  clipImageEmbeds(pixels: Tensor): Tensor;
  scheduler: DdimScheduler;
  vaeScale: number;
  clipSize: number;
  clipMean: number[];
  clipStd: number[];
}

export interface LossOptions {
  /** DDIM steps (default 20) */
  steps?: number;
  /** classifier-free guidance scale (default 7.5) */
  guidance?: number;
  /** weights of the semantic term at the last len(weights) steps (default [0.05, 0.25, 0.7]) */
  stepWeights?: number[];
  /** 'cosine': 1 - cos to the L2-normalized reference centroid (official); 'l2': ||e - centroid|| (unnormalized) */
  semantic?: 'cosine' | 'l2';
  /** clamp the decoded image to [0, 1] before CLIP (official: true) */
  clampDecoded?: boolean;
  semanticWeight?: number;
  appearanceWeight?: number;
  /** checkpoint each step (default true); false keeps every activation (only for tiny models) */
  checkpoint?: boolean;
  /** receives named intermediates (`step{i}.latent_out`, `.decoded`, `.clip_pixel_values`, `.image_embeds`); use with checkpoint false to differentiate w.r.t. them */
  capture?: (name: string, t: Tensor) => void;
}

export const LOSS_DEFAULTS: Required<LossOptions> = {
  steps: 20,
  guidance: 7.5,
  stepWeights: [0.05, 0.25, 0.7],
  semantic: 'cosine',
  clampDecoded: true,
  semanticWeight: 10,
  appearanceWeight: 1,
  checkpoint: true,
  capture: () => {},
};

export interface References {
  /** CLIP centroid [P]: L2-normalized mean embedding ('cosine') or the plain mean ('l2') */
  clipCentroid: Tensor;
  /** mean VAE latent of the references, scaled, [1, 4, h, w] */
  vaeCentroid: Tensor;
}

export interface LossTerms {
  total: Tensor;
  semantic: Tensor;
  appearance: Tensor;
  semanticTerms: Tensor[];
  z0: Tensor;
}

function channelConst(values: number[]): Tensor {
  return Tensor.from(values, [1, values.length, 1, 1]);
}

/** One DDIM step with classifier-free guidance (uncond first in `emb`). */
export function guidedStep(parts: DiffusionParts, z: Tensor, c: DdimStepCoeffs, emb: Tensor, guidance: number): Tensor {
  const eps = parts.unet(concat([z, z], 0), c.t, emb);
  const [eu, ec] = split(eps, 2, 0);
  const e = add(eu, scale(sub(ec, eu), guidance));
  return add(scale(z, c.sample), scale(e, c.model));
}

/** decode -> [0,1] (clamped) -> bicubic to the CLIP size -> CLIP-normalize -> image embeds */
export function clipOfLatent(parts: DiffusionParts, z: Tensor, clampDecoded: boolean, capture?: (name: string, t: Tensor) => void): Tensor {
  const img = parts.vaeDecode(scale(z, 1 / parts.vaeScale));
  capture?.('decoded', img);
  let x = affine(img, 0.5, 0.5);
  if (clampDecoded) x = clamp(x, 0, 1);
  const S = parts.clipSize;
  if (x.shape[2] !== S || x.shape[3] !== S) x = resizeBicubic(x, S, S);
  x = div(sub(x, channelConst(parts.clipMean)), channelConst(parts.clipStd));
  capture?.('clip_pixel_values', x);
  const e = parts.clipImageEmbeds(x);
  capture?.('image_embeds', e);
  return e;
}

function l2norm(e: Tensor): Tensor {
  return sqrt(sum(mul(e, e), -1, true));
}

function semanticTerm(e: Tensor, centroid: Tensor, mode: 'cosine' | 'l2'): Tensor {
  if (mode === 'l2') return reshape(l2norm(sub(e, centroid)), [1]);
  const en = div(e, l2norm(e));
  const cos = sum(mul(en, centroid), -1); // [B]
  return affine(reshape(mean(cos), [1]), -1, 1);
}

/** The SeedSelect loss of the seed `zT` (recorded for autodiff when zT requires grad). */
export function seedSelectLoss(parts: DiffusionParts, zT: Tensor, emb: Tensor, refs: References, options: LossOptions = {}): LossTerms {
  const o = { ...LOSS_DEFAULTS, ...options };
  parts.scheduler.setTimesteps(o.steps);
  const coeffs = parts.scheduler.allStepCoeffs();
  const n = coeffs.length;
  const firstScored = n - o.stepWeights.length;
  if (firstScored < 0) throw new RangeError(`seedSelectLoss: ${o.stepWeights.length} scored steps but only ${n} DDIM steps`);
  const ck = (f: (x: Tensor) => Tensor, x: Tensor, name: string) => (o.checkpoint ? checkpoint(f, [x], name) : f(x));
  let z = zT;
  const terms: Tensor[] = [];
  for (let i = 0; i < n; i++) {
    const c = coeffs[i];
    z = ck((x) => guidedStep(parts, x, c, emb, o.guidance), z, `ddim_step_${i}`);
    o.capture(`step${i}.latent_out`, z);
    if (i >= firstScored) {
      const cap = o.checkpoint ? undefined : (name: string, t: Tensor) => o.capture(`step${i}.${name}`, t);
      const e = ck((x) => clipOfLatent(parts, x, o.clampDecoded, cap), z, `clip_of_step_${i}`);
      terms.push(scale(semanticTerm(e, refs.clipCentroid, o.semantic), o.stepWeights[i - firstScored]));
    }
  }
  const semantic = terms.reduce((a, b) => add(a, b));
  const d = sub(z, refs.vaeCentroid);
  const appearance = reshape(mean(mul(d, d)), [1]);
  const total = add(scale(semantic, o.semanticWeight), scale(appearance, o.appearanceWeight));
  return { total, semantic, appearance, semanticTerms: terms, z0: z };
}

/** Reference constants: CLIP centroid from CLIP-size images in [0,1], VAE centroid from generation-size images in [-1,1]. */
export function referenceConstants(
  parts: DiffusionParts,
  clipImages01: Tensor,
  vaeImages: Tensor,
  opts: { semantic?: 'cosine' | 'l2'; vaeNoise?: Tensor | null } = {},
): References {
  return noGrad(() =>
    tidy(() => {
      const px = div(sub(clipImages01, channelConst(parts.clipMean)), channelConst(parts.clipStd));
      const e = parts.clipImageEmbeds(px);
      let m = mean(e, 0);
      if ((opts.semantic ?? 'cosine') === 'cosine') m = div(m, l2norm(m));
      const dist = parts.vaeEncode(vaeImages);
      // latent_dist.sample() with the given noise, or the mean when no noise is given
      const lat = opts.vaeNoise ? add(dist.mean, mul(dist.std, opts.vaeNoise)) : dist.mean;
      const vc = scale(mean(lat, 0, true), parts.vaeScale);
      return { clipCentroid: m, vaeCentroid: vc };
    }),
  );
}

/** Plain DDIM sampling with CFG from z_T, returning the final latent (no autodiff). */
export function sample(parts: DiffusionParts, zT: Tensor, emb: Tensor, steps: number, guidance: number): Tensor {
  return noGrad(() => {
    parts.scheduler.setTimesteps(steps);
    let z = zT;
    for (const c of parts.scheduler.allStepCoeffs()) {
      const prev = z;
      z = tidy(() => guidedStep(parts, prev, c, emb, guidance));
      if (prev !== zT) prev.dispose();
    }
    return z;
  });
}

/** Decode a latent to an image in [0,1], [B,3,H,W]. */
export function decodeToImage(parts: DiffusionParts, z: Tensor): Tensor {
  return noGrad(() => tidy(() => clamp(affine(parts.vaeDecode(scale(z, 1 / parts.vaeScale)), 0.5, 0.5), 0, 1)));
}

export interface IterationInfo {
  iteration: number;
  iterations: number;
  total: number;
  semantic: number;
  appearance: number;
  lr: number;
  ms: number;
  peakBytes: number;
}

export interface OptimizeOptions extends LossOptions {
  iterations?: number;
  /** learning rate per iteration (default: 0.1, then 0.01 from iteration 3, as the official code) */
  lr?: number | ((iteration: number) => number);
  weightDecay?: number;
  optimizer?: 'adamw' | 'adam';
  /** stop when the total loss has risen for more than this many consecutive iterations (paper: 3); off when undefined */
  earlyStopPatience?: number;
  /** after each iteration: its losses, the current seed and the optimizer state (for checkpoints) */
  onIteration?: (info: IterationInfo, z: () => Promise<Float32Array>, state: () => Promise<OptimizerState>) => void | Promise<void>;
  signal?: AbortSignal;
  /** resume: optimizer state and the iteration to start from */
  resume?: { iteration: number; optimizer: { step: number; m: Float32Array[]; v: Float32Array[] } };
}

export type OptimizerState = { step: number; m: Float32Array[]; v: Float32Array[] };

export interface OptimizeResult {
  z: Float32Array;
  history: IterationInfo[];
  stopped: 'done' | 'early-stop' | 'cancelled' | 'non-finite';
  message?: string;
  optimizerState: { step: number; m: Float32Array[]; v: Float32Array[] };
}

export const officialLr = (it: number) => (it < 3 ? 0.1 : 0.01);

/** Optimize the seed. `zT` is the starting noise (host data, shape [1,4,h,w]). */
export async function optimizeSeed(
  parts: DiffusionParts,
  zT: Float32Array,
  shape: number[],
  emb: Tensor,
  refs: References,
  options: OptimizeOptions = {},
): Promise<OptimizeResult> {
  const iterations = options.iterations ?? 30;
  const lrOf = typeof options.lr === 'function' ? options.lr : options.lr !== undefined ? () => options.lr as number : officialLr;
  const z = Tensor.from(zT, shape).requireGrad().keep();
  const opt =
    (options.optimizer ?? 'adamw') === 'adamw'
      ? new AdamW([z], { lr: lrOf(0), weightDecay: options.weightDecay ?? 0.01 })
      : new Adam([z], { lr: lrOf(0), weightDecay: options.weightDecay ?? 0 });
  const start = options.resume?.iteration ?? 0;
  if (options.resume) opt.importState(options.resume.optimizer);
  const history: IterationInfo[] = [];
  let lastGood: Float32Array = Float32Array.from(zT);
  let stopped: OptimizeResult['stopped'] = 'done';
  let message: string | undefined;
  let rises = 0;
  let prevTotal = Infinity;
  try {
    for (let it = start; it < iterations; it++) {
      if (options.signal?.aborted) {
        stopped = 'cancelled';
        break;
      }
      const t0 = performance.now();
      rt().resetPeak();
      const lr = lrOf(it);
      const [total, semantic, appearance] = await tidyAsync(async () => {
        const l = seedSelectLoss(parts, z, emb, refs, options);
        const [g] = grad(l.total, [z]);
        const vals = await Promise.all([l.total.item(), l.semantic.item(), l.appearance.item()]);
        if (vals.every(Number.isFinite) && (await finite(g))) {
          opt.lr = lr;
          opt.step([g]);
        }
        return vals;
      });
      if (![total, semantic, appearance].every(Number.isFinite)) {
        stopped = 'non-finite';
        message = `the loss became ${total} at iteration ${it}; kept the last good seed (before iteration ${it})`;
        break;
      }
      const info: IterationInfo = {
        iteration: it,
        iterations,
        total,
        semantic,
        appearance,
        lr,
        ms: performance.now() - t0,
        peakBytes: rt().memory().peakBytes,
      };
      history.push(info);
      lastGood = (await z.data()) as Float32Array;
      await options.onIteration?.(info, async () => lastGood, () => opt.exportState());
      rises = total > prevTotal ? rises + 1 : 0;
      prevTotal = total;
      if (options.earlyStopPatience !== undefined && rises > options.earlyStopPatience) {
        stopped = 'early-stop';
        message = `the total loss rose for ${rises} consecutive iterations`;
        break;
      }
    }
    return { z: lastGood, history, stopped, message, optimizerState: await opt.exportState() };
  } finally {
    opt.dispose();
    z.dispose();
  }
}

async function finite(t: Tensor): Promise<boolean> {
  const s = await noGrad(() => sum(mul(t, t))).item();
  return Number.isFinite(s);
}
