// `seedselect experiment`: the paper's table in miniature on the tiny-world model (tiny/experiment.ts):
// judge accuracy of images from random seeds vs after SeedSelect, for head and tail concepts, with a
// picture grid (random seeds | SeedSelect | references) and an optional JSON table.
import type { Command } from 'commander';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { init } from '../../engine/index.js';
import { experimentMarkdown, runExperiment } from '../../tiny/experiment.js';
import { saveGrid } from '../images.js';
import { exists } from '../run-folder.js';
import { UserError } from '../errors.js';
import { defaultTinyModel } from './demo.js';

interface ExperimentCliOptions {
  model?: string;
  out: string;
  json?: string;
  concepts?: string;
  perSplit: number;
  n: number;
  nRandom: number;
  k: number;
  steps: number;
  iterations: number;
  guidance: number;
}

const int = (name: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new UserError(`--${name} must be a positive integer, got "${v}"`);
  return n;
};

/** Nearest-neighbour upscale of [3,S,S] so that 32x32 images are visible in the grid. */
function upscale(chw: Float32Array, S: number, f: number): Float32Array {
  const T = S * f;
  const out = new Float32Array(3 * T * T);
  for (let c = 0; c < 3; c++) for (let y = 0; y < T; y++) for (let x = 0; x < T; x++) out[(c * T + y) * T + x] = chw[(c * S + Math.floor(y / f)) * S + Math.floor(x / f)];
  return out;
}

export function register(program: Command) {
  program
    .command('experiment')
    .description('random seeds vs SeedSelect on head and tail concepts of the tiny-world model, judged by its classifier')
    .option('--model <dir>', 'tiny-world model folder (default: the one shipped in assets/tiny-world)')
    .option('--out <dir>', 'output folder (grid.png, table.md, table.json)', 'out/experiment')
    .option('--json <file>', 'also write the rows {concept, split, n, random_acc, seedselect_acc} here')
    .option('--concepts <list>', 'comma-separated concepts, e.g. "purple star,red square" (default: spread over head and tail)')
    .option('--per-split <n>', 'concepts per split when --concepts is not given', int('per-split'), 4)
    .option('--n <n>', 'SeedSelect runs per concept', int('n'), 3)
    .option('--n-random <n>', 'random-seed images per concept', int('n-random'), 8)
    .option('--k <n>', 'reference images per concept', int('k'), 3)
    .option('--steps <n>', 'DDIM steps', int('steps'), 20)
    .option('--iterations <n>', 'SeedSelect iterations', int('iterations'), 10)
    .option('--guidance <x>', 'classifier-free guidance scale', (v) => Number(v), 7.5)
    .action(async (o: ExperimentCliOptions) => {
      const model = resolve(o.model ?? defaultTinyModel());
      if (!(await exists(join(model, 'model_index.json')))) throw new UserError(`--model: "${model}" is not a tiny-world model folder (no model_index.json); train one with \`seedselect train-tiny --out DIR\``);
      if (!(await exists(join(model, 'judge', 'model.safetensors')))) throw new UserError(`--model: "${model}" has no judge/ (the classifier that scores the images); it is written by \`seedselect train-tiny\``);
      await init();
      const out = resolve(o.out);
      await mkdir(out, { recursive: true });
      const r = await runExperiment({
        model,
        concepts: o.concepts?.split(',').map((s) => s.trim()).filter(Boolean),
        perSplit: o.perSplit,
        n: o.n,
        nRandom: o.nRandom,
        k: o.k,
        steps: o.steps,
        iterations: o.iterations,
        guidance: o.guidance,
        onProgress: (m) => process.stderr.write(`${m}\n`),
      }).catch((e) => {
        if (e instanceof RangeError) throw new UserError(e.message);
        throw e;
      });
      const md = experimentMarkdown(r);
      const json = r.rows.map(({ concept, split, n, random_acc, seedselect_acc }) => ({ concept, split, n, random_acc, seedselect_acc }));
      await writeFile(join(out, 'table.md'), md + '\n');
      await writeFile(join(out, 'table.json'), JSON.stringify({ rows: r.rows, summary: r.summary, options: r.options, seconds: r.seconds }, null, 2) + '\n');
      if (o.json) {
        await mkdir(dirname(resolve(o.json)), { recursive: true });
        await writeFile(resolve(o.json), JSON.stringify(json, null, 2) + '\n');
      }
      const S = Math.round(Math.sqrt(r.images[0].references[0].length / 3));
      const f = Math.max(1, Math.floor(64 / S));
      await saveGrid(
        r.images.map((im) => [...im.random, ...im.seedselect, ...im.references].map((x) => upscale(x, S, f))),
        S * f,
        S * f,
        join(out, 'grid.png'),
        r.images.map((im) => im.concept),
      );
      process.stdout.write(`${md}\n\ngrid (per row: ${o.n} random seeds | ${o.n} SeedSelect | ${o.k} references): ${join(out, 'grid.png')}\n`);
    });
}
