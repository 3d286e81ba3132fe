// `seedselect demo` (`npm run demo`): SeedSelect end to end on a fresh machine without downloads. By
// default it uses the tiny-world model shipped in assets/tiny-world (trained by the engine itself, see
// tiny/train.ts): it picks a rare (tail) concept, renders three reference images of it, optimizes the seed
// and writes the images, a before/after grid, the loss curve and run.json. --model/--clip point the same
// command at real Stable Diffusion and CLIP folders (three drawn stars are the references then).
import type { Command } from 'commander';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import sharp from 'sharp';
import { fileURLToPath } from 'node:url';
import { generate } from './generate.js';
import { UserError } from '../errors.js';
import { caption, conceptTable, referenceSpecs, render, toRgb8 } from '../../tiny/world.js';
import { exists } from '../run-folder.js';
import { loadImage, saveGrid, clipInput } from '../images.js';

/** The tiny-world model shipped with the project. */
export function defaultTinyModel(): string {
  return fileURLToPath(new URL('../../assets/tiny-world/', import.meta.url));
}

/** The demo's default rare concept (a tail concept of the shipped model's split). */
export const DEMO_CONCEPT = 'blue ring';
/** The demo's default seed: a start where the random image misses the default concept (README experiment). */
export const DEMO_SEED = 0;

interface DemoOptions {
  out: string;
  model?: string;
  clip?: string;
  concept: string;
  prompt?: string;
  iterations: number;
  steps: number;
  seed: number;
  /** no progress bar or per-iteration lines (tests) */
  quiet?: boolean;
}

/** A 64x64 reference: a five-pointed star of the given colour on white, varied in size and position. */
async function drawStar(path: string, i: number, color: string) {
  const r = 14 + 3 * i;
  const cx = 28 + 4 * i;
  const cy = 34 - 3 * i;
  const pts: string[] = [];
  for (let k = 0; k < 10; k++) {
    const a = Math.PI / 2 + (k * Math.PI) / 5 + 0.1 * i;
    const rr = k % 2 ? r * 0.45 : r;
    pts.push(`${(cx + rr * Math.cos(a)).toFixed(1)},${(cy - rr * Math.sin(a)).toFixed(1)}`);
  }
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64" fill="white"/><polygon points="${pts.join(' ')}" fill="${color}"/></svg>`;
  await sharp(Buffer.from(svg)).png().toFile(path);
}

/** The demo itself (the CLI's action): returns the output folder's main files. */
export async function demo(o: DemoOptions): Promise<{ out: string; grid: string | null; run: Awaited<ReturnType<typeof generate>> }> {
  const out = resolve(o.out);
  const say = (m: string) => !o.quiet && process.stderr.write(m);
  await mkdir(join(out, 'refs'), { recursive: true });
  const tiny = !o.model;
  const model = o.model ? resolve(o.model) : defaultTinyModel();
  if (tiny && !(await exists(join(model, 'model_index.json'))))
    throw new UserError(`the shipped tiny-world model is missing at ${model}; train one with \`seedselect train-tiny --out DIR\` and pass --model DIR`);
  const refs: string[] = [];
  let prompt = o.prompt ?? 'a purple star on a white background';
  let scale = 1;
  if (tiny) {
    const row = conceptTable().find((r) => r.name === o.concept);
    if (!row) throw new UserError(`--concept: unknown concept "${o.concept}" (known: ${conceptTable().map((r) => r.name).join(', ')})`);
    const [colour, shape] = o.concept.split(' ');
    prompt = o.prompt ?? caption({ colour: colour as never, shape: shape as never, background: 'white' });
    say(`concept "${o.concept}": ${row.split} (${(row.frequency * 100).toFixed(2)}% of the training images)\n`);
    for (const [i, spec] of referenceSpecs(o.concept, 3, 0).entries()) {
      const p = join(out, 'refs', `${o.concept.replace(' ', '-')}-${i}.png`);
      await sharp(Buffer.from(toRgb8(render({ ...spec, background: 'white' }))), { raw: { width: 32, height: 32, channels: 3 } }).png().toFile(p);
      refs.push(p);
    }
    scale = 4;
  } else {
    for (let i = 0; i < 3; i++) {
      const p = join(out, 'refs', `star-${i}.png`);
      await drawStar(p, i, '#8a2be2');
      refs.push(p);
    }
  }
  const run = await generate({
    model,
    clip: o.clip,
    prompt,
    negative: '',
    refs,
    out,
    seed: o.seed,
    steps: o.steps,
    guidance: 7.5,
    iterations: o.iterations,
    weightDecay: 0.01,
    numImages: 1,
    resume: true,
    quiet: o.quiet,
  });
  // before | after | references
  const w = run.options.width as number;
  const h = run.options.height as number;
  const S = Math.min(w, h) * scale;
  const read = async (f: string) => clipInput(await loadImage(join(out, f)), S);
  const refImgs = await Promise.all(refs.map(async (r) => clipInput(await loadImage(r), S)));
  if (run.images[0]?.file) {
    await saveGrid([[await read('before.png')], [await read(run.images[0].file)], refImgs], S, S, join(out, 'grid.png'), [
      'random seed',
      'SeedSelect',
      'references',
    ]);
  }
  say(`demo done: ${join(out, 'grid.png')}, ${join(out, 'loss.png')}, ${join(out, 'run.json')}\n`);
  if (tiny) say('this is the tiny-world model (32x32 shapes); point --model/--clip at real SD 2.1-base and CLIP ViT-H/14 folders for real images\n');
  return { out, grid: run.images[0]?.file ? join(out, 'grid.png') : null, run };
}

export function register(program: Command) {
  program
    .command('demo')
    .description('run SeedSelect end to end on a small model the project builds itself (or on --model/--clip folders)')
    .option('--out <dir>', 'output folder', 'out/demo')
    .option('--model <dir>', 'a diffusers Stable Diffusion folder instead of the built-in small model')
    .option('--clip <dir>', 'a CLIP vision model folder (with --model)')
    .option('--concept <name>', 'tiny-world concept to generate (colour and shape, e.g. "orange star")', DEMO_CONCEPT)
    .option('--prompt <text>', 'prompt (default: "a <concept> on a white background")')
    .option('--iterations <n>', 'optimization iterations', (v) => Number(v), 10)
    .option('--steps <n>', 'DDIM steps', (v) => Number(v), 10)
    .option('--seed <n>', `seed of the starting noise (${DEMO_SEED}: one where the random image misses the default concept and SeedSelect draws it, in the README experiment)`, (v) => Number(v), DEMO_SEED)
    .action(async (o: DemoOptions) => {
      await demo(o);
    });
}
