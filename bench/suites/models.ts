// Whole models at their real sizes with random weights (weights-tools/model-maker.ts), built once into
// .cache/bench-models/ (gitignored): the SD 1.5 and SD 2.1-base UNets (forward, and forward+backward to the
// sample with checkpointing, at a 32x32 latent with the CFG batch of 2), the VAE decoder (32x32 latent ->
// 256x256 image), the CLIP ViT-H/14 image tower at 224x224, and one SeedSelect iteration (loss + gradient
// of the seed through the checkpointed DDIM chain, VAE decoder and CLIP tower) on presets/tiny-sd and on the
// SD 2.1-base architecture.
//
// Opt-in: these cases take minutes each on a CPU adapter, so they run only when BENCH_MODELS=1 or the
// --filter expression mentions "models" (e.g. `npm run bench -- --filter models --iterations 1 --time 0`);
// otherwise every case skips itself. Each timed call resets the engine's peak-memory counter; the peak
// of live GPU bytes (weights included) is appended to the row's shape after the run and printed.
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tensor, grad, noGrad, rt, tidy } from '../../engine/index.js';
import { makeModel, presetsDir } from '../../weights-tools/model-maker.js';
import { nodeFolder } from '../../weights-tools/node-source.js';
import { loadUNet, type UNet2DConditionModel } from '../../models/unet.js';
import { loadVae, type AutoencoderKL } from '../../models/vae.js';
import { loadClipVisionModelFromDir, type ClipVisionModel } from '../../models/clip.js';
import { DdimScheduler } from '../../models/ddim.js';
import { OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, StableDiffusionPipeline, gaussianNoise } from '../../models/pipeline.js';
import { clipOfLatent, seedSelectLoss, type DiffusionParts, type References } from '../../models/seedselect.js';
import { randn, type BenchCase, type BenchSuite } from '../lib.js';

function filterArg(): string {
  const i = process.argv.indexOf('--filter');
  return i >= 0 ? (process.argv[i + 1] ?? '') : '';
}
const ENABLED = process.env.BENCH_MODELS === '1' || /models/i.test(filterArg());
let warnedDisabled = false;

const CACHE = fileURLToPath(new URL('../../.cache/bench-models/', import.meta.url));
const DONE = '.bench-complete';
const GiB = 1024 ** 3;
const gib = (b: number) => (b / GiB).toFixed(2);

