// `seedselect generate`: SeedSelect from the command line. Loads a diffusers pipeline folder and a CLIP
// image tower, preprocesses the references, optimizes the seed with progress (a bar on a TTY, plain lines
// otherwise), and writes PNGs, the optimized seeds (safetensors), run.json and the loss curve. Checkpoints
// every iteration; running the same command again resumes an interrupted run.
import type { Command } from 'commander';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { createRequire } from 'node:module';
import cliProgress from 'cli-progress';
import { adapterName, init, rt } from '../../engine/index.js';
import { nodeFolder, openSafetensorsFile } from '../../weights-tools/node-source.js';
import { StableDiffusionPipeline } from '../../models/pipeline.js';
import { seedSelect, type ReferenceImage, type SeedSelectProgress } from '../../models/api.js';
import { clipInput, loadImage, saveLossCurve, savePng, vaeInput } from '../images.js';
import { exists, loadState, readRunJson, saveSeed, saveState, writeJsonAtomic, type RunJson } from '../run-folder.js';
import { UserError } from '../errors.js';
import { WeightsError } from '../../weights-tools/errors.js';

export interface GenerateOptions {
  model: string;
  clip?: string;
  prompt: string;
  negative?: string;
  refs: string[];
  out: string;
  seed: number;
  steps: number;
  guidance: number;
  iterations: number;
  lr?: number;
  weightDecay: number;
  width?: number;
  height?: number;
  numImages: number;
  earlyStop?: number | boolean;
  f16?: boolean;
  /** activations and their gradients in f16 inside the models (where the device has shader-f16) */
  f16Activations?: boolean;
  resume: boolean;
  quiet?: boolean;
  /** library use: cancel like Ctrl-C (the run stays resumable) */
  signal?: AbortSignal;
  /** an already loaded pipeline for `model` (augment loads it once for all classes); not disposed here */
  pipeline?: StableDiffusionPipeline;
}

/** Load a pipeline folder (and an optional separate CLIP tower) for `generate`, with user-facing errors. */
export async function loadForGenerate(
  model: string,
  clip: string | undefined,
  f16: boolean | undefined,
  log: (m: string) => void,
  f16Activations = false,
): Promise<StableDiffusionPipeline> {
  try {
    const pipe = await StableDiffusionPipeline.load(nodeFolder(model), {
      clip: clip ? nodeFolder(resolve(clip)) : undefined,
      f16,
      activations: f16Activations ? 'f16' : 'f32',
      onStage: (s) => log(`loading ${s}`),
    });
    if (f16Activations && pipe.activations !== 'f16') log('--f16-activations: this device has no shader-f16, so activations stay f32');
    return pipe;
  } catch (e) {
    if (e instanceof WeightsError) throw new UserError(e.message);
    throw e;
  }
}

const int = (name: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n)) throw new UserError(`--${name} must be an integer, got "${v}"`);
  return n;
};
const num = (name: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new UserError(`--${name} must be a number, got "${v}"`);
  return n;
};

export function register(program: Command) {
  program
    .command('generate')
    .description('optimize the seed of a diffusion model so that it generates a rare concept shown in a few reference images')
    .requiredOption('--model <dir>', 'diffusers pipeline folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)')
    .option('--clip <dir>', 'CLIP vision model folder (CLIPVisionModelWithProjection or CLIPModel); default <model>/image_encoder')
    .requiredOption('--prompt <text>', 'the prompt')
    .option('--negative <text>', 'negative prompt', '')
    .requiredOption('--refs <files...>', 'reference images (jpg/png/webp, any size)')
    .requiredOption('--out <dir>', 'output folder (created; an unfinished run there is resumed)')
    .option('--seed <n>', 'seed of the starting noise', int('seed'), 0)
    .option('--steps <n>', 'DDIM steps', int('steps'), 20)
    .option('--guidance <x>', 'classifier-free guidance scale', num('guidance'), 7.5)
    .option('--iterations <n>', 'optimization iterations', int('iterations'), 30)
    .option('--lr <x>', 'constant learning rate (default: 0.1, then 0.01 from iteration 3)', num('lr'))
    .option('--weight-decay <x>', 'AdamW weight decay', num('weight-decay'), 0.01)
    .option('--width <n>', 'image width (multiple of 8; default: the model\'s native size)', int('width'))
    .option('--height <n>', 'image height (multiple of 8)', int('height'))
    .option('--num-images <n>', 'images to generate (bootstrapping from the optimized seed)', int('num-images'), 1)
    .option('--early-stop [patience]', 'stop when the loss rose for more than `patience` iterations (default 3)')
    .option('--f16', 'keep weights in f16 on the GPU when the device supports it')
    .option('--f16-activations', 'keep activations and their gradients in f16 inside the models when the device supports it (about half their memory; arithmetic stays f32)')
    .option('--no-resume', 'start over even if --out holds an unfinished run')
    .option('--quiet', 'no progress output')
    .action(async (o: GenerateOptions) => {
      await generate(o);
    });
}

