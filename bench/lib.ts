// Shared pieces of the benchmark harness: the suite/case types, helpers that make a GPU case time its
// completion, a vec4 copy kernel used as the bandwidth baseline, and loaders for peer libraries that run
// on the same Dawn adapter (each loader returns null with a printed reason when the peer cannot run).
import { createRequire } from 'node:module';
import { rt, Uniforms, Tensor, type KernelProfileRow } from '../engine/index.js';
import { grid, WG_INDEX } from '../kernels/util.js';

export type Pass = 'fwd' | 'bwd' | 'fwd+bwd';

export interface BenchCase {
  /** row name inside the suite, e.g. 'add' or 'matmul dA=dC@Bᵀ' */
  name: string;
  /** human-readable shape, e.g. '4096x320 @ 320x1280' */
  shape: string;
  pass: Pass;
  /** 'ours' or the npm name of a peer library */
  library?: string;
  /** floating-point operations of one call (for GFLOP/s) */
  flops?: number;
  /** bytes read + written by one call (for GB/s) */
  bytes?: number;
  /**
   * Allocates inputs and returns the function to time. The function must not resolve before the GPU work it
   * submitted is complete (use `gpuFn` for our engine). Return null to skip the case (printed as a note).
   */
  setup(): Promise<(() => Promise<void>) | null>;
  /** frees what setup allocated */
  teardown?(): Promise<void> | void;
}

export interface BenchSuite {
  name: string;
  cases: BenchCase[];
  /** notes printed under the table (e.g. a peer that could not run) */
  notes?: string[];
}

export interface Row {
  suite: string;
  name: string;
  shape: string;
  library: string;
  pass: Pass;
  median_ms: number;
  gflops: number | null;
  gbps: number | null;
  /** process CPU time per call in ms (lavapipe runs kernels on CPU threads; robust to other load) */
  cpu_ms: number;
  /** with --profile: GPU time per kernel of one call (ours only) */
  profile?: KernelProfileRow[];
}

/** The case on GPU adapters only (skipped on CPU adapters): for options that exist to be measured on a GPU. */
export function gpuOnly(c: BenchCase): BenchCase {
  return { ...c, setup: async () => (rt().gpu.adapterClass === 'cpu' ? null : c.setup()) };
}

/** Wrap an engine call: run it, dispose what it returns, and wait for the GPU to finish. */
export function gpuFn(fn: () => Tensor | Tensor[] | void): () => Promise<void> {
  return async () => {
    const out = fn();
    if (out instanceof Tensor) out.dispose();
    else if (Array.isArray(out)) out.forEach((t) => t.dispose());
    await rt().sync();
  };
}

/**
 * fn() with a setting applied (a forced kernel variant or path), restored afterwards even if fn throws. Our
 * ops pick their kernels when they dispatch, which is synchronous, so wrapping the call is enough.
 */
export function withSetting<T>(apply: () => void, restore: () => void, fn: () => T): T {
  apply();
  try {
    return fn();
  } finally {
    restore();
  }
}

/** Deterministic uniform random data in [-1, 1). */
export function randn(n: number, seed = 1): Float32Array<ArrayBuffer> {
  const out = new Float32Array(n);
  let a = seed >>> 0;
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1;
  }
  return out;
}

const COPY = /* wgsl */ `
${WG_INDEX}
struct P { n: u32, _0: u32, _1: u32, _2: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> Y: array<vec4<f32>>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = wg_index(wid, nwg) * 64u + li;
  if (i < u.n) { Y[i] = X[i]; }
}`;

/** The bandwidth baseline: a vec4 compute-shader copy of `n` floats (n % 4 == 0), as a case. */
export function copyCase(n: number, shape = `${n}`): BenchCase {
  let x: Tensor | null = null;
  let y: Tensor | null = null;
  return {
    name: 'copy',
    shape,
    pass: 'fwd',
    bytes: 8 * n,
    async setup() {
      x = Tensor.from(randn(n, 5), [n]);
      y = Tensor.empty([n]);
      const n4 = n / 4;
      return gpuFn(() =>
        rt().dispatch({
          name: 'bench_copy',
          code: COPY,
          uniforms: new Uniforms().u32(n4, 0, 0, 0).done(),
          bindings: [{ buffer: x!.buffer }, { buffer: y!.buffer }],
          workgroups: grid(Math.ceil(n4 / 64)),
        }),
      );
    },
    teardown() {
      x?.dispose();
      y?.dispose();
    },
  };
}

// ---------------- peers ----------------
// Peers find the GPU through navigator.gpu; run.ts installs the same Dawn GPU object the engine uses.

type Tf = typeof import('@tensorflow/tfjs-core');
let tfPromise: Promise<Tf | null> | null = null;
/** @tensorflow/tfjs-core with its WebGPU backend, or null (reason printed once). */
export function loadTfjs(): Promise<Tf | null> {
  tfPromise ??= (async () => {
    try {
      const tf = await import('@tensorflow/tfjs-core');
      await import('@tensorflow/tfjs-backend-webgpu');
      // tfjs-core's Node entry leaves the gradient functions unregistered (the umbrella package registers
      // them): load its register_all_gradients module, through require so its extensionless imports resolve
      createRequire(import.meta.url)('@tensorflow/tfjs-core/dist/register_all_gradients.js');
      if (!(await tf.setBackend('webgpu'))) throw new Error('setBackend("webgpu") returned false');
      await tf.ready();
      return tf;
    } catch (e) {
      peerNote(`@tensorflow/tfjs-backend-webgpu skipped: ${(e as Error).message.split('\n')[0]}`);
      return null;
    }
  })();
  return tfPromise;
}

export type TfT = import('@tensorflow/tfjs-core').Tensor;

/** Wait for tfjs results by reading one element of each, then free them. */
export async function tfDone(tf: Tf, outs: TfT[]) {
  for (const o of outs) {
    const one = tf.tidy(() => tf.slice(tf.reshape(o, [-1]), 0, 1));
    await one.data();
    one.dispose();
    o.dispose();
  }
}

type Jax = typeof import('@jax-js/jax');
type JaxArray = import('@jax-js/jax').Array;

/** Wait for jax-js results, then free them. */
export async function jaxDone(outs: JaxArray[]) {
  for (const o of outs) {
    await o.blockUntilReady();
    o.dispose();
  }
}

/** Dispose every item of a list and empty it (peer arrays and vjp closures kept between runs). */
export function disposeAll(xs: { dispose(): void }[]) {
  for (const x of xs.splice(0)) x.dispose();
}

let jaxPromise: Promise<Jax | null> | null = null;
/** @jax-js/jax on its WebGPU backend, or null (reason printed once). */
export function loadJax(): Promise<Jax | null> {
  jaxPromise ??= (async () => {
    try {
      const jax = await import('@jax-js/jax');
      const got = await jax.init('webgpu');
      if (!got.includes('webgpu')) throw new Error(`init returned [${got}] without webgpu`);
      jax.defaultDevice('webgpu');
      return jax;
    } catch (e) {
      peerNote(`@jax-js/jax skipped: ${(e as Error).message.split('\n')[0]}`);
      return null;
    }
  })();
  return jaxPromise;
}

export const peerNotes: string[] = [];
function peerNote(msg: string) {
  peerNotes.push(msg);
  console.warn(msg);
}
