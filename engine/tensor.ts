// Tensors: shape, dtype and a GPU buffer from the runtime's pool; scopes that dispose intermediates;
// the autodiff record (each op attaches its backward closure to its output, micrograd style).
import { rt } from './runtime.js';

export type DType = 'f32' | 'f16' | 'i32';
export const DTYPE_BYTES: Record<DType, number> = { f32: 4, f16: 2, i32: 4 };

export class ShapeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ShapeError';
  }
}

export interface GradNode {
  name: string;
  inputs: Tensor[];
  /** given d(loss)/d(output), returns d(loss)/d(input) for each input (null where none) */
  backward: (g: Tensor) => (Tensor | null | undefined)[];
}

let nextId = 1;

class Storage {
  refs = 1;
  /** in-place changes of the data so far (`Tensor.markModified`) */
  version = 0;
  /** run when the last tensor on this storage is disposed */
  releaseHooks?: (() => void)[];
  constructor(readonly buffer: GPUBuffer) {}
}

export class Tensor {
  readonly id = nextId++;
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly size: number;
  /** the GPU storage, shared (reference-counted) between a tensor and its views */
  private _storage: Storage | null;
  requiresGrad = false;
  /** gradient accumulated by `backward()` on leaves that require grad */
  grad: Tensor | null = null;
  node: GradNode | null = null;
  label?: string;
  /** intermediates of this tensor's autodiff graph that no scope owns any more (freed with it) */
  graphHeld?: Tensor[];

  constructor(shape: readonly number[], dtype: DType, storage: GPUBuffer | Storage) {
    this.shape = shape;
    this.dtype = dtype;
    this.size = shape.reduce((a, b) => a * b, 1);
    if (storage instanceof Storage) {
      storage.refs++;
      this._storage = storage;
    } else this._storage = new Storage(storage);
    track(this);
  }

  get buffer(): GPUBuffer {
    if (!this._storage) throw new Error(`tensor #${this.id}${this.label ? ` (${this.label})` : ''} [${this.shape}] was disposed and cannot be used`);
    return this._storage.buffer;
  }
  get disposed() {
    return this._storage === null;
  }
  get byteLength() {
    return this.size * DTYPE_BYTES[this.dtype];
  }
  get rank() {
    return this.shape.length;
  }

  static empty(shape: readonly number[], dtype: DType = 'f32', label?: string): Tensor {
    for (const d of shape) if (!Number.isInteger(d) || d < 0) throw new ShapeError(`invalid shape [${shape}]${label ? ` for ${label}` : ''}`);
    const n = shape.reduce((a, b) => a * b, 1);
    const t = new Tensor([...shape], dtype, rt().alloc(Math.max(4, n * DTYPE_BYTES[dtype]), label));
    if (label) t.label = label;
    return t;
  }

  /** Upload host data. f16 tensors take Uint16Array bits or a Float32Array (converted). */
  static from(data: ArrayLike<number> | Float32Array | Int32Array | Uint16Array, shape: readonly number[], dtype: DType = 'f32'): Tensor {
    const n = shape.reduce((a, b) => a * b, 1);
    if (data.length !== n) throw new ShapeError(`Tensor.from: data has ${data.length} elements but shape [${shape}] needs ${n}`);
    const t = Tensor.empty(shape, dtype);
    let view: ArrayBufferView;
    if (dtype === 'f32') view = data instanceof Float32Array ? data : Float32Array.from(data as ArrayLike<number>);
    else if (dtype === 'i32') view = data instanceof Int32Array ? data : Int32Array.from(data as ArrayLike<number>);
    else view = data instanceof Uint16Array ? data : f32ToF16(data instanceof Float32Array ? data : Float32Array.from(data as ArrayLike<number>));
    if (view.byteLength % 4) {
      const padded = new Uint8Array(Math.ceil(view.byteLength / 4) * 4);
      padded.set(new Uint8Array(view.buffer, view.byteOffset, view.byteLength));
      view = padded;
    }
    if (n > 0) rt().write(t.buffer, view);
    return t;
  }

  static scalar(v: number): Tensor {
    return Tensor.from([v], []);
  }

