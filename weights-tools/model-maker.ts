// Random-weight models in diffusers/transformers layout (Node). Weights follow PyTorch's default
// init, then the same perturbation the golden models use, so weight/bias or gamma/beta mix-ups show:
//   Linear/Conv weight and bias ~ U(-1/sqrt(fanIn), 1/sqrt(fanIn))   (kaiming_uniform, a = sqrt(5))
//   norm weight 1 + 0.1 N(0,1), norm bias 0.1 N(0,1), embeddings N(0, 0.02), all-zero bias -> 0.02 N(0,1)
// Tensors are generated one at a time while the file is written, so the 3.5 GB UNet never sits in memory.
import { mkdir, readFile, writeFile, copyFile, stat, chmod } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WeightsError } from './errors.js';
import { parseConfigText, asConfigObject, type ConfigObject } from './config-reader.js';
import { paramSpec, modelClassOf, countParams, numel, subConfig, type ModelClassName, type ParamSpec } from './param-spec.js';
import { DTYPE_BYTES, f32ToF16Bits, type StDtype } from './dtype.js';
import { writeSafetensorsFile } from './node-source.js';
import { Rng } from './rng.js';

export const PRESETS = ['sd-1.5', 'sd-2.1-base', 'clip-vit-h-14', 'clip-vit-l-14', 'tiny-sd'] as const;
export type PresetName = (typeof PRESETS)[number];

export function presetsDir(): string {
  return fileURLToPath(new URL('../presets/', import.meta.url));
}

export interface MakeModelOptions {
  /** A config object, a preset name, a config.json path, or a folder (pipeline with model_index.json, or model with config.json). */
  config: string | ConfigObject;
  out: string;
  seed: number;
  dtype?: 'F32' | 'F16';
  /** Where vocab.json / merges.txt come from for a pipeline's tokenizer/ (omitted when absent). */
  tokenizerDir?: string;
  onProgress?: (message: string) => void;
}

export interface MadePart {
  folder: string;
  className: ModelClassName;
  params: number;
  file: string;
  bytes: number;
}

export interface MakeModelResult {
  out: string;
  kind: 'pipeline' | 'model';
  parts: MadePart[];
}

const DIFFUSERS_CLASSES: ModelClassName[] = ['UNet2DConditionModel', 'AutoencoderKL'];

export function weightsFileName(cls: ModelClassName): string {
  return DIFFUSERS_CLASSES.includes(cls) ? 'diffusion_pytorch_model.safetensors' : 'model.safetensors';
}

/** Initial values of one parameter, as described at the top of this file. */
export function initParam(p: ParamSpec, seed: number, config?: ConfigObject): Float32Array | BigInt64Array {
  const n = numel(p.shape);
  if (p.kind === 'buffer_i64') {
    const len = p.shape[p.shape.length - 1] ?? 1;
    return BigInt64Array.from({ length: n }, (_, i) => BigInt(i % len));
  }
  const rng = new Rng(seed, p.name);
  const out = new Float32Array(n);
  const bound = p.fanIn > 0 ? 1 / Math.sqrt(p.fanIn) : 0;
  switch (p.kind) {
    case 'conv_weight': case 'linear_weight': case 'bias':
      rng.fillUniform(out, -bound, bound);
      break;
    case 'norm_weight': rng.fillNormal(out, 1, 0.1); break;
    case 'norm_bias': rng.fillNormal(out, 0, 0.1); break;
    case 'embedding': rng.fillNormal(out, 0, 0.02); break;
    // transformers initialises CLIP's class token with std = hidden^-0.5.
    case 'class_embedding': rng.fillNormal(out, 0, 1 / Math.sqrt(n)); break;
    case 'scalar': out.fill(Number(config?.['logit_scale_init_value'] ?? 2.6592)); break;
  }
  if (p.kind === 'bias' && out.every((v) => v === 0)) rng.fillNormal(out, 0, 0.02);
  return out;
}

/** safetensors' own writer order: larger dtypes first, then by name. */
function fileOrder(a: { name: string; dtype: StDtype }, b: { name: string; dtype: StDtype }): number {
  return DTYPE_BYTES[b.dtype] - DTYPE_BYTES[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
}

export async function writeRandomWeights(
  spec: readonly ParamSpec[], path: string,
  opts: { seed: number; dtype?: 'F32' | 'F16'; config?: ConfigObject; onTensor?: (i: number, n: number) => void },
): Promise<{ bytes: number }> {
  const floatDtype: StDtype = opts.dtype ?? 'F32';
  const entries = spec.map((p) => ({ p, name: p.name, shape: p.shape, dtype: (p.kind === 'buffer_i64' ? 'I64' : floatDtype) as StDtype }));
  entries.sort(fileOrder);
  let done = 0;
  return writeSafetensorsFile(path, entries.map((e) => ({
    name: e.name, dtype: e.dtype, shape: e.shape,
    data: () => {
      const v = initParam(e.p, opts.seed, opts.config);
      opts.onTensor?.(++done, entries.length);
      return e.dtype === 'F16' ? f32ToF16Bits(v as Float32Array) : v;
    },
  })), { format: 'pt' });
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(() => true, () => false);
}

async function readJson(path: string): Promise<ConfigObject> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new WeightsError('NOT_FOUND', 'config file is missing', { file: path, expected: 'a config JSON file', found: 'no such file' });
  }
  return parseConfigText(text, path);
}

