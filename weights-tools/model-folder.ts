// Loading a from_pretrained-style folder (config.json + weights) through an abstract folder, so the
// same checks run on a local directory (node-source.ts: nodeFolder) and over HTTP (httpFolder).
// Browser-safe.
import { WeightsError } from './errors.js';
import { parseConfigText, type ConfigObject } from './config-reader.js';
import { openSafetensors, type ByteSource, type TensorReader } from './safetensors.js';
import { openSharded } from './sharded.js';
import { httpSource } from './byte-sources.js';
import { paramSpec, modelClassOf, checkAgainstSpec, assertMatchesSpec, type ModelClassName, type ParamSpec, type SpecReport } from './param-spec.js';

export interface FolderAccess {
  readonly name: string;
  /** The file's text, or undefined when it does not exist. */
  readText(rel: string): Promise<string | undefined>;
  /** A ByteSource for the file, or undefined when it does not exist. */
  openSource(rel: string): Promise<ByteSource | undefined>;
  /** Entry names, where the storage can list them. */
  list?(): Promise<string[]>;
}

/** Weight file names diffusers/transformers look for, in preference order. */
export const WEIGHT_FILES = ['diffusion_pytorch_model.safetensors', 'model.safetensors'];

export function joinPath(dir: string, rel: string): string {
  return dir.endsWith('/') ? dir + rel : `${dir}/${rel}`;
}

export async function readConfig(folder: FolderAccess, rel = 'config.json'): Promise<ConfigObject> {
  const file = joinPath(folder.name, rel);
  const text = await folder.readText(rel);
  if (text === undefined) {
    throw new WeightsError('NOT_FOUND', 'config file is missing', { file, expected: `${rel} next to the weights`, found: 'no such file' });
  }
  return parseConfigText(text, file);
}

/** Open the folder's weights: a single safetensors file or a sharded set with its index. */
export async function openWeights(folder: FolderAccess): Promise<TensorReader> {
  for (const f of WEIGHT_FILES) {
    const src = await folder.openSource(f);
    if (src) {
      try {
        return await openSafetensors(src);
      } catch (e) {
        await src.close?.();
        throw e;
      }
    }
    const index = await folder.readText(`${f}.index.json`);
    if (index !== undefined) {
      return openSharded(index, async (shard) => {
        const s = await folder.openSource(shard);
        if (!s) throw new WeightsError('NOT_FOUND', 'shard named by the index is missing', { file: joinPath(folder.name, shard) });
        try {
          return await openSafetensors(s);
        } catch (e) {
          await s.close?.();
          throw e;
        }
      }, joinPath(folder.name, `${f}.index.json`));
    }
  }
  throw new WeightsError('NOT_FOUND', 'no safetensors weights in this folder', {
    file: folder.name, expected: WEIGHT_FILES.join(' or ') + ' (or a .index.json)', found: 'none',
  });
}

export interface ModelFolder {
  config: ConfigObject;
  className: ModelClassName;
  spec: ParamSpec[];
  weights: TensorReader;
  report: SpecReport;
}

/**
 * config.json + weights, checked against the parameter list the config implies.
 * strict (default): any missing, unexpected or wrongly shaped tensor throws.
 */
export async function openModelFolder(folder: FolderAccess, opts: { strict?: boolean } = {}): Promise<ModelFolder> {
  const config = await readConfig(folder);
  const cfgFile = joinPath(folder.name, 'config.json');
  const className = modelClassOf(config, cfgFile);
  const spec = paramSpec(config, { file: cfgFile, className });
  const weights = await openWeights(folder);
  const report = checkAgainstSpec(spec, weights.tensors, weights.name);
  if (opts.strict ?? true) {
    try {
      assertMatchesSpec(spec, weights.tensors, weights.name);
    } catch (e) {
      await weights.close();
      throw e;
    }
  }
  return { config, className, spec, weights, report };
}

/** A folder served over HTTP (e.g. a local copy of a Hugging Face repo). */
export function httpFolder(baseUrl: string, fetchImpl: (input: string, init?: RequestInit) => Promise<Response> = fetch): FolderAccess {
  return {
    name: baseUrl,
    async readText(rel) {
      const res = await fetchImpl(joinPath(baseUrl, rel));
      if (res.status === 404) return undefined;
      if (!res.ok) throw new WeightsError('IO', 'HTTP error', { file: joinPath(baseUrl, rel), expected: 'HTTP 200', found: `HTTP ${res.status}` });
      return res.text();
    },
    async openSource(rel) {
      try {
        return await httpSource(joinPath(baseUrl, rel), fetchImpl);
      } catch (e) {
        if (e instanceof WeightsError && e.code === 'NOT_FOUND') return undefined;
        throw e;
      }
    },
  };
}
