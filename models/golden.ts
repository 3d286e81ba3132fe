// Golden-case runner: discovers ground-truth cases in a folder laid out like ../shared/golden, runs each
// through the runner registered for its kind, and judges every tensor as `max|err| <= tol * max|ref|`.
//
// A case is either a directory holding `golden.json` + the tensors file it names (`file`, default
// `golden.safetensors`), or a pair `<stem>.json` + `<stem>.safetensors` (the scheduler/ddim_* cases).
// Model folders (`models/`), full-size configs (`configs/`) and the tokenizer data are not cases.
//
// The kind of a case, in order of preference:
//   1. a `kind` field in its JSON;
//   2. the class of the model folder it names in `model_dir` (config.json `_class_name` or
//      `architectures[0]`, or scheduler_config.json `_class_name`), e.g. CLIPTextModel;
//   3. `scheduler_config._class_name` in its JSON;
//   4. its file name: `ddim_*` is a DDIMScheduler case;
//   5. its name (`case` field, else the directory or file stem), e.g. seedselect, seedselect_official.
//
// Runners register with `registerRunner(kind, run)`; the runner modules are loaded on first use (the
// unet, vae and seedselect modules only when their files exist). Node-only (reads files).
import { readFile, readdir, stat } from 'node:fs/promises';
import { basename, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { init, tidyAsync, Tensor } from '../engine/index.js';
import { openSafetensorsFile, nodeFolder } from '../weights-tools/node-source.js';
import { openModelFolder, type ModelFolder } from '../weights-tools/model-folder.js';
import type { TensorReader, TensorInfo } from '../weights-tools/safetensors.js';
import { uploadWeights, type Params, type UploadOptions } from './weights.js';

export type CheckKind = 'output' | 'activation' | 'gradient' | 'loss';

export interface CaseCheck {
  case: string;
  tensor: string;
  kind: CheckKind;
  /** max|err| / max|ref| (absolute max|err| where the note says so) */
  err: number;
  tol: number;
  ok: boolean;
  note?: string;
}

/** Tolerances as `max|err| <= tol * max|ref|` (see golden/README.md, "Tolerances"). */
export const TOLERANCES = {
  /** single-model forwards, activations and DDIM steps */
  forward: 1e-4,
  /** gradients of single-model losses */
  gradient: 5e-4,
  /** a `sum(output * R)` loss, judged against tol * sum|output * R| */
  loss: 1e-4,
  /** the SeedSelect chain (losses, grad z_T, Adam iterates) */
  chain: 2e-3,
  /** absolute tolerance for tensors that are zero up to round-off */
  zeroAbs: 1e-5,
} as const;

/** What a golden JSON may hold (all optional; unknown fields are kept). */
export interface GoldenMeta {
  case?: string;
  kind?: string;
  model_dir?: string;
  file?: string;
  tensors?: Record<string, { shape?: number[]; dtype?: string; note?: string; loss_abs_terms?: number; [k: string]: unknown }>;
  fp32_vs_fp64?: Record<string, { note?: string; [k: string]: unknown }>;
  loss_abs_terms?: number | Record<string, number>;
  [k: string]: unknown;
}

export interface GoldenCase {
  /** `case` from the JSON, else the directory name (or file stem for <stem>.json cases) */
  name: string;
  /** the golden root folder */
  root: string;
  /** the JSON file */
  jsonPath: string;
  /** the tensors file */
  tensorsPath: string;
  /** JSON path relative to the root (for display and filtering) */
  rel: string;
  meta: GoldenMeta;
  /** the kind that selects the runner (null when none can be told) */
  kind: string | null;
  kindSource: 'json' | 'model' | 'scheduler_config' | 'file' | 'name';
}

/** Which check kind a golden tensor name denotes. */
export function kindOfTensor(name: string): CheckKind {
  if (/(^|\.)grad(\.|$)/.test(name)) return 'gradient';
  if (/(^|\.)act\./.test(name)) return 'activation';
  if (/(^|\.)loss(_\w+)?$/.test(name) || /^loss\.(?!R)/.test(name)) return 'loss';
  return 'output';
}

/** Default tolerance for a check kind in a single-model case. */
export function defaultTol(kind: CheckKind): number {
  return kind === 'gradient' ? TOLERANCES.gradient : kind === 'loss' ? TOLERANCES.loss : TOLERANCES.forward;
}

/** The normalized error max|got - ref| / max|ref| (absolute when ref is all zero); NaN gives Infinity. */
export function normalizedError(got: ArrayLike<number>, ref: ArrayLike<number>): { err: number; maxAbsErr: number; maxRef: number } {
  let maxAbsErr = 0;
  let maxRef = 0;
  for (let i = 0; i < ref.length; i++) {
    const e = Math.abs(got[i] - ref[i]);
    maxAbsErr = Number.isNaN(e) ? Infinity : Math.max(maxAbsErr, e);
    maxRef = Math.max(maxRef, Math.abs(ref[i]));
  }
  return { err: maxRef === 0 ? maxAbsErr : maxAbsErr / maxRef, maxAbsErr, maxRef };
}

async function hostData(x: Tensor | ArrayLike<number> | BigInt64Array): Promise<ArrayLike<number>> {
  if (x instanceof BigInt64Array) return Array.from(x, Number);
  if (x instanceof Tensor) return (await x.data()) as ArrayLike<number>;
  return x as ArrayLike<number>;
}

export interface CheckOptions {
  kind?: CheckKind;
  tol?: number;
  note?: string;
}

type Cleanup = () => void | Promise<void>;

/** What a runner gets: the case, its tensors, and helpers that compare against them. */
export class GoldenContext {
  /** checks made through `check*()` (a runner may return this array) */
  readonly checks: CaseCheck[] = [];
  private cleanups: Cleanup[] = [];

  constructor(
    readonly goldenCase: GoldenCase,
    readonly file: TensorReader,
  ) {}

  get name(): string {
    return this.goldenCase.name;
  }
  get meta(): GoldenMeta {
    return this.goldenCase.meta;
  }
  get root(): string {
    return this.goldenCase.root;
  }

  /** Golden tensor names, optionally only those starting with `prefix` (in file order). */
  names(prefix = ''): string[] {
    return [...this.file.tensors.keys()].filter((n) => n.startsWith(prefix));
  }
  has(name: string): boolean {
    return this.file.tensors.has(name);
  }
  info(name: string): TensorInfo {
    const t = this.file.tensors.get(name);
    if (!t) throw new Error(`${this.name}: golden tensor "${name}" is missing from ${this.file.name}`);
    return t;
  }
  shape(name: string): number[] {
    return [...this.info(name).shape];
  }
  async f32(name: string): Promise<Float32Array> {
    this.info(name);
    return this.file.readF32(name);
  }
  /** An integer tensor (I64 ids, timesteps) as plain numbers. */
  async ints(name: string): Promise<number[]> {
    this.info(name);
    return Array.from(await this.file.readI64(name), Number);
  }
  /** A path given relative to the golden root (a model folder, say); extra words after it are ignored. */
  path(rel: string): string {
    return resolve(this.root, rel.trim().split(/\s+/)[0]);
  }
  /** The model folder the case names in `model_dir`. */
  modelDir(): string {
    if (typeof this.meta.model_dir !== 'string') throw new Error(`${this.name}: golden JSON has no model_dir`);
    return this.path(this.meta.model_dir);
  }

  /** Open a model folder (checked against its config) and upload its weights; freed after the case. */
  async loadModel(dir: string, opts: UploadOptions = {}): Promise<{ folder: ModelFolder; params: Params }> {
    const folder = await openModelFolder(nodeFolder(dir));
    try {
      const params = await uploadWeights(folder.weights, opts);
      this.onCleanup(() => params.dispose());
      return { folder, params };
    } finally {
      await folder.weights.close();
    }
  }

  onCleanup(fn: Cleanup) {
    this.cleanups.push(fn);
  }

  /** @internal */
  async cleanup() {
    for (const fn of this.cleanups.reverse()) await fn();
    this.cleanups = [];
  }

  /** Whether the golden JSON marks this tensor as zero up to round-off. */
  isZeroUpToRoundoff(name: string): boolean {
    const re = /zero up to round-?off/i;
    const a = this.meta.fp32_vs_fp64?.[name]?.note;
    const b = this.meta.tensors?.[name]?.note;
    return (typeof a === 'string' && re.test(a)) || (typeof b === 'string' && re.test(b));
  }

  /** Compare a computed tensor with the golden tensor `name`; records and returns the check. */
  async check(name: string, got: Tensor | ArrayLike<number> | BigInt64Array, opts: CheckOptions = {}): Promise<CaseCheck> {
    const kind = opts.kind ?? kindOfTensor(name);
    let tol = opts.tol ?? defaultTol(kind);
    const info = this.file.tensors.get(name);
    if (!info) return this.fail(name, `golden tensor "${name}" is missing`, kind);
    const ref = /^[IU]/.test(info.dtype) ? await this.ints(name) : await this.file.readF32(name);
    const g = await hostData(got);
    const gotShape = got instanceof Tensor ? got.shape : undefined;
    const notes: string[] = [];
    if (opts.note) notes.push(opts.note);
    if (g.length !== ref.length || (gotShape && gotShape.reduce((a, b) => a * b, 1) !== ref.length)) {
      return this.push({
        case: this.name, tensor: name, kind, err: Infinity, tol, ok: false,
        note: `size mismatch: got ${gotShape ? `[${gotShape}]` : g.length} vs reference [${info.shape}]`,
      });
    }
    let { err, maxRef } = normalizedError(g, ref);
    if (this.isZeroUpToRoundoff(name)) {
      err = normalizedError(g, ref).maxAbsErr;
      tol = opts.tol ?? TOLERANCES.zeroAbs;
      notes.push('absolute error (reference is zero up to round-off)');
    } else if (maxRef === 0) notes.push('absolute error (reference is all zero)');
    return this.push({ case: this.name, tensor: name, kind, err, tol, ok: err <= tol, note: notes.join('; ') || undefined });
  }

  /**
   * Check a scalar loss of the form sum_i sum(output_i * R_i): the error is judged against
   * tol * sum|output * R|, with that sum taken from the golden JSON (`loss_abs_terms`) or computed from
   * the golden outputs and cotangents named in `terms` ([output name, R name] pairs).
   */
  async checkLoss(name: string, got: number, terms: [string, string][], opts: CheckOptions = {}): Promise<CaseCheck> {
    const tol = opts.tol ?? TOLERANCES.loss;
    if (!this.has(name)) return this.fail(name, `golden tensor "${name}" is missing`, 'loss');
    const ref = (await this.file.readF32(name))[0];
    let abs = this.lossAbsTerms(name);
    if (abs === undefined) {
      abs = 0;
      for (const [o, r] of terms) {
        const [a, b] = [await this.f32(o), await this.f32(r)];
        if (a.length !== b.length) throw new Error(`${this.name}: ${o} and ${r} differ in size`);
        for (let i = 0; i < a.length; i++) abs += Math.abs(a[i] * b[i]);
      }
    }
    const scaleRef = abs > 0 ? abs : Math.abs(ref);
    const e = Math.abs(got - ref);
    const err = Number.isNaN(e) ? Infinity : scaleRef > 0 ? e / scaleRef : e;
    const notes = [`err / sum|output*R| (= ${abs.toPrecision(4)}); got ${got.toPrecision(8)}, ref ${ref.toPrecision(8)}`];
    if (opts.note) notes.unshift(opts.note);
    return this.push({ case: this.name, tensor: name, kind: opts.kind ?? 'loss', err, tol, ok: err <= tol, note: notes.join('; ') });
  }

  private lossAbsTerms(name: string): number | undefined {
    const t = this.meta.tensors?.[name]?.loss_abs_terms;
    if (typeof t === 'number') return t;
    const m = this.meta.loss_abs_terms;
    if (typeof m === 'number' && (name === 'loss' || name.endsWith('.loss'))) return m;
    if (m && typeof m === 'object' && typeof m[name] === 'number') return m[name];
    return undefined;
  }

  /** Record a failed check (something could not be computed). */
  fail(tensor: string, note: string, kind: CheckKind = kindOfTensor(tensor)): CaseCheck {
    return this.push({ case: this.name, tensor, kind, err: Infinity, tol: defaultTol(kind), ok: false, note });
  }

  private push(c: CaseCheck): CaseCheck {
    this.checks.push(c);
    return c;
  }
}

export type Runner = (ctx: GoldenContext) => Promise<CaseCheck[] | void>;

export interface RunnerOptions {
  /**
   * Golden tensors this runner must check: any tensor whose name matches and that no check names is
   * reported as a failure. Default: output.*, act.*, grad.* (also under a prefix such as encode.grad.*)
   * and losses named `loss` or `<x>.loss`. Pass null to turn the coverage check off.
   */
  coverage?: RegExp | null;
}

export const DEFAULT_COVERAGE = /^(output|act)\.|(^|\.)grad\.|(^|\.)loss$/;

const runners = new Map<string, { run: Runner; opts: RunnerOptions }>();

/** Register the runner for a case kind (replaces an earlier one). */
export function registerRunner(kind: string, run: Runner, opts: RunnerOptions = {}): void {
  runners.set(kind, { run, opts });
}

export function registeredKinds(): string[] {
  return [...runners.keys()];
}

/** Runner modules: the first two always exist; the others plug in when their files exist. */
const RUNNER_MODULES = ['./golden-clip.js', './golden-ddim.js'];
const OPTIONAL_RUNNER_MODULES = ['./golden-unet.js', './golden-vae.js', './golden-seedselect.js'];
let loading: Promise<void> | null = null;
/** Runner modules that failed to load, with the error (cases of their kinds then report no runner). */
export const runnerLoadErrors: { module: string; error: string }[] = [];

/** Whether the module's source (.ts) or build (.js) file exists next to this one. */
async function moduleFileExists(spec: string): Promise<boolean> {
  for (const ext of ['.ts', '.js']) {
    if (await exists(fileURLToPath(new URL(spec.replace(/\.js$/, ext), import.meta.url)))) return true;
  }
  return false;
}

/** Import the runner modules once (each registers its runners when imported). */
export function loadRunners(): Promise<void> {
  if (!loading) {
    loading = (async () => {
      for (const m of [...RUNNER_MODULES, ...OPTIONAL_RUNNER_MODULES]) {
        if (!(await moduleFileExists(m))) {
          if (RUNNER_MODULES.includes(m)) runnerLoadErrors.push({ module: m, error: 'module file is missing' });
          continue;
        }
        try {
          await import(m);
        } catch (e) {
          // a runner module that exists but does not load: its cases are reported with this error
          runnerLoadErrors.push({ module: m, error: String((e as Error)?.stack ?? e) });
        }
      }
    })();
  }
  return loading;
}

// ---------------------------------------------------------------------------------------------
// Discovery

const NOT_CASES = new Set(['models', 'configs', 'tokenizer', 'node_modules']);

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

async function readJson(p: string): Promise<GoldenMeta> {
  const text = await readFile(p, 'utf8');
  try {
    const v = JSON.parse(text);
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v as GoldenMeta;
  } catch (e) {
    throw new Error(`${p}: ${(e as Error).message}`);
  }
}

/** The class named by a model folder's config (diffusers `_class_name`, transformers `architectures[0]`). */
async function folderClass(dir: string): Promise<string | null> {
  for (const f of ['config.json', 'scheduler_config.json']) {
    const p = join(dir, f);
    if (!(await exists(p))) continue;
    const c = (await readJson(p)) as Record<string, unknown>;
    if (typeof c._class_name === 'string') return c._class_name;
    if (Array.isArray(c.architectures) && typeof c.architectures[0] === 'string') return c.architectures[0];
    const byType: Record<string, string> = { clip_text_model: 'CLIPTextModel', clip_vision_model: 'CLIPVisionModel', clip: 'CLIPModel' };
    if (typeof c.model_type === 'string' && byType[c.model_type]) return byType[c.model_type];
  }
  return null;
}

async function caseKind(root: string, meta: GoldenMeta, stem: string, name: string): Promise<Pick<GoldenCase, 'kind' | 'kindSource'>> {
  if (typeof meta.kind === 'string' && meta.kind) return { kind: meta.kind, kindSource: 'json' };
  if (typeof meta.model_dir === 'string') {
    const cls = await folderClass(resolve(root, meta.model_dir.trim().split(/\s+/)[0]));
    if (cls) return { kind: cls, kindSource: 'model' };
  }
  const sc = meta.scheduler_config as Record<string, unknown> | undefined;
  if (sc && typeof sc === 'object' && typeof sc._class_name === 'string') return { kind: sc._class_name, kindSource: 'scheduler_config' };
  if (/^ddim_/i.test(stem)) return { kind: 'DDIMScheduler', kindSource: 'file' };
  return { kind: name || null, kindSource: 'name' };
}

/** Every case under `root` (sorted by relative path). */
export async function discoverCases(root: string): Promise<GoldenCase[]> {
  root = resolve(root);
  let st;
  try {
    st = await stat(root);
  } catch {
    throw new Error(`golden folder ${root} does not exist`);
  }
  if (!st.isDirectory()) throw new Error(`${root} is not a folder`);
  const cases: GoldenCase[] = [];
  const walk = async (dir: string, depth: number) => {
    const entries = (await readdir(dir, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name));
    const files = new Set(entries.filter((e) => e.isFile()).map((e) => e.name));
    if (files.has('golden.json')) {
      const jsonPath = join(dir, 'golden.json');
      const meta = await readJson(jsonPath);
      const name = typeof meta.case === 'string' && meta.case ? meta.case : basename(dir);
      const tensorsPath = join(dir, typeof meta.file === 'string' ? meta.file : 'golden.safetensors');
      cases.push({ name, root, jsonPath, tensorsPath, rel: relative(root, jsonPath), meta, ...(await caseKind(root, meta, basename(dir), name)) });
    } else {
      for (const f of files) {
        if (!f.endsWith('.json')) continue;
        const stem = f.slice(0, -5);
        if (!files.has(`${stem}.safetensors`)) continue;
        const jsonPath = join(dir, f);
        const meta = await readJson(jsonPath);
        const name = typeof meta.case === 'string' && meta.case ? meta.case : stem;
        const tensorsPath = join(dir, typeof meta.file === 'string' ? meta.file : `${stem}.safetensors`);
        cases.push({ name, root, jsonPath, tensorsPath, rel: relative(root, jsonPath), meta, ...(await caseKind(root, meta, stem, name)) });
      }
    }
    if (depth >= 4) return;
    for (const e of entries) if (e.isDirectory() && !NOT_CASES.has(e.name) && !e.name.startsWith('.')) await walk(join(dir, e.name), depth + 1);
  };
  await walk(root, 0);
  return cases.sort((a, b) => a.rel.localeCompare(b.rel));
}

// ---------------------------------------------------------------------------------------------
// Running

export interface RunOptions {
  /** only cases whose name or relative path matches */
  filter?: RegExp | string;
  /** a case without a runner passes (it is still reported as skipped) */
  allowMissing?: boolean;
  /** called before each case runs */
  onStart?: (c: GoldenCase) => void;
  /** called with each case's checks when it is done */
  onCase?: (c: GoldenCase, checks: CaseCheck[]) => void;
}

export function isSkipped(c: CaseCheck): boolean {
  return !!c.note?.startsWith('skipped');
}

/** Run one case through its runner; errors become failed checks. */
export async function runCase(c: GoldenCase, opts: { allowMissing?: boolean } = {}): Promise<CaseCheck[]> {
  await loadRunners();
  const entry = c.kind ? runners.get(c.kind) : undefined;
  if (!entry) {
    let note = `skipped: no runner for kind ${JSON.stringify(c.kind)} (from ${c.kindSource})`;
    if (runnerLoadErrors.length) note += `; runner modules that failed to load: ${runnerLoadErrors.map((e) => e.module).join(', ')} (${runnerLoadErrors[0].error.split('\n')[0]})`;
    return [{ case: c.name, tensor: '-', kind: 'output', err: NaN, tol: 0, ok: !!opts.allowMissing, note }];
  }
  await init();
  let file: TensorReader;
  try {
    file = await openSafetensorsFile(c.tensorsPath);
  } catch (e) {
    return [{ case: c.name, tensor: '-', kind: 'output', err: Infinity, tol: 0, ok: false, note: `error: ${(e as Error).message}` }];
  }
  const ctx = new GoldenContext(c, file);
  const checks: CaseCheck[] = [];
  try {
    const returned = await tidyAsync(async () => {
      const r = await entry.run(ctx);
      return r ?? [];
    });
    const seen = new Set<CaseCheck>();
    for (const x of [...ctx.checks, ...(returned as CaseCheck[])]) if (!seen.has(x)) (seen.add(x), checks.push(x));
  } catch (e) {
    checks.push(...ctx.checks);
    const msg = (e as Error)?.message ?? String(e);
    checks.push({ case: c.name, tensor: '-', kind: 'output', err: Infinity, tol: 0, ok: false, note: `error: ${msg.split('\n')[0]}` });
  } finally {
    try {
      await ctx.cleanup();
    } finally {
      await file.close();
    }
  }
  const coverage = entry.opts.coverage === undefined ? DEFAULT_COVERAGE : entry.opts.coverage;
  if (coverage) {
    const named = new Set(checks.map((x) => x.tensor));
    for (const n of file.tensors.keys()) {
      if (coverage.test(n) && !named.has(n)) {
        const kind = kindOfTensor(n);
        checks.push({ case: c.name, tensor: n, kind, err: NaN, tol: defaultTol(kind), ok: false, note: 'not checked by the runner' });
      }
    }
  }
  return checks;
}

/** Discover and run every case under `dir`; one case failing never stops the others. */
export async function runGoldenFolder(dir: string, opts: RunOptions = {}): Promise<CaseCheck[]> {
  const filter = opts.filter === undefined ? null : typeof opts.filter === 'string' ? new RegExp(opts.filter) : opts.filter;
  const cases = (await discoverCases(dir)).filter((c) => !filter || filter.test(c.name) || filter.test(c.rel));
  const all: CaseCheck[] = [];
  for (const c of cases) {
    opts.onStart?.(c);
    const checks = await runCase(c, opts);
    opts.onCase?.(c, checks);
    all.push(...checks);
  }
  return all;
}
