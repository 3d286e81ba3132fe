// `seedselect inspect`: what a path holds (pipeline folder, model folder, LDM/OpenCLIP single file,
// plain safetensors), every tensor, totals, and every disagreement with the config. Node only.
import { stat, readFile } from 'node:fs/promises';
import { join, basename, dirname } from 'node:path';
import { WeightsError } from './errors.js';
import { parseConfigText, type ConfigObject } from './config-reader.js';
import { openSafetensorsFile, nodeFolder } from './node-source.js';
import { openWeights } from './model-folder.js';
import { openSharded } from './sharded.js';
import type { TensorReader } from './safetensors.js';
import { paramSpec, modelClassOf, checkAgainstSpec, numel, type SpecReport } from './param-spec.js';
import { detectLayout, ldmKeyMaps, LAYOUT_DESCRIPTIONS, type CheckpointLayout } from './checkpoint.js';
import { openClipVisionKeyMap, checkKeyMapSources } from './keymap.js';
import { presetsDir } from './model-maker.js';

export interface TensorRow {
  name: string;
  dtype: string;
  shape: number[];
  bytes: number;
}

export interface InspectedWeights {
  file: string;
  layout: CheckpointLayout;
  tensors: TensorRow[];
  totalBytes: number;
  totalElements: number;
  dtypes: Record<string, number>;
  metadata: Record<string, string>;
}

export interface InspectedPart {
  /** Folder or file this part came from. */
  path: string;
  /** What it is: a model class, 'scheduler', 'tokenizer', or a layout description. */
  what: string;
  weights?: InspectedWeights;
  report?: SpecReport;
  /** Checks beyond the param spec (e.g. LDM key-map coverage). */
  notes: string[];
  problems: string[];
}

export type InspectKind = 'diffusers-pipeline' | 'model-folder' | 'scheduler-folder' | 'tokenizer-folder' | 'safetensors-file';

export interface InspectReport {
  path: string;
  kind: InspectKind;
  description: string;
  parts: InspectedPart[];
  /** All problems of all parts, each prefixed with where it was found. */
  problems: string[];
}

function summarize(w: TensorReader, file: string): InspectedWeights {
  const tensors: TensorRow[] = [];
  const dtypes: Record<string, number> = {};
  let totalBytes = 0;
  let totalElements = 0;
  for (const t of w.tensors.values()) {
    tensors.push({ name: t.name, dtype: t.dtype, shape: t.shape, bytes: t.byteLength });
    dtypes[t.dtype] = (dtypes[t.dtype] ?? 0) + 1;
    totalBytes += t.byteLength;
    totalElements += numel(t.shape);
  }
  tensors.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { file, layout: detectLayout(w.tensors.keys()), tensors, totalBytes, totalElements, dtypes, metadata: w.metadata };
}

const message = (e: unknown) => (e instanceof Error ? e.message : String(e));

async function readJsonFile(path: string): Promise<ConfigObject> {
  return parseConfigText(await readFile(path, 'utf8'), path);
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(() => true, () => false);
}

/** config.json + weights in one folder. */
async function inspectModelFolder(dir: string): Promise<InspectedPart> {
  const part: InspectedPart = { path: dir, what: 'model folder', notes: [], problems: [] };
  let config: ConfigObject | undefined;
  if (!(await exists(join(dir, 'config.json')))) {
    part.problems.push(`${join(dir, 'config.json')}: config.json is missing`);
  } else {
    try {
      config = await readJsonFile(join(dir, 'config.json'));
      part.what = modelClassOf(config, join(dir, 'config.json'));
    } catch (e) {
      part.problems.push(message(e));
    }
  }
  let weights: TensorReader | undefined;
  try {
    weights = await openWeights(nodeFolder(dir));
    part.weights = summarize(weights, weights.name);
  } catch (e) {
    part.problems.push(message(e));
  }
  if (config && weights && part.what !== 'model folder') {
    try {
      part.report = checkAgainstSpec(paramSpec(config, { file: join(dir, 'config.json') }), weights.tensors, weights.name);
      if (!part.report.ok) part.problems.push(part.report.text);
    } catch (e) {
      part.problems.push(message(e));
    }
  }
  await weights?.close();
  return part;
}

async function presetConfig(rel: string): Promise<ConfigObject> {
  return readJsonFile(join(presetsDir(), rel));
}

