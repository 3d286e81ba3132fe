// `seedselect augment`: the paper's few-shot augmentation. A folder of class sub-folders (k reference images
// each) becomes N generated images per class in a mirrored output tree. Finished classes are skipped, so
// rerunning the command resumes; `--shard i/N` takes every N-th class (i = 0..N-1), so one command spreads
// over many machines under any scheduler (a Slurm array job, a Kubernetes indexed Job, GNU parallel).
import type { Command } from 'commander';
import { readdir, mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { generate, loadForGenerate } from './generate.js';
import { init } from '../../engine/index.js';
import type { StableDiffusionPipeline } from '../../models/pipeline.js';
import { readRunJson, writeJsonAtomic, exists } from '../run-folder.js';
import { UserError } from '../errors.js';

const IMAGE = /\.(png|jpe?g|webp)$/i;

interface AugmentOptions {
  model: string;
  clip?: string;
  data: string;
  out: string;
  numImages: number;
  promptTemplate: string;
  shard: string;
  steps: number;
  iterations: number;
  seed: number;
}

export function parseShard(s: string): { index: number; count: number } {
  const m = /^(\d+)\/(\d+)$/.exec(s);
  if (!m) throw new UserError(`--shard must look like i/N (for example 0/4), got "${s}"`);
  const index = Number(m[1]);
  const count = Number(m[2]);
  if (count < 1 || index >= count) throw new UserError(`--shard ${s}: need 0 <= i < N`);
  return { index, count };
}

export function register(program: Command) {
  program
    .command('augment')
    .description('generate N images per class for a folder of class sub-folders (resumable, shardable)')
    .requiredOption('--model <dir>', 'diffusers pipeline folder')
    .option('--clip <dir>', 'CLIP vision model folder')
    .requiredOption('--data <dir>', 'folder with one sub-folder of reference images per class')
    .requiredOption('--out <dir>', 'output folder (mirrors the class folders)')
    .option('--num-images <n>', 'images per class', (v) => Number(v), 5)
    .option('--prompt-template <text>', 'prompt; {class} is replaced by the folder name (underscores become spaces)', 'a photo of a {class}')
    .option('--shard <i/N>', 'process classes i, i+N, i+2N, ... (0-based)', '0/1')
    .option('--steps <n>', 'DDIM steps', (v) => Number(v), 20)
    .option('--iterations <n>', 'optimization iterations', (v) => Number(v), 30)
    .option('--seed <n>', 'base seed (class j uses seed + j)', (v) => Number(v), 0)
    .action(async (o: AugmentOptions) => {
      const { index, count } = parseShard(o.shard);
      const data = resolve(o.data);
      if (!(await exists(data))) throw new UserError(`--data: folder "${data}" does not exist`);
      const classes = (await readdir(data, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name).sort();
      if (!classes.length) throw new UserError(`--data: "${data}" has no class sub-folders`);
      const mine = classes.map((c, j) => [c, j] as const).filter(([, j]) => j % count === index);
      const out = resolve(o.out);
      await mkdir(out, { recursive: true });
      const summary: { class: string; status: string; images: number; seconds?: number; error?: string }[] = [];
      // one pipeline for every class of the shard (loaded when the first class needs it)
      let pipeline: StableDiffusionPipeline | undefined;
      try {
        for (const [cls, j] of mine) {
          const classOut = join(out, cls);
          const prev = await readRunJson(classOut).catch(() => undefined);
          if (prev?.status === 'done' && prev.images.length >= o.numImages) {
            summary.push({ class: cls, status: 'skipped (done)', images: prev.images.length });
            continue;
          }
          const refs = (await readdir(join(data, cls))).filter((f) => IMAGE.test(f)).sort().map((f) => join(data, cls, f));
          if (!refs.length) {
            summary.push({ class: cls, status: 'error', images: 0, error: 'no images' });
            continue;
          }
          process.stderr.write(`[${cls}] ${refs.length} reference(s) -> ${o.numImages} image(s)\n`);
          try {
            if (!pipeline) {
              await init();
              pipeline = await loadForGenerate(resolve(o.model), o.clip, undefined, (m) => process.stderr.write(`${m}\n`));
            }
            const run = await generate({
              pipeline,
              model: o.model, clip: o.clip, prompt: o.promptTemplate.replaceAll('{class}', cls.replace(/_/g, ' ')), negative: '',
              refs, out: classOut, seed: o.seed + j, steps: o.steps, guidance: 7.5, iterations: o.iterations, weightDecay: 0.01,
              numImages: o.numImages, resume: true,
            });
            summary.push({ class: cls, status: run.status, images: run.images.length, seconds: run.timings.seconds });
          } catch (e) {
            if (!(e instanceof UserError)) throw e;
            summary.push({ class: cls, status: 'error', images: 0, error: e.message });
          }
          await writeJsonAtomic(join(out, `summary-${index}-of-${count}.json`), { shard: o.shard, classes: summary });
        }
      } finally {
        pipeline?.dispose();
      }
      await writeJsonAtomic(join(out, `summary-${index}-of-${count}.json`), { shard: o.shard, classes: summary });
      const bad = summary.filter((s) => s.status === 'error');
      process.stderr.write(`shard ${o.shard}: ${summary.length} class(es), ${bad.length} error(s); summary in ${out}\n`);
      if (bad.length) throw new UserError(`${bad.length} class(es) failed: ${bad.map((b) => `${b.class} (${b.error})`).join(', ')}`);
    });
}