function fmtBytes(b: number) {
  return b > 1 << 30 ? `${(b / (1 << 30)).toFixed(2)} GiB` : `${(b / (1 << 20)).toFixed(1)} MiB`;
}

/** The z_T saved for a finished image (undefined when the file is missing). */
async function readSeed(path: string): Promise<Float32Array | undefined> {
  if (!(await exists(path))) return undefined;
  const f = await openSafetensorsFile(path);
  try {
    return await f.readF32('z_T');
  } finally {
    await f.close();
  }
}

export async function generate(o: GenerateOptions): Promise<RunJson> {
  if (!o.refs?.length) throw new UserError('--refs needs at least one reference image');
  if (o.numImages < 1) throw new UserError('--num-images must be at least 1');
  if (o.iterations < 0) throw new UserError('--iterations must be >= 0');
  if (o.steps < 3) throw new UserError('--steps must be at least 3 (the last three steps are scored)');
  for (const f of ['width', 'height'] as const)
    if (o[f] !== undefined && (o[f]! <= 0 || o[f]! % 8)) throw new UserError(`--${f} must be a positive multiple of 8, got ${o[f]}`);
  const modelDir = resolve(o.model);
  if (!(await exists(modelDir))) throw new UserError(`--model: folder "${modelDir}" does not exist`);
  if (o.clip && !(await exists(resolve(o.clip)))) throw new UserError(`--clip: folder "${resolve(o.clip)}" does not exist`);
  const refs = await Promise.all(o.refs.map((r) => loadImage(resolve(r))));
  const out = resolve(o.out);
  await mkdir(out, { recursive: true });
  const log = (m: string) => !o.quiet && process.stderr.write(`${m}\n`);

  await init();
  log(`device: ${adapterName(rt().gpu.adapterInfo)} (${rt().gpu.adapterClass})`);
  const pipe = o.pipeline ?? (await loadForGenerate(modelDir, o.clip, o.f16, log, !!o.f16Activations));
  const owned = !o.pipeline;
  if (!pipe.clipVision) throw new UserError(`no CLIP image tower: pass --clip DIR (a CLIPVisionModelWithProjection or CLIPModel folder), or put one in ${modelDir}/image_encoder`);
  const f = 2 ** (pipe.vae.config.blockOutChannels.length - 1);
  const native = (pipe.unet.config.sampleSize ?? 64) * f;
  const width = o.width ?? native;
  const height = o.height ?? native;
  try {
    pipe.latentShape(height, width);
  } catch (e) {
    throw new UserError(`--width/--height: ${(e as Error).message}`);
  }
  const S = pipe.clipVision.config.imageSize;
  const references: ReferenceImage[] = await Promise.all(refs.map(async (r) => ({ name: r.source, clip: await clipInput(r, S), vae: await vaeInput(r, width, height) })));
  const latShape = pipe.latentShape(height, width);

  const options = {
    model: modelDir, clip: o.clip ? resolve(o.clip) : null, prompt: o.prompt, negative: o.negative ?? '', refs: refs.map((r) => r.source),
    seed: o.seed, steps: o.steps, guidance: o.guidance, iterations: o.iterations, lr: o.lr ?? 'official (0.1, 0.01 from iteration 3)',
    weightDecay: o.weightDecay, width, height, numImages: o.numImages, earlyStop: o.earlyStop ?? null, f16: !!o.f16,
    // only when set, so that runs begun before the option existed still resume
    ...(o.f16Activations ? { f16Activations: true } : {}),
  };
  const prev = o.resume ? await readRunJson(out) : undefined;
  let resume;
  let startImage = 0;
  let run: RunJson;
  const pkg = createRequire(import.meta.url)('../../package.json') as { version: string };
  if (prev && prev.status === 'running' && JSON.stringify(prev.options) === JSON.stringify(options) && (await exists(join(out, 'state.safetensors')))) {
    const st = await loadState(out);
    const img = prev.images[st.image] ?? { history: [] };
    resume = { image: st.image, iteration: st.iteration, z: st.z, optimizer: st.optimizer, history: img.history.slice(0, st.iteration) };
    startImage = st.image;
    run = prev;
    log(`resuming image ${st.image} at iteration ${st.iteration}`);
  } else {
    if (prev && prev.status === 'running') log('the unfinished run in --out used other options: starting over');
    run = {
      version: pkg.version,
      status: 'running',
      options,
      images: [],
      timings: { startedAt: new Date().toISOString(), updatedAt: new Date().toISOString(), seconds: 0 },
      peakBytes: 0,
      device: { ...rt().gpu.adapterInfo, adapterClass: rt().gpu.adapterClass, features: [...rt().gpu.features] },
      versions: { node: process.version, seedselect: pkg.version },
    };
  }
  const t0 = performance.now() - run.timings.seconds * 1000;
  const save = () => {
    run.timings.updatedAt = new Date().toISOString();
    run.timings.seconds = (performance.now() - t0) / 1000;
    return writeJsonAtomic(join(out, 'run.json'), run);
  };
  await save();

  const tty = process.stderr.isTTY && !o.quiet;
  const bar = tty
    ? new cliProgress.SingleBar(
        { format: 'image {image} |{bar}| {value}/{total} it | loss {loss} (sem {sem}, app {app}) | ETA {etaText}', hideCursor: true, stream: process.stderr },
        cliProgress.Presets.shades_classic,
      )
    : null;
  let barStarted = false;
  const controller = new AbortController();
  const onSig = () => {
    log('\ninterrupted: finishing the current iteration, then saving (run the same command to resume)');
    controller.abort();
  };
  process.once('SIGINT', onSig);
  o.signal?.addEventListener('abort', () => controller.abort());
  const history = new Map<number, RunJson['images'][number]>();
  run.images.forEach((im, i) => history.set(i, im));
  const entry = (i: number) => {
    if (!history.has(i)) history.set(i, { index: i, references: [], history: [] });
    return history.get(i)!;
  };
  try {
    const result = await seedSelect({
      pipeline: pipe,
      prompt: o.prompt,
      negativePrompt: o.negative,
      references,
      width,
      height,
      seed: o.seed,
      steps: o.steps,
      guidance: o.guidance,
      iterations: o.iterations,
      lr: o.lr,
      weightDecay: o.weightDecay,
      numImages: o.numImages,
      earlyStopPatience: o.earlyStop === undefined || o.earlyStop === false ? undefined : o.earlyStop === true ? 3 : Number(o.earlyStop),
      signal: controller.signal,
      resume,
      startImage,
      firstSeed: startImage > 0 ? await readSeed(join(out, 'seed-00.safetensors')) : undefined,
      onProgress: (p: SeedSelectProgress) => {
        const vals = { image: `${p.image + 1}/${p.numImages}`, loss: p.total.toFixed(4), sem: p.semantic.toFixed(4), app: p.appearance.toFixed(4), etaText: `${Math.round(p.etaSeconds)}s` };
        if (bar) {
          if (!barStarted) {
            bar.start(p.iterations, p.iteration + 1, vals);
            barStarted = true;
          } else bar.update(p.iteration + 1, vals);
          if (p.iteration + 1 >= p.iterations) {
            bar.stop();
            barStarted = false;
          }
        } else
          log(`image ${vals.image} iteration ${p.iteration + 1}/${p.iterations} loss ${vals.loss} semantic ${vals.sem} appearance ${vals.app} (${(p.ms / 1000).toFixed(1)} s, peak ${fmtBytes(p.peakBytes)}, ETA ${vals.etaText})`);
      },
      onCheckpoint: async (c) => {
        const e = entry(c.image);
        e.history = c.history;
        run.images = [...history.values()];
        run.current = { image: c.image, iteration: c.iteration };
        run.peakBytes = Math.max(run.peakBytes, ...c.history.map((h) => h.peakBytes));
        await saveState(out, c.image, c.iteration, c.z, latShape, c.state);
        await save();
      },
      onImage: async (i, img) => {
        const e = entry(i);
        e.file = `image-${String(i).padStart(2, '0')}.png`;
        e.seed = `seed-${String(i).padStart(2, '0')}.safetensors`;
        e.history = img.result.history;
        e.stopped = img.result.stopped;
        e.message = img.result.message;
        await savePng(img.image, width, height, join(out, e.file));
        await saveSeed(join(out, e.seed), img.seed, latShape, { prompt: o.prompt, seed: String(o.seed), image: String(i) });
        run.images = [...history.values()];
        if (img.result.message) log(img.result.message);
        await save();
      },
    });
    bar?.stop();
    await savePng(result.baseline, width, height, join(out, 'before.png'));
    const h0 = run.images[0]?.history ?? [];
    if (h0.length) await saveLossCurve(h0, join(out, 'loss.png'));
    const stops = result.images.map((i) => i.stopped);
    run.status = controller.signal.aborted ? 'cancelled' : stops.includes('non-finite') ? 'non-finite' : stops.includes('early-stop') ? 'early-stop' : 'done';
    if (run.status === 'cancelled') run.status = 'running'; // resumable
    run.peakBytes = Math.max(run.peakBytes, result.peakBytes);
    await save();
    log(`wrote ${out} (${run.images.length} image(s), before.png, loss.png, run.json); peak GPU memory ${fmtBytes(run.peakBytes)}`);
    if (stops.includes('non-finite')) {
      // f16 activations overflow above 65504: the likeliest cause when they are on
      const hint = pipe.activations === 'f16' ? '; the models ran with f16 activations, which overflow above 65504: try without --f16-activations' : '';
      const e = new Error(`the loss became non-finite; kept the last good seed (see ${join(out, 'run.json')})${hint}`);
      (e as { exitCode?: number }).exitCode = 2;
      throw e;
    }
    return run;
  } finally {
    process.off('SIGINT', onSig);
    bar?.stop();
    if (owned) pipe.dispose();
  }
}