/** Extra checks for original-layout single files, against the matching preset architecture. */
async function checkOriginalLayout(part: InspectedPart, w: TensorReader): Promise<void> {
  const layout = part.weights!.layout;
  const shapes = w.tensors;
  const check = (label: string, r: ReturnType<typeof checkKeyMapSources>) => {
    part.notes.push(`${label}: ${r.ok ? 'every parameter found' : `${r.missing.length} missing, ${r.wrongShape.length} with the wrong shape`}` +
      (r.unused.length ? `; ${r.unused.length} tensors not used by the diffusers model` : ''));
    if (!r.ok) {
      const more = (n: number) => (n > 10 ? [`... and ${n - 10} more`] : []);
      const lines = [
        ...r.wrongShape.slice(0, 10).map((x) => `${x.source}: expected [${x.expected.join(', ')}], found [${x.found.join(', ')}]`), ...more(r.wrongShape.length),
        ...r.missing.slice(0, 10).map((m) => `${m}: missing`), ...more(r.missing.length),
      ];
      part.problems.push(`${w.name}: does not match ${label}\n    ${lines.join('\n    ')}`);
    }
  };
  if (layout === 'ldm-sd1' || layout === 'ldm-sd2') {
    const preset = layout === 'ldm-sd1' ? 'sd-1.5' : 'sd-2.1-base';
    const configs = { unet: await presetConfig(`${preset}/unet/config.json`), vae: await presetConfig(`${preset}/vae/config.json`), text: await presetConfig(`${preset}/text_encoder/config.json`) };
    const maps = ldmKeyMaps(layout, configs, shapes.keys());
    const prefixes = { unet: 'model.diffusion_model.', vae: 'first_stage_model.', text: 'cond_stage_model.' };
    const classes = { unet: 'UNet2DConditionModel', vae: 'AutoencoderKL', text: 'CLIPTextModel' } as const;
    for (const k of ['unet', 'vae', 'text'] as const) {
      const spec = paramSpec(configs[k], { className: classes[k] });
      check(`${preset} ${classes[k]}`, checkKeyMapSources(maps[k], spec, shapes, prefixes[k]));
    }
  } else if (layout === 'openclip' && shapes.has('visual.conv1.weight')) {
    const width = shapes.get('visual.conv1.weight')!.shape[0];
    const preset = width === 1280 ? 'clip-vit-h-14' : width === 1024 ? 'clip-vit-l-14' : undefined;
    if (!preset) {
      part.notes.push(`vision width ${width} matches no preset; key map not checked`);
      return;
    }
    const cfg = await presetConfig(`${preset}/config.json`);
    const spec = paramSpec(cfg, { className: 'CLIPVisionModelWithProjection' });
    check(`${preset} CLIPVisionModelWithProjection`, checkKeyMapSources(openClipVisionKeyMap(cfg), spec, shapes, 'visual.'));
  }
}

async function inspectFile(path: string): Promise<InspectedPart> {
  const part: InspectedPart = { path, what: 'safetensors file', notes: [], problems: [] };
  let w: TensorReader | undefined;
  try {
    // A sharded checkpoint can be named by its index file.
    w = path.endsWith('.index.json')
      ? await openSharded(await readFile(path, 'utf8'), (f) => openSafetensorsFile(join(dirname(path), f)), path)
      : await openSafetensorsFile(path);
    part.weights = summarize(w, path);
    part.what = LAYOUT_DESCRIPTIONS[part.weights.layout];
    await checkOriginalLayout(part, w);
  } catch (e) {
    if (e instanceof WeightsError && e.code === 'NOT_FOUND') throw e;
    part.problems.push(message(e));
  } finally {
    await w?.close();
  }
  return part;
}

function collect(path: string, kind: InspectKind, description: string, parts: InspectedPart[]): InspectReport {
  return { path, kind, description, parts, problems: parts.flatMap((p) => p.problems) };
}

