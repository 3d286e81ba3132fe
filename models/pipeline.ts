// A Stable Diffusion pipeline loaded from a diffusers-layout folder (local or over HTTP), plus the CLIP image
// tower SeedSelect scores with. Text-to-image (DDIM + classifier-free guidance) and the `DiffusionParts`
// view that models/seedselect.ts optimizes through. Browser-safe: folders come in as FolderAccess.
import { Tensor, noGrad, tidy } from '../engine/tensor.js';
import { rt } from '../engine/runtime.js';
import { WeightsError } from '../weights-tools/errors.js';
import { joinPath, readConfig, type FolderAccess } from '../weights-tools/model-folder.js';
import type { UploadOptions } from './weights.js';
import { ClipTokenizer } from './tokenizer.js';
import { DdimScheduler } from './ddim.js';
import { loadUNet, type UNet2DConditionModel } from './unet.js';
import { loadVae, type AutoencoderKL } from './vae.js';
import { loadClipTextModel, loadClipVisionModel, type ClipTextModel, type ClipVisionModel } from './clip.js';
import { decodeToImage, sample, type DiffusionParts } from './seedselect.js';

/** A folder inside another folder. */
export function subFolder(folder: FolderAccess, rel: string): FolderAccess {
  return {
    name: joinPath(folder.name, rel),
    readText: (f) => folder.readText(`${rel}/${f}`),
    openSource: (f) => folder.openSource(`${rel}/${f}`),
  };
}

export const OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073];
export const OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711];

export interface LoadOptions extends UploadOptions {
  /** folder of a CLIP vision model (CLIPVisionModelWithProjection or CLIPModel); default: `<model>/image_encoder` when present */
  clip?: FolderAccess;
  onStage?: (stage: string) => void;
  /**
   * Storage of the activations and their gradients inside the UNet, the VAE and the CLIP image tower during
   * SeedSelect: 'f16' halves their memory where the device has shader-f16 (arithmetic stays f32); elsewhere
   * it falls back to 'f32' (see `activations` on the pipeline). Default 'f32'.
   */
  activations?: 'f32' | 'f16';
}

export class StableDiffusionPipeline {
  private constructor(
    readonly name: string,
    readonly unet: UNet2DConditionModel,
    readonly vae: AutoencoderKL,
    readonly textEncoder: ClipTextModel,
    readonly tokenizer: ClipTokenizer,
    readonly scheduler: DdimScheduler,
    readonly clipVision: ClipVisionModel | null,
    readonly clipMean: number[],
    readonly clipStd: number[],
  ) {}

  /** the activation storage that `parts()` uses (SeedSelect's model calls); 'f16' needs shader-f16 */
  activations: 'f32' | 'f16' = 'f32';

  static async load(root: FolderAccess, opts: LoadOptions = {}): Promise<StableDiffusionPipeline> {
    const index = await root.readText('model_index.json');
    if (index === undefined)
      throw new WeightsError('NOT_FOUND', 'not a diffusers pipeline folder', { file: root.name, expected: 'model_index.json with unet/, vae/, text_encoder/, tokenizer/, scheduler/', found: 'no model_index.json' });
    for (const part of ['unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler'])
      if ((await root.readText(part === 'tokenizer' ? 'tokenizer/vocab.json' : part === 'scheduler' ? 'scheduler/scheduler_config.json' : `${part}/config.json`)) === undefined)
        throw new WeightsError('NOT_FOUND', `the pipeline folder is missing its ${part}`, { file: joinPath(root.name, part), expected: `${part}/ with its config`, found: 'nothing' });
    const stage = opts.onStage ?? (() => {});
    stage('tokenizer');
    const vocab = JSON.parse((await root.readText('tokenizer/vocab.json'))!);
    const merges = await root.readText('tokenizer/merges.txt');
    if (merges === undefined) throw new WeightsError('NOT_FOUND', 'tokenizer merges are missing', { file: joinPath(root.name, 'tokenizer/merges.txt') });
    const tokCfgText = await root.readText('tokenizer/tokenizer_config.json');
    const tokCfg = tokCfgText ? JSON.parse(tokCfgText) : {};
    const padToken = typeof tokCfg.pad_token === 'string' ? tokCfg.pad_token : tokCfg.pad_token?.content;
    const tokenizer = ClipTokenizer.fromFiles(vocab, merges, { padToken: padToken === '!' ? 'zero' : 'eos' });
    stage('scheduler');
    const scheduler = DdimScheduler.fromConfig(await readConfig(root, 'scheduler/scheduler_config.json'));
    stage('text_encoder');
    const textEncoder = await loadClipTextModel(subFolder(root, 'text_encoder'), opts);
    stage('vae');
    const vae = await loadVae(subFolder(root, 'vae'), opts);
    stage('unet');
    const unet = await loadUNet(subFolder(root, 'unet'), opts);
    let clipVision: ClipVisionModel | null = null;
    let clipMean = OPENAI_CLIP_MEAN;
    let clipStd = OPENAI_CLIP_STD;
    const clipFolder = opts.clip ?? ((await root.readText('image_encoder/config.json')) !== undefined ? subFolder(root, 'image_encoder') : undefined);
    if (clipFolder) {
      stage('clip_vision');
      clipVision = await loadClipVisionModel(clipFolder, { ...opts, filter: (n) => !n.startsWith('text_model.') && n !== 'text_projection.weight' && n !== 'logit_scale' });
      const pre = await clipFolder.readText('preprocessor_config.json');
      if (pre) {
        const pc = JSON.parse(pre);
        if (Array.isArray(pc.image_mean)) clipMean = pc.image_mean;
        if (Array.isArray(pc.image_std)) clipStd = pc.image_std;
      }
    }
    const pipe = new StableDiffusionPipeline(root.name, unet, vae, textEncoder, tokenizer, scheduler, clipVision, clipMean, clipStd);
    pipe.activations = opts.activations === 'f16' && rt().features.has('shader-f16') ? 'f16' : 'f32';
    return pipe;
  }

