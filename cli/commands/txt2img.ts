// `seedselect txt2img`: plain text-to-image (DDIM + classifier-free guidance) from a diffusers folder,
// seeded and reproducible, to PNG.
import type { Command } from 'commander';
import { mkdir } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { init, noGrad, Tensor } from '../../engine/index.js';
import { nodeFolder } from '../../weights-tools/node-source.js';
import { WeightsError } from '../../weights-tools/errors.js';
import { StableDiffusionPipeline, gaussianNoise } from '../../models/pipeline.js';
import { savePng } from '../images.js';
import { exists } from '../run-folder.js';
import { UserError } from '../errors.js';

interface Txt2ImgOptions {
  model: string;
  prompt: string;
  negative: string;
  out: string;
  seed: number;
  steps: number;
  guidance: number;
  width?: number;
  height?: number;
  f16?: boolean;
}

export function register(program: Command) {
  program
    .command('txt2img')
    .description('text to image with DDIM and classifier-free guidance')
    .requiredOption('--model <dir>', 'diffusers pipeline folder')
    .requiredOption('--prompt <text>', 'the prompt')
    .option('--negative <text>', 'negative prompt', '')
    .option('--out <file>', 'output PNG', 'out/txt2img.png')
    .option('--seed <n>', 'noise seed', (v) => Number(v), 0)
    .option('--steps <n>', 'DDIM steps', (v) => Number(v), 20)
    .option('--guidance <x>', 'guidance scale', (v) => Number(v), 7.5)
    .option('--width <n>', 'width (multiple of 8)', (v) => Number(v))
    .option('--height <n>', 'height (multiple of 8)', (v) => Number(v))
    .option('--f16', 'f16 weights on the GPU when supported')
    .action(async (o: Txt2ImgOptions) => {
      for (const f of ['width', 'height'] as const)
        if (o[f] !== undefined && !(Number.isInteger(o[f]) && o[f]! > 0 && o[f]! % 8 === 0)) throw new UserError(`--${f} must be a positive multiple of 8, got ${o[f]}`);
      if (!Number.isInteger(o.steps) || o.steps < 1) throw new UserError(`--steps must be a positive integer, got ${o.steps}`);
      const dir = resolve(o.model);
      if (!(await exists(dir))) throw new UserError(`--model: folder "${dir}" does not exist`);
      await init();
      let pipe: StableDiffusionPipeline;
      try {
        pipe = await StableDiffusionPipeline.load(nodeFolder(dir), { f16: o.f16 });
      } catch (e) {
        if (e instanceof WeightsError) throw new UserError(e.message);
        throw e;
      }
      try {
        const f = 2 ** (pipe.vae.config.blockOutChannels.length - 1);
        const native = (pipe.unet.config.sampleSize ?? 64) * f;
        const width = o.width ?? native;
        const height = o.height ?? native;
        let shape: number[];
        try {
          shape = pipe.latentShape(height, width);
        } catch (e) {
          throw new UserError(`--width/--height: ${(e as Error).message}`);
        }
        const zT = Tensor.from(gaussianNoise(shape.reduce((a, b) => a * b, 1), o.seed), shape);
        const img = noGrad(() => pipe.txt2img(zT, o.prompt, { negative: o.negative, steps: o.steps, guidance: o.guidance }));
        const out = resolve(o.out);
        await mkdir(dirname(out), { recursive: true });
        await savePng((await img.data()) as Float32Array, width, height, out);
        process.stderr.write(`wrote ${out} (${width}x${height}, seed ${o.seed}, ${o.steps} steps)\n`);
      } finally {
        pipe.dispose();
      }
    });
}