export async function inspectPath(path: string): Promise<InspectReport> {
  const st = await stat(path).catch(() => undefined);
  if (!st) throw new WeightsError('NOT_FOUND', 'nothing to inspect', { file: path, expected: 'a safetensors file or a model folder', found: 'no such path' });
  if (!st.isDirectory()) {
    const what = path.endsWith('.index.json') ? 'sharded safetensors checkpoint' : 'single safetensors file';
    return collect(path, 'safetensors-file', what, [await inspectFile(path)]);
  }

  if (await exists(join(path, 'model_index.json'))) {
    const parts: InspectedPart[] = [];
    let index: ConfigObject;
    try {
      index = await readJsonFile(join(path, 'model_index.json'));
    } catch (e) {
      return collect(path, 'diffusers-pipeline', 'diffusers pipeline folder', [{ path, what: 'pipeline', notes: [], problems: [message(e)] }]);
    }
    for (const [name, v] of Object.entries(index)) {
      if (name.startsWith('_') || !Array.isArray(v) || v[0] === null || v[1] === null) continue;
      const dir = join(path, name);
      if (!(await exists(dir))) parts.push({ path: dir, what: String(v[1]), notes: [], problems: [`${dir}: folder for component "${name}" (${v[1]}) is missing`] });
      else parts.push(await inspectSubfolder(dir));
    }
    return collect(path, 'diffusers-pipeline', `diffusers pipeline folder (${index['_class_name'] ?? 'unknown pipeline'})`, parts);
  }
  const part = await inspectSubfolder(path);
  const kind: InspectKind = part.what === 'scheduler' ? 'scheduler-folder' : part.what === 'tokenizer' ? 'tokenizer-folder' : 'model-folder';
  return collect(path, kind, kind === 'model-folder' ? `model folder (${part.what})` : `${part.what} folder`, [part]);
}

async function inspectSubfolder(dir: string): Promise<InspectedPart> {
  if (await exists(join(dir, 'scheduler_config.json'))) {
    const part: InspectedPart = { path: dir, what: 'scheduler', notes: [], problems: [] };
    try {
      const cfg = await readJsonFile(join(dir, 'scheduler_config.json'));
      part.notes.push(`${cfg['_class_name'] ?? 'scheduler'}: ${['prediction_type', 'beta_schedule', 'num_train_timesteps', 'timestep_spacing'].map((k) => `${k}=${JSON.stringify(cfg[k] ?? null)}`).join(' ')}`);
    } catch (e) {
      part.problems.push(message(e));
    }
    return part;
  }
  if (await exists(join(dir, 'tokenizer_config.json')) || (await exists(join(dir, 'vocab.json')))) {
    const part: InspectedPart = { path: dir, what: 'tokenizer', notes: [], problems: [] };
    for (const f of ['vocab.json', 'merges.txt']) if (!(await exists(join(dir, f)))) part.notes.push(`${f} not present`);
    return part;
  }
  return inspectModelFolder(dir);
}

// ---------------------------------------------------------------------------------------------

const int = (n: number) => n.toLocaleString('en-US');
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i ? n.toFixed(2) : n} ${units[i]}`;
}

export function formatInspectReport(r: InspectReport, opts: { tensors?: boolean } = {}): string {
  const out: string[] = [`${r.path}: ${r.description}`];
  for (const p of r.parts) {
    if (r.parts.length > 1 || p.path !== r.path) out.push('', `== ${basename(p.path)}: ${p.what}`);
    const w = p.weights;
    if (w) {
      out.push(`  file: ${w.file}`, `  layout: ${LAYOUT_DESCRIPTIONS[w.layout]}`);
      if (Object.keys(w.metadata).length) out.push(`  metadata: ${JSON.stringify(w.metadata)}`);
      if (opts.tensors ?? true) {
        const width = Math.max(4, ...w.tensors.map((t) => t.name.length));
        out.push(`  ${'name'.padEnd(width)}  dtype  ${'shape'.padEnd(22)}  bytes`);
        for (const t of w.tensors) out.push(`  ${t.name.padEnd(width)}  ${t.dtype.padEnd(5)}  ${`[${t.shape.join(', ')}]`.padEnd(22)}  ${int(t.bytes)}`);
      }
      const dt = Object.entries(w.dtypes).map(([k, v]) => `${k} x${v}`).join(', ');
      out.push(`  total: ${int(w.tensors.length)} tensors, ${int(w.totalElements)} elements, ${formatBytes(w.totalBytes)} (${dt || 'no tensors'})`);
    }
    if (p.report) out.push(`  config check: ${p.report.ok ? p.report.text.split('\n')[0].replace(/^[^:]*: /, '') : 'MISMATCH (see problems)'}`);
    for (const n of p.notes) out.push(`  ${n}`);
  }
  out.push('');
  if (r.problems.length) {
    out.push(`${r.problems.length} problem(s):`);
    for (const pr of r.problems) out.push(`  - ${pr.replace(/\n/g, '\n    ')}`);
  } else out.push('no problems found');
  return out.join('\n');
}