  /** The latent scaling factor from the VAE config. */
  get vaeScale(): number {
    return this.vae.config.scalingFactor;
  }
  /** Latent size for an image size (must be a multiple of the VAE and UNet downscales). */
  latentShape(height: number, width: number): number[] {
    const f = 2 ** (this.vae.config.blockOutChannels.length - 1);
    const m = f * this.unet.downscale;
    if (height % m || width % m || height <= 0 || width <= 0)
      throw new RangeError(`image size ${width}x${height} must be a positive multiple of ${m} for this model`);
    return [1, this.unet.config.inChannels, height / f, width / f];
  }

  /** Conditioning for classifier-free guidance: [2, L, C], unconditional (negative prompt) first. */
  encodePrompt(prompt: string, negative = ''): Tensor {
    return noGrad(() =>
      tidy(() => {
        const ids = [...this.tokenizer.encode(negative), ...this.tokenizer.encode(prompt)];
        return this.textEncoder.forward(ids, [2, ids.length / 2]).lastHiddenState;
      }),
    );
  }

  parts(): DiffusionParts {
    const vision = this.clipVision;
    return {
      unet: (s, t, cond) => this.unet.forward(s, t, cond, { activations: this.activations }),
      vaeDecode: (z) => this.vae.decode(z, { activations: this.activations }),
      vaeEncode: (x) => {
        const d = this.vae.encode(x, { activations: this.activations });
        return { mean: d.mean, std: d.std };
      },
      clipImageEmbeds: (px) => {
        if (!vision) throw new WeightsError('NOT_FOUND', 'no CLIP image tower loaded: SeedSelect needs one (pass --clip DIR)', { file: this.name });
        const out = vision.forward(px, { activations: this.activations });
        if (!out.imageEmbeds) throw new WeightsError('MISSING_TENSOR', 'the CLIP vision model has no visual_projection', { file: this.name, tensor: 'visual_projection.weight' });
        return out.imageEmbeds;
      },
      scheduler: this.scheduler,
      vaeScale: this.vaeScale,
      clipSize: vision?.config.imageSize ?? 224,
      clipMean: this.clipMean,
      clipStd: this.clipStd,
    };
  }

  /** Text to image: returns [1, 3, H, W] in [0, 1]. */
  txt2img(zT: Tensor, prompt: string, opts: { negative?: string; steps?: number; guidance?: number } = {}): Tensor {
    const emb = this.encodePrompt(prompt, opts.negative ?? '');
    const parts = this.parts();
    const z = sample(parts, zT, emb, opts.steps ?? 20, opts.guidance ?? 7.5);
    const img = decodeToImage(parts, z);
    emb.dispose();
    if (z !== zT) z.dispose();
    return img;
  }

  dispose() {
    this.unet.dispose();
    this.vae.dispose();
    this.textEncoder.dispose();
    this.clipVision?.dispose();
  }
}

/** Seeded standard-normal noise (Box-Muller over a counter-based generator), the same on every device. */
export function gaussianNoise(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = (seed >>> 0) ^ 0x9e3779b9;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  for (let i = 0; i < n; i += 2) {
    const u = Math.max(next(), 1e-12);
    const v = next();
    const r = Math.sqrt(-2 * Math.log(u));
    out[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return out;
}
