// `seedselect make-model`: write a random-weight model (or whole SD pipeline) in diffusers layout.
import type { Command } from 'commander';
import { UserError } from '../errors.js';
import { WeightsError } from '../../weights-tools/errors.js';
import { makeModel, PRESETS } from '../../weights-tools/model-maker.js';
import { formatBytes } from '../../weights-tools/inspect.js';

export function register(program: Command): void {
  program
    .command('make-model')
    .description('write a random-weight model in diffusers/transformers layout')
    .requiredOption('--config <config>', `a preset (${PRESETS.join(', ')}), a config.json, or a model/pipeline folder`)
    .requiredOption('--out <dir>', 'output folder')
    .option('--seed <n>', 'random seed', '0')
    .option('--dtype <dtype>', 'f32 or f16', 'f32')
    .option('--tokenizer-dir <dir>', 'folder with vocab.json and merges.txt for a pipeline\'s tokenizer/ (default: the config folder\'s own, else the CLIP vocabulary shipped in presets/clip-tokenizer)')
    .option('--quiet', 'no progress output')
    .action(async (opts: { config: string; out: string; seed: string; dtype: string; tokenizerDir?: string; quiet?: boolean }) => {
      if (!/^\d+$/.test(opts.seed) || !Number.isSafeInteger(Number(opts.seed))) throw new UserError(`--seed must be a non-negative integer, got "${opts.seed}"`);
      const dtype = opts.dtype.toUpperCase();
      if (dtype !== 'F32' && dtype !== 'F16') throw new UserError(`--dtype must be f32 or f16, got "${opts.dtype}"`);
      const t0 = Date.now();
      try {
        const r = await makeModel({
          config: opts.config, out: opts.out, seed: Number(opts.seed), dtype, tokenizerDir: opts.tokenizerDir,
          onProgress: opts.quiet ? undefined : (m) => process.stderr.write(`${m}\n`),
        });
        for (const p of r.parts) console.log(`${p.file}: ${p.className}, ${p.params.toLocaleString('en-US')} parameters, ${formatBytes(p.bytes)}`);
        console.log(`wrote ${r.kind} to ${r.out} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      } catch (e) {
        if (e instanceof WeightsError) throw new UserError(e.message);
        throw e;
      }
    });
}
