// The library entry point for SeedSelect, the same in Node and in browsers: a loaded pipeline, a prompt and
// preprocessed reference images in, generated images, optimized seeds and the loss history out.
// Cancellable (AbortSignal), with per-iteration progress and resumable optimizer state.
import { Tensor, noGrad, tidy } from '../engine/tensor.js';
import { rt } from '../engine/runtime.js';
import { affine } from '../kernels/elementwise.js';
import { decodeToImage, optimizeSeed, referenceConstants, sample, type IterationInfo, type LossOptions, type OptimizeResult, type References } from './seedselect.js';
import { gaussianNoise, type StableDiffusionPipeline } from './pipeline.js';

/** A reference image, preprocessed twice: for CLIP ([3,S,S], short side resized + center crop) and for the VAE ([3,H,W], resized to the generation size). Values in [0, 1]. */
export interface ReferenceImage {
  clip: Float32Array;
  vae: Float32Array;
  name?: string;
}

export interface SeedSelectProgress extends IterationInfo {
  /** which image (0-based) of numImages is being optimized */
  image: number;
  numImages: number;
  /** estimated seconds left for the whole request */
  etaSeconds: number;
}

export interface SeedSelectRequest extends LossOptions {
  pipeline: StableDiffusionPipeline;
  prompt: string;
  negativePrompt?: string;
  references: ReferenceImage[];
  width: number;
  height: number;
  /** integer seed of the starting noise (default 0), or the noise itself */
  seed?: number | Float32Array;
  iterations?: number;
  lr?: number | ((iteration: number) => number);
  weightDecay?: number;
  earlyStopPatience?: number;
  /** more images by bootstrapping: re-optimize from the optimized seed mixed with fresh noise on random subsets of the references */
  numImages?: number;
  onProgress?: (p: SeedSelectProgress) => void | Promise<void>;
  /** called after each iteration with the current seed and optimizer state (for checkpoints) */
  onCheckpoint?: (c: { image: number; iteration: number; z: Float32Array; state: OptimizeResult['optimizerState']; history: IterationInfo[] }) => void | Promise<void>;
  /** called when an image is finished */
  onImage?: (i: number, img: { image: Float32Array; seed: Float32Array; result: OptimizeResult }) => void | Promise<void>;
  signal?: AbortSignal;
  /** continue an interrupted run of image `image` from this state */
  resume?: { image: number; iteration: number; z: Float32Array; optimizer: OptimizeResult['optimizerState']; history: IterationInfo[] };
  /** images already finished (skipped) when resuming */
  startImage?: number;
  /** when resuming at an image > 0: the optimized seed of image 0, which the bootstrapped images start from */
  firstSeed?: Float32Array;
}

export interface SeedSelectImage {
  /** [3, H, W] in [0, 1] */
  image: Float32Array;
  /** the optimized z_T [1, 4, h, w] */
  seed: Float32Array;
  /** reference indices used */
  references: number[];
  history: IterationInfo[];
  stopped: OptimizeResult['stopped'];
  message?: string;
}

export interface SeedSelectResult {
  images: SeedSelectImage[];
  /** image from the starting seed without optimization, for comparison */
  baseline: Float32Array;
  peakBytes: number;
  width: number;
  height: number;
}

export class InputError extends Error {
  readonly userError = true;
  constructor(message: string) {
    super(message);
    this.name = 'InputError';
  }
}