  /** Read back as host data (f16 is widened to f32). */
  async data(): Promise<Float32Array | Int32Array> {
    if (this.size === 0) return this.dtype === 'i32' ? new Int32Array(0) : new Float32Array(0);
    const bytes = await rt().read(this.buffer, 0, this.byteLength);
    if (this.dtype === 'i32') return new Int32Array(bytes);
    if (this.dtype === 'f16') return f16ToF32(new Uint16Array(bytes));
    return new Float32Array(bytes);
  }
  async toArray(): Promise<number[]> {
    return Array.from(await this.data());
  }
  async item(): Promise<number> {
    return (await this.data())[0];
  }

  /** A tensor sharing this buffer with another shape (same element count), no autodiff link. */
  view(shape: readonly number[]): Tensor {
    const n = shape.reduce((a, b) => a * b, 1);
    if (n !== this.size) throw new ShapeError(`view: cannot view [${this.shape}] as [${shape}]`);
    this.buffer; // throws when disposed
    return new Tensor([...shape], this.dtype, this._storage!);
  }

  /** The storage this tensor shares with its views, as an opaque identity (a key for caches of derived data). */
  get storageKey(): object {
    this.buffer; // throws when disposed
    return this._storage!;
  }
  /** How many times the data has been changed in place (`markModified`); caches of derived data compare it. */
  get version(): number {
    return this._storage?.version ?? -1;
  }
  /** Record an in-place change of the data: every kernel that writes into an existing tensor calls this. */
  markModified() {
    if (this._storage) this._storage.version++;
  }
  /** Run `fn` once, when the storage is freed (this tensor and all its views disposed). */
  onStorageRelease(fn: () => void) {
    this.buffer; // throws when disposed
    (this._storage!.releaseHooks ??= []).push(fn);
  }

  /** A view of the same data that is cut from the autodiff graph. */
  detach(): Tensor {
    return this.view(this.shape);
  }

  /** Mark as a leaf that needs gradients. */
  requireGrad(on = true): this {
    this.requiresGrad = on;
    return this;
  }

  dispose() {
    if (!this._storage) return;
    if (--this._storage.refs === 0) {
      rt().release(this._storage.buffer);
      const hooks = this._storage.releaseHooks;
      this._storage.releaseHooks = undefined;
      hooks?.forEach((fn) => fn());
    }
    this._storage = null;
    this.node = null;
    if (this.graphHeld) {
      const held = this.graphHeld;
      this.graphHeld = undefined;
      for (const t of held) t.dispose();
    }
    if (this.grad) {
      this.grad.dispose();
      this.grad = null;
    }
    untrack(this);
  }

  /** Keep this tensor beyond the current scope. */
  keep(): this {
    untrack(this);
    return this;
  }

  toString() {
    return `Tensor(${this.dtype}[${this.shape}]${this.label ? ` ${this.label}` : ''})`;
  }
}

// ---- scopes ----
const scopes: Set<Tensor>[] = [];
function track(t: Tensor) {
  if (scopes.length) scopes[scopes.length - 1].add(t);
}
function untrack(t: Tensor) {
  for (let i = scopes.length - 1; i >= 0; i--) if (scopes[i].delete(t)) return;
}

function collect(v: unknown, out: Set<Tensor>, depth = 0) {
  if (v instanceof Tensor) out.add(v);
  else if (depth < 3 && Array.isArray(v)) for (const x of v) collect(x, out, depth + 1);
  else if (depth < 3 && v && typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype)
    for (const x of Object.values(v)) collect(x, out, depth + 1);
}

