// `seedselect train-tiny --out DIR`: train the tiny-world Stable Diffusion (CLIP towers, VAE, UNet, judge)
// on the engine itself. Progress per stage; checkpoints every --checkpoint-seconds; running the same
// command again resumes. See tiny/train.ts.
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { adapterName, init, rt } from '../../engine/index.js';
import { STAGES, TRAIN_DEFAULTS, TrainAbortedError, trainTiny, type StageName, type TrainOptions } from '../../tiny/train.js';
import { UserError } from '../errors.js';

interface TrainTinyOptions {
  out: string;
  stepsScale: number;
  trainSize: number;
  seed: number;
  stages?: string;
  checkpointSeconds: number;
  vaeKl: number;
  vaeData: string;
  plan?: string;
  f32?: boolean;
}

const num = (name: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new UserError(`--${name} must be a positive number, got "${v}"`);
  return n;
};

/** `--plan` JSON: per-stage overrides of steps/batch/lr, checked so that a typo is an error, not a default. */
export function parsePlan(json: string): TrainOptions['plan'] {
  let plan: unknown;
  try {
    plan = JSON.parse(json);
  } catch {
    throw new UserError(`--plan must be JSON such as '{"unet":{"steps":3000}}', got ${json}`);
  }
  if (typeof plan !== 'object' || plan === null || Array.isArray(plan))
    throw new UserError(`--plan must be a JSON object keyed by stage (${STAGES.join(', ')}), got ${json}`);
  for (const [s, v] of Object.entries(plan)) {
    if (!STAGES.includes(s as StageName)) throw new UserError(`--plan: unknown stage "${s}" (stages: ${STAGES.join(', ')})`);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new UserError(`--plan: ${s} must be an object such as {"steps":100}`);
    for (const [k, x] of Object.entries(v)) {
      if (!['steps', 'batch', 'lr'].includes(k)) throw new UserError(`--plan: ${s}.${k} is not a plan field (steps, batch, lr)`);
      if (typeof x !== 'number' || !(x > 0) || (k !== 'lr' && !Number.isInteger(x)))
        throw new UserError(`--plan: ${s}.${k} must be a positive ${k === 'lr' ? 'number' : 'integer'}, got ${JSON.stringify(x)}`);
    }
  }
  return plan as TrainOptions['plan'];
}

export function register(program: Command) {
  program
    .command('train-tiny')
    .description('train the tiny-world Stable Diffusion (CLIP text+image towers, VAE, UNet, judge) on the engine; resumable')
    .requiredOption('--out <dir>', 'output folder (a diffusers pipeline folder; checkpoints in <out>/checkpoints)')
    .option('--steps-scale <x>', 'multiply every stage\'s step count (e.g. 0.05 for a quick look)', num('steps-scale'), 1)
    .option('--train-size <n>', 'training images (the first n of the long-tailed stream)', num('train-size'), TRAIN_DEFAULTS.trainSize)
    .option('--seed <n>', 'seed of the initial weights and batches', (v) => Number(v), TRAIN_DEFAULTS.seed)
    .option('--stages <list>', `comma-separated subset of ${STAGES.join(',')} (earlier stages must be done)`)
    .option('--checkpoint-seconds <s>', 'seconds between checkpoints', num('checkpoint-seconds'), TRAIN_DEFAULTS.checkpointSeconds)
    .option('--vae-kl <w>', "weight of the VAE's KL term beside its MSE", num('vae-kl'), TRAIN_DEFAULTS.vaeKlWeight)
    .option('--vae-data <stream>', "the autoencoder's data: train (long-tailed, as the UNet) or balanced (every concept equally often)", TRAIN_DEFAULTS.vaeData)
    .option('--plan <json>', 'per-stage overrides of steps/batch/lr, e.g. \'{"unet":{"steps":3000}}\'')
    .option('--f32', 'export f32 weights instead of f16')
    .action(async (o: TrainTinyOptions) => {
      const stages = o.stages?.split(',').map((s) => s.trim()) as StageName[] | undefined;
      for (const s of stages ?? []) if (!STAGES.includes(s)) throw new UserError(`--stages: unknown stage "${s}" (stages: ${STAGES.join(', ')})`);
      const plan = o.plan === undefined ? undefined : parsePlan(o.plan);
      if (o.vaeData !== 'train' && o.vaeData !== 'balanced') throw new UserError(`--vae-data must be train or balanced, got "${o.vaeData}"`);
      await init();
      process.stderr.write(`device: ${adapterName(rt().gpu.adapterInfo)} (${rt().gpu.adapterClass})\n`);
      const ctrl = new AbortController();
      const onSig = () => {
        process.stderr.write('\nstopping after this step (checkpointing)...\n');
        ctrl.abort();
      };
      process.once('SIGINT', onSig);
      process.once('SIGTERM', onSig);
      const tty = process.stderr.isTTY;
      let lastPrint = 0;
      try {
        const r = await trainTiny({
          out: resolve(o.out),
          stepsScale: o.stepsScale,
          trainSize: Math.round(o.trainSize),
          seed: o.seed,
          stages,
          checkpointSeconds: o.checkpointSeconds,
          vaeKlWeight: o.vaeKl,
          vaeData: o.vaeData,
          plan,
          dtype: o.f32 ? 'F32' : 'F16',
          signal: ctrl.signal,
          onLog: (e) => {
            const now = performance.now();
            const line = e.message
              ? `[${e.stage}] ${e.message}`
              : `[${e.stage}] step ${e.step}/${e.steps} loss ${e.loss.toFixed(4)} (avg ${e.avgLoss.toFixed(4)}) ${e.stepsPerSecond.toFixed(2)} steps/s ETA ${Math.round(e.etaSeconds / 60)} min`;
            if (tty) {
              process.stderr.write(`\r\x1b[K${line}`);
              if (e.step === e.steps || e.message) process.stderr.write('\n');
            } else if (e.message || e.step === e.steps || now - lastPrint > 10000) {
              process.stderr.write(`${line}\n`);
              lastPrint = now;
            }
          },
        });
        for (const s of r.stages)
          process.stderr.write(`${s.stage}: ${s.steps} steps x ${s.batch}, loss ${s.firstLoss.toFixed(4)} -> ${s.finalLoss.toFixed(4)}, ${(s.seconds / 60).toFixed(1)} min\n`);
        process.stderr.write(`model: ${r.out} (load it like any diffusers folder; see its concepts.json for the head/tail split)\n`);
      } catch (e) {
        if (e instanceof TrainAbortedError) throw new UserError(e.message);
        throw e;
      } finally {
        process.off('SIGINT', onSig);
        process.off('SIGTERM', onSig);
      }
    });
}