function mulberry(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function buildReferences(req: SeedSelectRequest, idx: number[], clipSize: number): References {
  const { pipeline: pipe, width, height } = req;
  const k = idx.length;
  const clipData = new Float32Array(k * 3 * clipSize * clipSize);
  const vaeData = new Float32Array(k * 3 * width * height);
  idx.forEach((r, j) => {
    clipData.set(req.references[r].clip, j * 3 * clipSize * clipSize);
    vaeData.set(req.references[r].vae, j * 3 * width * height);
  });
  const lat = pipe.latentShape(height, width);
  const seed = typeof req.seed === 'number' ? req.seed : 0;
  return tidy(() => {
    const clip01 = Tensor.from(clipData, [k, 3, clipSize, clipSize]);
    const vae = affine(Tensor.from(vaeData, [k, 3, height, width]), 2, -1);
    // latent_dist.sample() as the official code does, with seeded noise so runs are reproducible
    const noise = Tensor.from(gaussianNoise(k * lat[1] * lat[2] * lat[3], seed + 7919), [k, lat[1], lat[2], lat[3]]);
    const r = referenceConstants(pipe.parts(), clip01, vae, { semantic: req.semantic ?? 'cosine', vaeNoise: noise });
    return r;
  });
}

export async function seedSelect(req: SeedSelectRequest): Promise<SeedSelectResult> {
  const pipe = req.pipeline;
  if (!req.references.length) throw new InputError('SeedSelect needs at least one reference image');
  if (!pipe.clipVision) throw new InputError('SeedSelect needs a CLIP image tower: load the pipeline with a CLIP vision model');
  const { width, height } = req;
  if (width % 8 || height % 8) throw new InputError(`width and height must be multiples of 8, got ${width}x${height}`);
  const latShape = pipe.latentShape(height, width);
  const parts = pipe.parts();
  const S = parts.clipSize;
  req.references.forEach((r, i) => {
    if (r.clip.length !== 3 * S * S) throw new InputError(`reference ${r.name ?? i}: CLIP input must be 3x${S}x${S}, got ${r.clip.length} values`);
    if (r.vae.length !== 3 * width * height) throw new InputError(`reference ${r.name ?? i}: VAE input must be 3x${height}x${width}, got ${r.vae.length} values`);
  });
  const n = latShape.reduce((a, b) => a * b, 1);
  const z0 = typeof req.seed === 'object' ? req.seed : gaussianNoise(n, req.seed ?? 0);
  if (z0.length !== n) throw new InputError(`the seed noise must have ${n} values for ${width}x${height}, got ${z0.length}`);
  const steps = req.steps ?? 20;
  const guidance = req.guidance ?? 7.5;
  const iterations = req.iterations ?? 30;
  const numImages = req.numImages ?? 1;
  const emb = pipe.encodePrompt(req.prompt, req.negativePrompt ?? '').keep();
  rt().resetPeak();
  let peak = 0;
  const render = (z: Float32Array) =>
    noGrad(() =>
      tidy(() => {
        const zt = Tensor.from(z, latShape);
        const lat = sample(parts, zt, emb, steps, guidance);
        return decodeToImage(parts, lat);
      }),
    );
  try {
    const baselineT = render(z0);
    const baseline = (await baselineT.data()) as Float32Array;
    baselineT.dispose();
    const images: SeedSelectImage[] = [];
    const rand = mulberry((typeof req.seed === 'number' ? req.seed : 0) + 1);
    let firstSeed: Float32Array | null = req.firstSeed ?? null;
    if (firstSeed && firstSeed.length !== n) throw new InputError(`firstSeed must have ${n} values, got ${firstSeed.length}`);
    const t0 = performance.now();
    let itersDone = 0;
    for (let i = req.startImage ?? 0; i < numImages; i++) {
      // image 0 uses every reference; later ones a random subset (bootstrapping)
      const all = req.references.map((_, j) => j);
      let idx = all;
      if (i > 0 && all.length > 1) {
        const sz = Math.max(1, all.length - 1);
        idx = [...all].sort(() => rand() - 0.5).slice(0, sz).sort((a, b) => a - b);
      }
      let start = z0;
      if (i > 0) {
        const base = firstSeed ?? z0;
        const fresh = gaussianNoise(n, (typeof req.seed === 'number' ? req.seed : 0) + 1000 * i);
        start = base.map((v, j) => Math.SQRT1_2 * v + Math.SQRT1_2 * fresh[j]);
      }
      const resume = req.resume && req.resume.image === i ? req.resume : undefined;
      const refs = buildReferences(req, idx, S);
      refs.clipCentroid.keep();
      refs.vaeCentroid.keep();
      let result: OptimizeResult;
      try {
        const history = resume ? [...resume.history] : [];
        result = await optimizeSeed(parts, resume ? resume.z : start, latShape, emb, refs, {
          ...req,
          steps,
          guidance,
          iterations: i === 0 ? iterations : Math.max(1, Math.ceil(iterations / 3)),
          resume: resume ? { iteration: resume.iteration, optimizer: resume.optimizer } : undefined,
          onIteration: async (info, z, state) => {
            history.push(info);
            itersDone++;
            peak = Math.max(peak, info.peakBytes);
            const perIt = (performance.now() - t0) / itersDone / 1000;
            const left = iterations - info.iteration - 1 + (numImages - i - 1) * Math.ceil(iterations / 3);
            await req.onProgress?.({ ...info, image: i, numImages, etaSeconds: perIt * left });
            if (req.onCheckpoint) await req.onCheckpoint({ image: i, iteration: info.iteration + 1, z: await z(), state: await state(), history });
          },
        });
        result.history = history;
      } finally {
        refs.clipCentroid.dispose();
        refs.vaeCentroid.dispose();
      }
      if (i === 0) firstSeed = result.z;
      const imgT = render(result.z);
      const image = (await imgT.data()) as Float32Array;
      imgT.dispose();
      const out: SeedSelectImage = { image, seed: result.z, references: idx, history: result.history, stopped: result.stopped, message: result.message };
      images.push(out);
      await req.onImage?.(i, { image, seed: result.z, result });
      if (result.stopped === 'cancelled') break;
    }
    return { images, baseline, peakBytes: Math.max(peak, rt().memory().peakBytes), width, height };
  } finally {
    emb.dispose();
  }
}