function endScope(scope: Set<Tensor>, result: unknown) {
  const keep = new Set<Tensor>();
  collect(result, keep);
  // tensors returned keep what they need for backward alive too (their graph's saved tensors live in closures),
  // so a scope only frees tensors that are neither returned nor reachable from a returned tensor's graph.
  const reachable = new Set<Tensor>();
  const stack = [...keep];
  while (stack.length) {
    const t = stack.pop()!;
    if (reachable.has(t)) continue;
    reachable.add(t);
    if (t.node) for (const s of savedOf(t.node)) stack.push(s);
  }
  scopes.pop();
  const held: Tensor[] = [];
  for (const t of scope) {
    if (keep.has(t)) track(t);
    else if (reachable.has(t)) {
      track(t);
      held.push(t);
    } else t.dispose();
  }
  // with no enclosing scope, what a returned graph holds is freed with the first returned tensor
  if (!scopes.length && held.length) {
    const root = [...keep].find((t) => t.node);
    if (root) root.graphHeld = (root.graphHeld ?? []).concat(held);
  }
}

/** Tensors a node keeps: its inputs plus any it saved for backward. */
function savedOf(node: GradNode): Tensor[] {
  return node.inputs.concat((node as GradNode & { saved?: Tensor[] }).saved ?? []);
}

/**
 * Run `fn` and dispose every tensor it created, except those returned (in a Tensor, array or plain object)
 * and those their autodiff graph still needs.
 */
export function tidy<T>(fn: () => T): T {
  const scope = new Set<Tensor>();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    scopes.pop();
    for (const t of scope) t.dispose();
    throw e;
  }
  endScope(scope, result);
  return result;
}

export async function tidyAsync<T>(fn: () => Promise<T>): Promise<T> {
  const scope = new Set<Tensor>();
  scopes.push(scope);
  let result: T;
  try {
    result = await fn();
  } catch (e) {
    scopes.splice(scopes.indexOf(scope), 1);
    for (const t of scope) t.dispose();
    throw e;
  }
  endScope(scope, result);
  return result;
}

// ---- autodiff recording ----
let gradEnabled = true;
export function isGradEnabled() {
  return gradEnabled;
}

/** Run without recording the autodiff graph. */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}
/** Run with recording on (used to recompute checkpointed segments inside a backward pass). */
export function withGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = true;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}
export async function noGradAsync<T>(fn: () => Promise<T>): Promise<T> {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return await fn();
  } finally {
    gradEnabled = prev;
  }
}

export function needsGrad(...xs: (Tensor | null | undefined)[]): boolean {
  if (!gradEnabled) return false;
  for (const x of xs) if (x && (x.requiresGrad || x.node)) return true;
  return false;
}

/** Whether a gradient flows to `x` (for backward rules, which run with recording off). */
export function wantsGrad(x: Tensor | null | undefined): boolean {
  return !!x && (x.requiresGrad || !!x.node);
}

/**
 * Attach a backward rule to an op's output when any input needs a gradient. `saved` lists extra tensors
 * (beyond the inputs) that the rule reads, so scopes keep them alive.
 */
export function record(out: Tensor, name: string, inputs: Tensor[], backward: GradNode['backward'], saved: Tensor[] = []): Tensor {
  if (!needsGrad(...inputs)) return out;
  const node: GradNode & { saved?: Tensor[] } = { name, inputs, backward };
  if (saved.length) node.saved = saved;
  out.node = node;
  return out;
}

export function f16ToF32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const h = bits[i];
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const m = h & 0x3ff;
    out[i] = e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
  }
  return out;
}

export function f32ToF16(v: Float32Array): Uint16Array {
  const out = new Uint16Array(v.length);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < v.length; i++) {
    f[0] = v[i];
    const x = u[0];
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    let mant = x & 0x7fffff;
    if (exp === 0xff) {
      out[i] = sign | 0x7c00 | (mant ? 0x200 : 0);
      continue;
    }
    let e = exp - 127 + 15;
    if (e >= 31) {
      out[i] = sign | 0x7c00;
      continue;
    }
    if (e <= 0) {
      if (e < -10) {
        out[i] = sign;
        continue;
      }
      mant |= 0x800000;
      const shift = 14 - e;
      let h = mant >>> shift;
      const rem = mant & ((1 << shift) - 1);
      const half = 1 << (shift - 1);
      if (rem > half || (rem === half && h & 1)) h++;
      out[i] = sign | h;
      continue;
    }
    let h = (e << 10) | (mant >>> 13);
    const rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
    out[i] = sign | h;
  }
  return out;
}