/** Build a random-weight model once; a marker file tells a finished build from an interrupted one. */
async function built(name: string, config: string, extra: { tokenizerDir?: string } = {}): Promise<string> {
  const out = join(CACHE, name);
  if (existsSync(join(out, DONE))) return out;
  await rm(out, { recursive: true, force: true });
  const t0 = performance.now();
  console.log(`  building ${name} (random weights) in ${out} ...`);
  await makeModel({ config, out, seed: 0, ...extra });
  await writeFile(join(out, DONE), `${new Date().toISOString()}\n`);
  console.log(`  built ${name} in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  return out;
}

/**
 * The VAE with `mid_block_add_attention: false` (same weights less those of the mid-block attentions). The
 * decoder's mid-block attention is one head of dim 512, and every attention variant unrolls its shader over
 * D/4 vec4 registers: on lavapipe the 'subgroup' forward fails to parse ("maximum parser recursive depth
 * reached" on a 128-deep fma chain), and a forward+backward with 'register' (5 min) or 'shared' (200 s) did
 * not finish. Head dims above 160 now take an unfused path (kernels/attention.ts), so the real decoder runs;
 * this copy (BENCH_VAE_MID_ATTN=0) reproduces the rows measured before that fix.
 */
async function vaeWithoutMidAttention(): Promise<string> {
  const src = await built('sd-2.1-base-vae', join(presetsDir(), 'sd-2.1-base', 'vae'));
  const out = join(CACHE, 'sd-2.1-base-vae-no-mid-attn');
  if (existsSync(join(out, DONE))) return out;
  await rm(out, { recursive: true, force: true });
  await mkdir(out, { recursive: true });
  const cfg = JSON.parse(await readFile(join(src, 'config.json'), 'utf8'));
  await writeFile(join(out, 'config.json'), JSON.stringify({ ...cfg, mid_block_add_attention: false }, null, 2));
  // the loader rejects tensors the config does not use: copy the file without the mid-block attentions
  const file = await readFile(join(src, 'diffusion_pytorch_model.safetensors'));
  const hlen = Number(file.readBigUInt64LE(0));
  const header = JSON.parse(file.subarray(8, 8 + hlen).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const kept: typeof header = {};
  const parts: Buffer[] = [];
  let off = 0;
  for (const [k, v] of Object.entries(header)) {
    if (k === '__metadata__') kept[k] = v;
    else if (!k.includes('mid_block.attentions.')) {
      const [a, b] = v.data_offsets;
      parts.push(file.subarray(8 + hlen + a, 8 + hlen + b));
      kept[k] = { ...v, data_offsets: [off, off + b - a] };
      off += b - a;
    }
  }
  let h = Buffer.from(JSON.stringify(kept), 'utf8');
  h = Buffer.concat([h, Buffer.alloc((8 - (h.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  await writeFile(join(out, 'diffusion_pytorch_model.safetensors'), Buffer.concat([len, h, ...parts]));
  await writeFile(join(out, DONE), `${new Date().toISOString()}\n`);
  return out;
}
/** the real decoder (its 512-wide attention head takes the unfused path); BENCH_VAE_MID_ATTN=0 drops that block */
const VAE_MID_ATTN = process.env.BENCH_VAE_MID_ATTN !== '0';
const VAE_NOTE = VAE_MID_ATTN ? '' : ' (decoder without mid-block attention)';
/** BENCH_F16=1: keep matmul/conv weights in f16 on the GPU (when the adapter has shader-f16), as `--f16` does */
const F16 = process.env.BENCH_F16 === '1';
const W = { f16: F16 };
/** what BENCH_F16 did on this adapter, for the row's shape */
const weightsNote = () =>
  (!F16 ? '' : rt().features.has('shader-f16') ? ', f16 weights' : ', f32 weights (BENCH_F16=1 but the adapter has no shader-f16)') +
  (!F16_ACT ? '' : act() === 'f16' ? ', f16 activations' : ', f32 activations (BENCH_F16_ACT=1 but the adapter has no shader-f16)');
/** BENCH_F16_ACT=1: activations (and their gradients) in f16 inside the models, as `--f16-activations` does */
const F16_ACT = process.env.BENCH_F16_ACT === '1';
const act = (): 'f32' | 'f16' => (F16_ACT && rt().features.has('shader-f16') ? 'f16' : 'f32');

// ---------------- loaded models, shared between cases ----------------
type Loaded = UNet2DConditionModel | AutoencoderKL | ClipVisionModel | StableDiffusionPipeline;
const loaded = new Map<string, Loaded>();
const LOADERS: Record<string, () => Promise<Loaded>> = {
  'unet-sd-1.5': async () => loadUNet(nodeFolder(await built('sd-1.5-unet', join(presetsDir(), 'sd-1.5', 'unet'))), W),
  'unet-sd-2.1-base': async () => loadUNet(nodeFolder(await built('sd-2.1-base-unet', join(presetsDir(), 'sd-2.1-base', 'unet'))), W),
  vae: async () =>
    loadVae(nodeFolder(VAE_MID_ATTN ? await built('sd-2.1-base-vae', join(presetsDir(), 'sd-2.1-base', 'vae')) : await vaeWithoutMidAttention()), W),
  'clip-vit-h-14': async () => loadClipVisionModelFromDir(await built('clip-vit-h-14', 'clip-vit-h-14'), W),
  'tiny-sd': async () =>
    StableDiffusionPipeline.load(nodeFolder(await built('tiny-sd', 'tiny-sd', { tokenizerDir: join(presetsDir(), 'clip-tokenizer') }))),
};

/** Load what a case needs, freeing every other loaded model first (the big ones do not all fit at once). */
async function need<K extends string>(...keys: K[]): Promise<Loaded[]> {
  for (const [k, m] of loaded)
    if (!keys.includes(k as K)) {
      m.dispose();
      loaded.delete(k);
    }
  rt().releasePool();
  for (const k of keys) {
    if (loaded.has(k)) continue;
    const t0 = performance.now();
    loaded.set(k, await LOADERS[k]());
    console.log(`  loaded ${k} in ${((performance.now() - t0) / 1000).toFixed(0)} s (live GPU ${gib(rt().memory().liveBytes)} GiB)`);
  }
  return keys.map((k) => loaded.get(k)!);
}

// ---------------- a case that records peak memory ----------------
const peaks = new Map<string, { peak: number; weights: number }>();

/** A model case: `prepare` loads and allocates, returns the work; each call is timed with the peak of live bytes. */
function modelCase(name: string, shape: string, pass: BenchCase['pass'], prepare: () => Promise<{ run: () => Tensor | Tensor[] | void; free?: () => void }>): BenchCase {
  let free: (() => void) | undefined;
  const c: BenchCase = {
    name,
    shape,
    pass,
    async setup() {
      if (!ENABLED) {
        if (!warnedDisabled) console.warn('models: skipped (opt-in: BENCH_MODELS=1 or a --filter that mentions "models")');
        warnedDisabled = true;
        return null;
      }
      const p = await prepare();
      free = p.free;
      await rt().sync();
      return async () => {
        const weights = rt().memory().liveBytes;
        rt().resetPeak();
        const out = p.run();
        if (out instanceof Tensor) out.dispose();
        else if (Array.isArray(out)) out.forEach((t) => t.dispose());
        await rt().sync();
        const peak = rt().memory().peakBytes;
        peaks.set(name, { peak, weights });
        c.shape = `${shape}${weightsNote()}; peak ${gib(peak)} GiB (weights+inputs ${gib(weights)})`;
        console.log(`    ${name}: peak ${gib(peak)} GiB of live GPU buffers, ${gib(weights)} GiB live before the call`);
      };
    },
    teardown() {
      free?.();
      free = undefined;
    },
  };
  return c;
}

// ---------------- UNet ----------------
const LATENT = 32; // 256x256 images
const T = 500;

function unetCases(key: 'unet-sd-1.5' | 'unet-sd-2.1-base', label: string): BenchCase[] {
  const shapeOf = (u: UNet2DConditionModel) => `2x4x${LATENT}x${LATENT}, ctx 2x77x${u.config.crossAttentionDim[0]}`;
  const inputs = (u: UNet2DConditionModel) => {
    const ctxDim = u.config.crossAttentionDim[0];
    const s = Tensor.from(gaussianNoise(2 * 4 * LATENT * LATENT, 1), [2, 4, LATENT, LATENT]);
    const ctx = Tensor.from(randn(2 * 77 * ctxDim, 2), [2, 77, ctxDim]);
    const g = Tensor.from(randn(2 * 4 * LATENT * LATENT, 3), [2, 4, LATENT, LATENT]);
    return { s, ctx, g, free: () => [s, ctx, g].forEach((t) => t.dispose()) };
  };
  const shape = `2x4x${LATENT}x${LATENT} latent (CFG batch), t=${T}`;
  return [
    modelCase(`unet ${label}`, shape, 'fwd', async () => {
      const [u] = (await need(key)) as [UNet2DConditionModel];
      const { s, ctx, free } = inputs(u);
      console.log(`    unet ${label}: ${shapeOf(u)}`);
      return { run: () => noGrad(() => u.forward(s, T, ctx, { activations: act() })), free };
    }),
    modelCase(`unet ${label} checkpointed grad(sample)`, shape, 'fwd+bwd', async () => {
      const [u] = (await need(key)) as [UNet2DConditionModel];
      const { s, ctx, g, free } = inputs(u);
      return {
        run: () =>
          tidy(() => {
            const x = s.detach().requireGrad();
            return grad(u.forward(x, T, ctx, { checkpoint: true, activations: act() }), [x], g);
          }),
        free,
      };
    }),
  ];
}

// ---------------- VAE decoder, CLIP tower ----------------
const vaeCase = modelCase('vae decode', `1x4x${LATENT}x${LATENT} -> 1x3x${8 * LATENT}x${8 * LATENT}${VAE_NOTE}`, 'fwd', async () => {
  const [vae] = (await need('vae')) as [AutoencoderKL];
  const z = Tensor.from(gaussianNoise(4 * LATENT * LATENT, 4), [1, 4, LATENT, LATENT]);
  return { run: () => noGrad(() => vae.decode(z, { activations: act() })), free: () => z.dispose() };
});

const clipCase = modelCase('clip vit-h-14 image tower', '1x3x224x224 -> 1x1024', 'fwd', async () => {
  const [clip] = (await need('clip-vit-h-14')) as [ClipVisionModel];
  const px = Tensor.from(randn(3 * 224 * 224, 5), [1, 3, 224, 224]);
  return {
    run: () =>
      noGrad(() =>
        tidy(() => {
          const o = clip.forward(px, { activations: act() });
          return o.imageEmbeds!;
        }),
      ),
    free: () => px.dispose(),
  };
});

// ---------------- SeedSelect ----------------

/** Random but well-formed reference constants: a unit CLIP centroid and a latent-sized VAE centroid. */
function randomRefs(clipDim: number, latent: number[]): References {
  const c = randn(clipDim, 11);
  const n = Math.hypot(...c);
  return {
    clipCentroid: Tensor.from(c.map((v) => v / n), [clipDim]),
    vaeCentroid: Tensor.from(gaussianNoise(latent.reduce((a, b) => a * b), 12), latent),
  };
}

/** Wrap the parts so that calls are counted (forward and the recomputations during backward). */
function counted(parts: DiffusionParts, counts: Record<string, number>): DiffusionParts {
  const inc = (k: string) => (counts[k] = (counts[k] ?? 0) + 1);
  return {
    ...parts,
    unet: (s, t, c) => (inc('unet'), parts.unet(s, t, c)),
    vaeDecode: (z) => (inc('vaeDecode'), parts.vaeDecode(z)),
    clipImageEmbeds: (px) => (inc('clip'), parts.clipImageEmbeds(px)),
  };
}

function seedSelectRun(parts: DiffusionParts, zT: Tensor, emb: Tensor, refs: References, steps: number) {
  return () =>
    tidy(() => {
      const z = zT.detach().requireGrad();
      const l = seedSelectLoss(parts, z, emb, refs, { steps, guidance: 7.5 });
      return grad(l.total, [z]);
    });
}

/** Time one piece (with a GPU sync) outside the harness, for the printed breakdown. */
async function timed(fn: () => Tensor | Tensor[]): Promise<number> {
  await rt().sync();
  const t0 = performance.now();
  const out = fn();
  (Array.isArray(out) ? out : [out]).forEach((t) => t.dispose());
  await rt().sync();
  return performance.now() - t0;
}

const TINY_STEPS = 20;
const TINY_SIZE = 32;
const tinyCounts: Record<string, number> = {};
const tinyCase = modelCase(
  'seedselect tiny-sd iteration',
  `${TINY_SIZE}x${TINY_SIZE} image, ${TINY_STEPS} DDIM steps, CFG 7.5`,
  'fwd+bwd',
  async () => {
    const [pipe] = (await need('tiny-sd')) as [StableDiffusionPipeline];
    const latent = pipe.latentShape(TINY_SIZE, TINY_SIZE);
    pipe.activations = act();
    const base = pipe.parts();
    const parts = counted(base, tinyCounts);
    const emb = pipe.encodePrompt('a purple star on a white background');
    const refs = randomRefs(pipe.clipVision!.config.projectionDim ?? 16, latent);
    const zT = Tensor.from(gaussianNoise(latent.reduce((a, b) => a * b), 7), latent);
    const run = seedSelectRun(parts, zT, emb, refs, TINY_STEPS);
    // breakdown: each piece alone (after one warm-up each), then the call counts of one iteration
    const z2 = Tensor.from(gaussianNoise(2 * latent.slice(1).reduce((a, b) => a * b), 8), [2, ...latent.slice(1)]);
    const pieces: [string, () => Tensor | Tensor[]][] = [
      ['unet fwd (batch 2)', () => noGrad(() => base.unet(z2, 500, emb))],
      ['unet fwd+bwd (batch 2)', () => tidy(() => { const x = z2.detach().requireGrad(); return grad(base.unet(x, 500, emb), [x]); })],
      ['decode+CLIP fwd', () => noGrad(() => clipOfLatent(base, zT, true))],
      ['decode+CLIP fwd+bwd', () => tidy(() => { const x = zT.detach().requireGrad(); return grad(clipOfLatent(base, x, true), [x]); })],
    ];
    const ms: Record<string, number> = {};
    for (const [k, f] of pieces) {
      await timed(f);
      const t = [await timed(f), await timed(f), await timed(f)].sort((a, b) => a - b);
      ms[k] = t[1];
    }
    for (const k of Object.keys(tinyCounts)) delete tinyCounts[k];
    await timed(run);
    const c = { ...tinyCounts };
    for (const k of Object.keys(tinyCounts)) delete tinyCounts[k];
    console.log(
      `    seedselect tiny-sd: one iteration calls the UNet ${c.unet ?? 0}x (batch 2; ${TINY_STEPS} in the loss, ${(c.unet ?? 0) - TINY_STEPS} recomputed in backward), ` +
        `the VAE decoder ${c.vaeDecode ?? 0}x and CLIP ${c.clip ?? 0}x; pieces alone (median wall ms of 3): ` +
        Object.entries(ms).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(', ') +
        `; estimate ${TINY_STEPS} x (fwd + fwd+bwd) UNet = ${(TINY_STEPS * (ms['unet fwd (batch 2)'] + ms['unet fwd+bwd (batch 2)'])).toFixed(0)} ms, ` +
        `3 x (fwd + fwd+bwd) decode+CLIP = ${(3 * (ms['decode+CLIP fwd'] + ms['decode+CLIP fwd+bwd'])).toFixed(0)} ms`,
    );
    z2.dispose();
    return {
      run,
      free: () => [emb, zT, refs.clipCentroid, refs.vaeCentroid].forEach((t) => t.dispose()),
    };
  },
);

/** A positive integer from the environment (a multiple of `multiple`), or the default. */
function envInt(name: string, def: number, multiple = 1): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return def;
  const v = Number(raw);
  if (!Number.isInteger(v) || v <= 0 || v % multiple !== 0) {
    throw new Error(`${name}=${raw}: expected a positive integer${multiple > 1 ? ` that is a multiple of ${multiple}` : ''}`);
  }
  return v;
}
/** BENCH_SD_SIZE / BENCH_SD_STEPS: the SD 2.1-base iteration's image size and DDIM steps (default 256, 5) */
const SD_STEPS = envInt('BENCH_SD_STEPS', 5);
const SD_SIZE = envInt('BENCH_SD_SIZE', 256, 8);
const sdCase = modelCase(
  'seedselect sd-2.1-base iteration',
  `${SD_SIZE}x${SD_SIZE} image, ${SD_STEPS} DDIM steps, CFG 7.5, CLIP ViT-H/14${VAE_NOTE}`,
  'fwd+bwd',
  async () => {
    const [unet, vae, clip] = (await need('unet-sd-2.1-base', 'vae', 'clip-vit-h-14')) as [UNet2DConditionModel, AutoencoderKL, ClipVisionModel];
    const sched = JSON.parse(await readFile(join(presetsDir(), 'sd-2.1-base', 'scheduler', 'scheduler_config.json'), 'utf8'));
    const parts: DiffusionParts = {
      unet: (s, t, c) => unet.forward(s, t, c, { activations: act() }),
      vaeDecode: (z) => vae.decode(z, { activations: act() }),
      vaeEncode: () => {
        throw new Error('not used');
      },
      clipImageEmbeds: (px) => clip.forward(px, { activations: act() }).imageEmbeds!,
      scheduler: DdimScheduler.fromConfig(sched),
      vaeScale: vae.scalingFactor,
      clipSize: clip.config.imageSize,
      clipMean: OPENAI_CLIP_MEAN,
      clipStd: OPENAI_CLIP_STD,
    };
    const h = SD_SIZE / 8;
    const latent = [1, 4, h, h];
    const ctxDim = unet.config.crossAttentionDim[0];
    // the text encoder is not part of the iteration: random conditioning of the right shape
    const emb = Tensor.from(randn(2 * 77 * ctxDim, 21), [2, 77, ctxDim]);
    const refs = randomRefs(clip.config.projectionDim ?? 1024, latent);
    const zT = Tensor.from(gaussianNoise(4 * h * h, 9), latent);
    return {
      run: seedSelectRun(parts, zT, emb, refs, SD_STEPS),
      free: () => {
        [emb, zT, refs.clipCentroid, refs.vaeCentroid].forEach((t) => t.dispose());
        const p = peaks.get('seedselect sd-2.1-base iteration');
        if (p) extrapolate(p.peak, p.weights);
      },
    };
  },
);

/**
 * Peak at 512x512 / 20 steps from a smaller run (default 256x256 / 5 steps): weights stay, activations
 * (everything above the live bytes before the call, minus the kept latents) scale with the pixel count,
 * plus one 64x64 latent per step. At 512x512 / 20 steps the peak is the measured one.
 */
function extrapolate(peak: number, weights: number) {
  if (SD_SIZE === 512 && SD_STEPS === 20) {
    console.log(`    seedselect sd-2.1-base: peak ${gib(peak)} GiB measured at 512x512/20 steps (weights+inputs ${gib(weights)} GiB)`);
    return;
  }
  const h = SD_SIZE / 8;
  const latentBytes = 4 * 4 * h * h;
  const act = peak - weights - SD_STEPS * latentBytes;
  const scale = (512 / SD_SIZE) ** 2;
  const est = weights + scale * act + 20 * 4 * 64 * 64 * 4;
  console.log(
    `    seedselect sd-2.1-base: peak ${gib(peak)} GiB at ${SD_SIZE}x${SD_SIZE}/${SD_STEPS} steps (weights+inputs ${gib(weights)} GiB, activations ${gib(act)} GiB); ` +
      `extrapolated to 512x512/20 steps: ${gib(weights)} + ${scale.toFixed(2)} x ${gib(act)} + 20 latents = ${gib(est)} GiB`,
  );
}

const suite: BenchSuite = {
  name: 'models',
  cases: [...unetCases('unet-sd-1.5', 'sd-1.5'), ...unetCases('unet-sd-2.1-base', 'sd-2.1-base'), vaeCase, clipCase, sdCase, tinyCase],
  notes: ENABLED
    ? ['random weights at the real sizes; peak = live GPU buffers during one call (engine counter), weights included']
    : [],
};
export default suite;