/** A CLIPModel preset becomes the vision tower with projection, which is what SeedSelect scores with. */
function visionConfigFrom(clip: ConfigObject, file: string): ConfigObject {
  const v = subConfig(clip, 'vision', file);
  return { ...v, architectures: ['CLIPVisionModelWithProjection'], model_type: 'clip_vision_model' };
}

async function makePart(folder: string, config: ConfigObject, cfgFile: string, opts: MakeModelOptions, seedOffset: number): Promise<MadePart> {
  const className = modelClassOf(config, cfgFile);
  const spec = paramSpec(config, { file: cfgFile, className });
  await mkdir(folder, { recursive: true });
  await writeFile(join(folder, 'config.json'), JSON.stringify(config, null, 2) + '\n');
  const file = join(folder, weightsFileName(className));
  const label = folder.split(/[\\/]/).pop();
  const { bytes } = await writeRandomWeights(spec, file, {
    seed: opts.seed + seedOffset, dtype: opts.dtype, config,
    onTensor: (i, n) => (i === n || i % 100 === 0) && opts.onProgress?.(`${label}: ${i}/${n} tensors`),
  });
  return { folder, className, params: countParams(spec), file, bytes };
}

const PIPELINE_PARTS = ['unet', 'vae', 'text_encoder', 'image_encoder'];

async function makePipeline(src: string, opts: MakeModelOptions): Promise<MakeModelResult> {
  const index = await readJson(join(src, 'model_index.json'));
  const out = resolve(opts.out);
  await mkdir(out, { recursive: true });
  const parts: MadePart[] = [];
  for (const [k, part] of PIPELINE_PARTS.entries()) {
    if (!index[part]) continue;
    const cfgFile = join(src, part, 'config.json');
    parts.push(await makePart(join(out, part), await readJson(cfgFile), cfgFile, opts, k));
  }
  for (const [dir, files] of [['scheduler', ['scheduler_config.json']], ['tokenizer', ['tokenizer_config.json', 'special_tokens_map.json']], ['image_encoder', ['preprocessor_config.json']]] as const) {
    if (dir === 'image_encoder' && !index[dir]) continue;
    await mkdir(join(out, dir), { recursive: true });
    for (const f of files) if (await exists(join(src, dir, f))) await copyFile(join(src, dir, f), join(out, dir, f));
  }
  for (const f of ['vocab.json', 'merges.txt']) {
    // every Stable Diffusion tokenizer uses CLIP's BPE vocabulary, which ships in presets/clip-tokenizer:
    // it fills in when neither --tokenizer-dir nor the source folder has one
    const own = join(src, 'tokenizer', f);
    const from = opts.tokenizerDir ? join(opts.tokenizerDir, f) : (await exists(own)) ? own : join(presetsDir(), 'clip-tokenizer', f);
    if (await exists(from)) {
      await copyFile(from, join(out, 'tokenizer', f));
      await chmod(join(out, 'tokenizer', f), 0o644); // the source may be read-only; the copy is ours
    }
    else if (opts.tokenizerDir) throw new WeightsError('NOT_FOUND', 'tokenizer file is missing', { file: from });
  }
  // No safety checker or feature extractor is written, so the index must not ask for them.
  const written = { ...index, safety_checker: [null, null], feature_extractor: [null, null], requires_safety_checker: false };
  await writeFile(join(out, 'model_index.json'), JSON.stringify(written, null, 2) + '\n');
  return { out, kind: 'pipeline', parts };
}

export async function makeModel(opts: MakeModelOptions): Promise<MakeModelResult> {
  if (!Number.isSafeInteger(opts.seed) || opts.seed < 0) {
    throw new WeightsError('BAD_CONFIG', 'seed must be a non-negative integer', { expected: 'an integer >= 0', found: String(opts.seed) });
  }
  const out = resolve(opts.out);
  let config: ConfigObject;
  let cfgFile: string;
  if (typeof opts.config === 'string') {
    const isPreset = (PRESETS as readonly string[]).includes(opts.config);
    const path = isPreset ? join(presetsDir(), opts.config) : resolve(opts.config);
    const st = await stat(path).catch(() => undefined);
    if (!st) throw new WeightsError('NOT_FOUND', `no such config (presets: ${PRESETS.join(', ')})`, { file: opts.config, expected: 'a preset name, a config.json or a model folder', found: 'nothing at that path' });
    if (st.isDirectory() && (await exists(join(path, 'model_index.json')))) return makePipeline(path, opts);
    if (!st.isDirectory() && path.endsWith('model_index.json')) return makePipeline(dirname(path), opts);
    cfgFile = st.isDirectory() ? join(path, 'config.json') : path;
    config = await readJson(cfgFile);
    if (isPreset && modelClassOf(config, cfgFile) === 'CLIPModel') {
      config = visionConfigFrom(config, cfgFile);
      const pre = join(path, 'preprocessor_config.json');
      await mkdir(out, { recursive: true });
      if (await exists(pre)) await copyFile(pre, join(out, 'preprocessor_config.json'));
    }
  } else {
    config = asConfigObject(opts.config, '<config object>');
    cfgFile = '<config object>';
  }
  return { out, kind: 'model', parts: [await makePart(out, config, cfgFile, opts, 0)] };
}
