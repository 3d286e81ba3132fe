// The paper's claim in miniature, on the tiny-world model: for head (frequent) and tail (rare) concepts,
// how often does the model draw the concept from random seeds, and how often after SeedSelect with k
// reference images? A judge (a small shape/colour classifier trained on balanced renders, shipped in the
// model folder as judge/) decides whether an image shows the concept (right colour and right shape).
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Tensor, noGrad, tidy } from '../engine/index.js';
import { Params } from '../models/weights.js';
import { StableDiffusionPipeline, gaussianNoise } from '../models/pipeline.js';
import { seedSelect, type ReferenceImage } from '../models/api.js';
import { nodeFolder, openSafetensorsFile } from '../weights-tools/node-source.js';
import { WeightsError } from '../weights-tools/errors.js';
import { affine } from '../kernels/elementwise.js';
import { judgeForward } from './train.js';
import { COLOURS, SHAPES, caption, conceptTable, referenceSpecs, render, type Background, type ConceptRow } from './world.js';

export class Judge {
  private constructor(
    readonly params: Params,
    readonly colours: string[],
    readonly shapes: string[],
  ) {}

  static async load(dir: string): Promise<Judge> {
    const cfgText = await readFile(join(dir, 'config.json'), 'utf8').catch(() => undefined);
    if (!cfgText) throw new WeightsError('NOT_FOUND', 'the judge folder has no config.json', { file: dir, expected: 'judge/config.json and judge/model.safetensors (written by `seedselect train-tiny`)' });
    const cfg = JSON.parse(cfgText);
    const f = await openSafetensorsFile(join(dir, 'model.safetensors'));
    const map = new Map<string, Tensor>();
    try {
      for (const name of f.tensors.keys()) map.set(name, Tensor.from(await f.readF32(name), f.tensors.get(name)!.shape).keep());
    } finally {
      await f.close();
    }
    return new Judge(new Params(map, '', dir), cfg.colours ?? [...COLOURS], cfg.shapes ?? [...SHAPES]);
  }

  /** Classify images [B, 3, 32, 32] in [0, 1] (host data): the most likely colour and shape of each. */
  async classify(images01: Float32Array, B: number): Promise<{ colour: string; shape: string; concept: string }[]> {
    const S = Math.round(Math.sqrt(images01.length / B / 3));
    const logits = noGrad(() => tidy(() => judgeForward(this.params, affine(Tensor.from(images01, [B, 3, S, S]), 2, -1)).keep()));
    const v = (await logits.data()) as Float32Array;
    logits.dispose();
    const nC = this.colours.length;
    const K = nC + this.shapes.length;
    const argmax = (a: Float32Array) => a.reduce((best, x, i) => (x > a[best] ? i : best), 0);
    return Array.from({ length: B }, (_, b) => {
      const colour = this.colours[argmax(v.slice(b * K, b * K + nC))];
      const shape = this.shapes[argmax(v.slice(b * K + nC, (b + 1) * K))];
      return { colour, shape, concept: `${colour} ${shape}` };
    });
  }

  dispose() {
    this.params.dispose();
  }
}

export interface ExperimentOptions {
  /** the tiny-world pipeline folder (with judge/ and concepts.json) */
  model: string;
  /** concepts to test (default: `perSplit` spread over the head and over the tail) */
  concepts?: string[];
  perSplit?: number;
  /** SeedSelect runs per concept (starting seeds 0..n-1) */
  n?: number;
  /** images from random seeds per concept (seeds 0..nRandom-1; at least n) */
  nRandom?: number;
  /** reference images per concept */
  k?: number;
  background?: Background;
  steps?: number;
  guidance?: number;
  iterations?: number;
  onProgress?: (message: string) => void;
  signal?: AbortSignal;
}

export interface ExperimentRow {
  concept: string;
  split: 'head' | 'tail';
  frequency: number;
  n: number;
  n_random: number;
  random_acc: number;
  seedselect_acc: number;
}

export interface ExperimentResult {
  rows: ExperimentRow[];
  summary: { split: 'head' | 'tail'; concepts: number; random_acc: number; seedselect_acc: number }[];
  /** per concept: random-seed images, SeedSelect images, references ([3,S,S] in [0,1]) */
  images: { concept: string; random: Float32Array[]; seedselect: Float32Array[]; references: Float32Array[] }[];
  options: Required<Omit<ExperimentOptions, 'onProgress' | 'signal' | 'concepts'>> & { concepts: string[] };
  seconds: number;
}

function spread<T>(xs: T[], n: number): T[] {
  if (xs.length <= n) return xs;
  return Array.from({ length: n }, (_, i) => xs[Math.round((i * (xs.length - 1)) / (n - 1 || 1))]);
}

