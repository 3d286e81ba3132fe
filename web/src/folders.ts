// Model folders in the browser: a local folder chosen with <input webkitdirectory> or dropped on the page
// becomes a FolderAccess over File objects (tensors read with Blob.slice, never the whole file), and any
// folder (local or HTTP) can be checked for the files a SeedSelect pipeline needs before loading.
import { blobSource } from '../../weights-tools/byte-sources.js';
import { joinPath, WEIGHT_FILES, type FolderAccess } from '../../weights-tools/model-folder.js';

/** A model folder that cannot be used as it is (missing files, not a model folder); the message says what to do. */
export class FolderError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FolderError';
  }
}

/** Relative path -> File, with paths relative to the chosen folder's parent (as webkitRelativePath). */
export type FileTree = Map<string, File>;

function clean(p: string): string {
  return p.replace(/\\/g, '/').replace(/^\/+/, '').replace(/\/\.\//g, '/').replace(/\/+/g, '/');
}

/** Files from <input type=file webkitdirectory>. */
export function treeFromInput(files: FileList | File[]): FileTree {
  const tree: FileTree = new Map();
  for (const f of Array.from(files)) tree.set(clean((f as File & { webkitRelativePath?: string }).webkitRelativePath || f.name), f);
  return tree;
}

async function readAllEntries(dir: FileSystemDirectoryEntry): Promise<FileSystemEntry[]> {
  const reader = dir.createReader();
  const all: FileSystemEntry[] = [];
  // readEntries returns at most ~100 entries per call; call until it returns none
  for (;;) {
    const batch = await new Promise<FileSystemEntry[]>((res, rej) => reader.readEntries(res, rej));
    if (!batch.length) return all;
    all.push(...batch);
  }
}

async function walk(entry: FileSystemEntry, tree: FileTree): Promise<void> {
  if (entry.isFile) {
    const file = await new Promise<File>((res, rej) => (entry as FileSystemFileEntry).file(res, rej));
    tree.set(clean(entry.fullPath), file);
  } else if (entry.isDirectory) {
    for (const e of await readAllEntries(entry as FileSystemDirectoryEntry)) await walk(e, tree);
  }
}

/** Files (and folders, recursively) dropped on the page. */
export async function treeFromDrop(dt: DataTransfer): Promise<FileTree> {
  const tree: FileTree = new Map();
  const entries = Array.from(dt.items)
    .map((it) => (it.kind === 'file' ? it.webkitGetAsEntry?.() : null))
    .filter((e): e is FileSystemEntry => !!e);
  if (entries.length) for (const e of entries) await walk(e, tree);
  else for (const f of Array.from(dt.files)) tree.set(clean(f.name), f);
  return tree;
}

/** The shallowest folder of the tree that holds `marker` (e.g. model_index.json), or undefined. */
export function findRoot(tree: FileTree, marker: string): string | undefined {
  let best: string | undefined;
  for (const p of tree.keys()) {
    if (p !== marker && !p.endsWith(`/${marker}`)) continue;
    const dir = p.slice(0, p.length - marker.length).replace(/\/$/, '');
    if (best === undefined || dir.split('/').length < best.split('/').length || (dir.length < best.length && dir.split('/').length === best.split('/').length)) best = dir;
  }
  return best;
}

/** A FolderAccess over the files under `root` (a folder path inside the tree, '' for the top). */
export function fileTreeFolder(tree: FileTree, root: string, name?: string): FolderAccess {
  const prefix = root ? `${root}/` : '';
  const label = name ?? (root || 'dropped files');
  const get = (rel: string) => tree.get(clean(prefix + rel));
  return {
    name: label,
    async readText(rel) {
      const f = get(rel);
      return f ? f.text() : undefined;
    },
    async openSource(rel) {
      const f = get(rel);
      return f ? blobSource(f, joinPath(label, rel)) : undefined;
    },
    async list() {
      return [...tree.keys()].filter((k) => k.startsWith(prefix)).map((k) => k.slice(prefix.length));
    },
  };
}

async function hasFile(folder: FolderAccess, rel: string, text: boolean): Promise<boolean> {
  if (text) return (await folder.readText(rel)) !== undefined;
  const src = await folder.openSource(rel);
  if (!src) return false;
  await src.close?.();
  return true;
}

async function hasWeights(folder: FolderAccess, dir: string): Promise<boolean> {
  for (const f of WEIGHT_FILES) {
    if (await hasFile(folder, `${dir}/${f}`, false)) return true;
    if (await hasFile(folder, `${dir}/${f}.index.json`, true)) return true;
  }
  return false;
}

const WEIGHTS_NAME: Record<string, string> = {
  unet: 'diffusion_pytorch_model.safetensors',
  vae: 'diffusion_pytorch_model.safetensors',
  text_encoder: 'model.safetensors',
  image_encoder: 'model.safetensors',
};

/**
 * What a diffusers Stable Diffusion folder lacks for SeedSelect, as relative paths (empty when complete).
 * `needClip`: whether the folder must bring its own CLIP image tower (image_encoder/).
 */
export async function missingPipelineFiles(folder: FolderAccess, needClip: boolean): Promise<string[]> {
  const missing: string[] = [];
  if (!(await hasFile(folder, 'model_index.json', true))) missing.push('model_index.json');
  const checks: [string, boolean][] = [
    ['scheduler/scheduler_config.json', true],
    ['tokenizer/vocab.json', true],
    ['tokenizer/merges.txt', true],
  ];
  const parts = ['unet', 'vae', 'text_encoder', ...(needClip ? ['image_encoder'] : [])];
  await Promise.all([
    ...checks.map(async ([rel, text]) => {
      if (!(await hasFile(folder, rel, text))) missing.push(rel);
    }),
    ...parts.map(async (p) => {
      if (!(await hasFile(folder, `${p}/config.json`, true))) missing.push(`${p}/config.json`);
      if (!(await hasWeights(folder, p))) missing.push(`${p}/${WEIGHTS_NAME[p]}`);
    }),
  ]);
  const order = ['model_index.json', 'unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler', 'image_encoder'];
  const rank = (p: string) => order.findIndex((o) => p.startsWith(o));
  return missing.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

/** What a CLIP vision folder lacks (config.json and weights). */
export async function missingClipFiles(folder: FolderAccess): Promise<string[]> {
  const missing: string[] = [];
  if (!(await hasFile(folder, 'config.json', true))) missing.push('config.json');
  let ok = false;
  for (const f of WEIGHT_FILES) if ((await hasFile(folder, f, false)) || (await hasFile(folder, `${f}.index.json`, true))) ok = true;
  if (!ok) missing.push('model.safetensors');
  return missing;
}
