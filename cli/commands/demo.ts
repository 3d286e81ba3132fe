// `seedselect demo` (`npm run demo`): SeedSelect end to end on a fresh machine without downloads. It builds
// a small random-weight pipeline of the real classes (presets/tiny-sd) unless --model/--clip point at real
// folders, draws three reference images of a rare concept, optimizes the seed and writes the images, a
// before/after grid, the loss curve and run.json.
import type { Command } from 'commander';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import sharp from 'sharp';
import { makeModel, presetsDir } from '../../weights-tools/model-maker.js';
import { generate } from './generate.js';
import { exists } from '../run-folder.js';
import { loadImage, saveGrid, clipInput } from '../images.js';

interface DemoOptions {
  out: string;
  model?: string;
  clip?: string;
  prompt: string;
  iterations: number;
  steps: number;
  seed: number;
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

export function register(program: Command) {
  program
    .command('demo')
    .description('run SeedSelect end to end on a small model the project builds itself (or on --model/--clip folders)')
    .option('--out <dir>', 'output folder', 'out/demo')
    .option('--model <dir>', 'a diffusers Stable Diffusion folder instead of the built-in small model')
    .option('--clip <dir>', 'a CLIP vision model folder (with --model)')
    .option('--prompt <text>', 'prompt', 'a purple star on a white background')
    .option('--iterations <n>', 'optimization iterations', (v) => Number(v), 8)
    .option('--steps <n>', 'DDIM steps', (v) => Number(v), 10)
    .option('--seed <n>', 'seed', (v) => Number(v), 0)
    .action(async (o: DemoOptions) => {
      const out = resolve(o.out);
      await mkdir(join(out, 'refs'), { recursive: true });
      let model = o.model ? resolve(o.model) : join(out, 'model');
      if (!o.model && !(await exists(join(model, 'model_index.json')))) {
        process.stderr.write(`building the small demo model in ${model}\n`);
        await makeModel({ config: 'tiny-sd', out: model, seed: 0, tokenizerDir: join(presetsDir(), 'clip-tokenizer') });
      }
      const refs: string[] = [];
      for (let i = 0; i < 3; i++) {
        const p = join(out, 'refs', `star-${i}.png`);
        await drawStar(p, i, '#8a2be2');
        refs.push(p);
      }
      const run = await generate({
        model,
        clip: o.clip,
        prompt: o.prompt,
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
      });
      // before | after | references
      const w = run.options.width as number;
      const h = run.options.height as number;
      const read = async (f: string) => clipInput(await loadImage(join(out, f)), Math.min(w, h));
      const refImgs = await Promise.all(refs.map(async (r) => clipInput(await loadImage(r), Math.min(w, h))));
      if (run.images[0]?.file) {
        await saveGrid([[await read('before.png')], [await read(run.images[0].file)], refImgs], Math.min(w, h), Math.min(w, h), join(out, 'grid.png'), [
          'random seed',
          'SeedSelect',
          'references',
        ]);
      }
      process.stderr.write(`demo done: ${join(out, 'grid.png')}, ${join(out, 'loss.png')}, ${join(out, 'run.json')}\n`);
      if (!o.model) process.stderr.write('this small model has random weights, so its images are noise; point --model/--clip at real SD 2.1-base and CLIP ViT-H/14 folders for real images\n');
    });
}