export async function runExperiment(opts: ExperimentOptions): Promise<ExperimentResult> {
  const t0 = performance.now();
  const o = {
    perSplit: 4,
    n: 3,
    nRandom: 8,
    k: 3,
    background: 'white' as Background,
    steps: 20,
    guidance: 7.5,
    iterations: 10,
    ...opts,
  };
  o.nRandom = Math.max(o.nRandom, o.n);
  const log = o.onProgress ?? (() => {});
  const split = JSON.parse(await readFile(join(o.model, 'concepts.json'), 'utf8').catch(() => 'null')) as { concepts: ConceptRow[] } | null;
  const table: ConceptRow[] = split?.concepts ?? conceptTable();
  const byName = new Map(table.map((r) => [r.name, r]));
  const concepts =
    o.concepts ??
    [...spread(table.filter((r) => r.split === 'head'), o.perSplit), ...spread(table.filter((r) => r.split === 'tail'), o.perSplit)].map((r) => r.name);
  for (const c of concepts) if (!byName.has(c)) throw new RangeError(`unknown concept "${c}" (known: ${table.map((r) => r.name).join(', ')})`);

  const pipe = await StableDiffusionPipeline.load(nodeFolder(o.model));
  const judge = await Judge.load(join(o.model, 'judge'));
  const size = pipe.clipVision!.config.imageSize;
  const f = 2 ** (pipe.vae.config.blockOutChannels.length - 1);
  const W = (pipe.unet.config.sampleSize ?? 8) * f;
  const lat = pipe.latentShape(W, W);
  const nLat = lat.reduce((a, b) => a * b, 1);
  const rows: ExperimentRow[] = [];
  const images: ExperimentResult['images'] = [];
  try {
    for (const [ci, concept] of concepts.entries()) {
      const row = byName.get(concept)!;
      const [colour, shape] = concept.split(' ');
      const prompt = caption({ colour: colour as never, shape: shape as never, background: o.background });
      const refSpecs = referenceSpecs(concept, o.k, 0).map((s) => ({ ...s, background: o.background }));
      const refs = refSpecs.map((s) => render(s, W));
      const references: ReferenceImage[] = refs.map((r, j) => ({ clip: size === W ? r : render(refSpecs[j], size), vae: r, name: `${concept} ${j}` }));
      const randomImgs: Float32Array[] = [];
      const ssImgs: Float32Array[] = [];
      for (let s = 0; s < o.n; s++) {
        if (o.signal?.aborted) throw new Error('experiment cancelled');
        const t1 = performance.now();
        const res = await seedSelect({
          pipeline: pipe,
          prompt,
          references,
          width: W,
          height: W,
          seed: s,
          steps: o.steps,
          guidance: o.guidance,
          iterations: o.iterations,
          signal: o.signal,
        });
        randomImgs.push(res.baseline);
        ssImgs.push(res.images[0].image);
        log(`[${ci + 1}/${concepts.length}] ${concept} (${row.split}) seed ${s}: SeedSelect ${((performance.now() - t1) / 1000).toFixed(1)} s, loss ${res.images[0].history[0]?.total.toFixed(3)} -> ${res.images[0].history.at(-1)?.total.toFixed(3)}`);
      }
      for (let s = o.n; s < o.nRandom; s++) {
        const img = noGrad(() => tidy(() => pipe.txt2img(Tensor.from(gaussianNoise(nLat, s), lat), prompt, { steps: o.steps, guidance: o.guidance }).keep()));
        randomImgs.push((await img.data()) as Float32Array);
        img.dispose();
      }
      const cat = (xs: Float32Array[]) => {
        const out = new Float32Array(xs.reduce((a, x) => a + x.length, 0));
        let off = 0;
        for (const x of xs) {
          out.set(x, off);
          off += x.length;
        }
        return out;
      };
      const jr = await judge.classify(cat(randomImgs), randomImgs.length);
      const js = await judge.classify(cat(ssImgs), ssImgs.length);
      const acc = (js: { concept: string }[]) => js.filter((j) => j.concept === concept).length / js.length;
      const r: ExperimentRow = {
        concept,
        split: row.split,
        frequency: row.frequency,
        n: o.n,
        n_random: o.nRandom,
        random_acc: acc(jr),
        seedselect_acc: acc(js),
      };
      rows.push(r);
      images.push({ concept, random: randomImgs.slice(0, o.n), seedselect: ssImgs, references: refs });
      log(`${concept} (${row.split}, ${(row.frequency * 100).toFixed(2)}% of training images): random ${(r.random_acc * 100).toFixed(0)}% [${jr.map((j) => j.concept).join(', ')}], SeedSelect ${(r.seedselect_acc * 100).toFixed(0)}% [${js.map((j) => j.concept).join(', ')}]`);
    }
  } finally {
    pipe.dispose();
    judge.dispose();
  }
  const summary = (['head', 'tail'] as const)
    .map((s) => {
      const rs = rows.filter((r) => r.split === s);
      const m = (k: 'random_acc' | 'seedselect_acc') => rs.reduce((a, r) => a + r[k], 0) / (rs.length || 1);
      return { split: s, concepts: rs.length, random_acc: m('random_acc'), seedselect_acc: m('seedselect_acc') };
    })
    .filter((s) => s.concepts > 0);
  const { onProgress: _p, signal: _s, ...rest } = o;
  return { rows, summary, images, options: { ...rest, concepts }, seconds: (performance.now() - t0) / 1000 };
}

/** The table as Markdown (README and the command's output). */
export function experimentMarkdown(r: ExperimentResult): string {
  const pct = (x: number) => `${(x * 100).toFixed(0)}%`;
  const lines = [
    '| concept | split | share of training images | random seeds | SeedSelect |',
    '|---|---|---|---|---|',
    ...r.rows.map((x) => `| ${x.concept} | ${x.split} | ${(x.frequency * 100).toFixed(2)}% | ${pct(x.random_acc)} (n=${x.n_random}) | ${pct(x.seedselect_acc)} (n=${x.n}) |`),
    ...r.summary.map((s) => `| **all ${s.split}** (${s.concepts}) | ${s.split} | | **${pct(s.random_acc)}** | **${pct(s.seedselect_acc)}** |`),
  ];
  return lines.join('\n');
}
