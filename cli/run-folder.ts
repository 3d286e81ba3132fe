// A SeedSelect run's output folder: run.json (options, per-iteration losses, timings, peak memory,
// versions, status), state.safetensors (the current seed and optimizer moments, rewritten atomically after
// every iteration so a killed run loses at most one), the PNGs, the optimized seeds and the loss curve.
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openSafetensorsFile, writeSafetensorsFile } from '../weights-tools/node-source.js';
import type { IterationInfo, OptimizerState } from '../models/seedselect.js';
import { UserError } from './errors.js';

export interface RunJson {
  version: string;
  status: 'running' | 'done' | 'cancelled' | 'non-finite' | 'early-stop';
  options: Record<string, unknown>;
  images: { index: number; file?: string; seed?: string; references: string[]; history: IterationInfo[]; stopped?: string; message?: string }[];
  current?: { image: number; iteration: number };
  timings: { startedAt: string; updatedAt: string; seconds: number };
  peakBytes: number;
  device: Record<string, unknown>;
  versions: Record<string, string>;
}

export async function exists(p: string) {
  return !!(await stat(p).catch(() => undefined));
}

export async function writeJsonAtomic(path: string, value: unknown) {
  await writeFile(`${path}.partial`, JSON.stringify(value, null, 2));
  await rename(`${path}.partial`, path);
}

export async function readRunJson(dir: string): Promise<RunJson | undefined> {
  const p = join(dir, 'run.json');
  if (!(await exists(p))) return undefined;
  try {
    return JSON.parse(await readFile(p, 'utf8')) as RunJson;
  } catch (e) {
    throw new UserError(`${p} is not valid JSON (${(e as Error).message}); move it away or choose another --out`);
  }
}

export async function saveState(dir: string, image: number, iteration: number, z: Float32Array, shape: number[], st: OptimizerState) {
  await mkdir(dir, { recursive: true });
  const tensors = [
    { name: 'z', dtype: 'F32' as const, shape, data: z },
    ...st.m.map((m, i) => ({ name: `adam.m.${i}`, dtype: 'F32' as const, shape, data: m })),
    ...st.v.map((v, i) => ({ name: `adam.v.${i}`, dtype: 'F32' as const, shape, data: v })),
  ];
  await writeSafetensorsFile(join(dir, 'state.safetensors'), tensors, { image: String(image), iteration: String(iteration), step: String(st.step) });
}

export async function loadState(dir: string) {
  const f = await openSafetensorsFile(join(dir, 'state.safetensors'));
  try {
    const md = f.metadata;
    const names = [...f.tensors.keys()];
    const m = await Promise.all(names.filter((n) => n.startsWith('adam.m.')).sort().map((n) => f.readF32(n)));
    const v = await Promise.all(names.filter((n) => n.startsWith('adam.v.')).sort().map((n) => f.readF32(n)));
    return {
      image: Number(md.image),
      iteration: Number(md.iteration),
      z: await f.readF32('z'),
      optimizer: { step: Number(md.step), m, v },
    };
  } finally {
    await f.close();
  }
}

export async function saveSeed(path: string, z: Float32Array, shape: number[], metadata: Record<string, string>) {
  await writeSafetensorsFile(path, [{ name: 'z_T', dtype: 'F32', shape, data: z }], metadata);
}
