// Test helpers: seeded random data, the normalized error `max|err| / max|ref|`, and gradient checks of a
// GPU op's backward against central finite differences of its float64 CPU reference.
import { expect } from 'vitest';
import { init, rt, Tensor, grad, tidy, type Runtime } from '../../engine/index.js';
import { f16ToF32, f32ToF16 } from '../../engine/tensor.js';
import type { RT } from '../../kernels/core.ref.js';

export async function gpu(): Promise<Runtime> {
  return init();
}

/** Names of the kernels dispatched while running fn (which variant or path an op took). */
export async function dispatchedBy(fn: () => void | Promise<void>): Promise<string[]> {
  const r = rt();
  const names: string[] = [];
  const orig = r.dispatch.bind(r);
  r.dispatch = (spec) => {
    names.push(spec.name);
    orig(spec);
  };
  try {
    await fn();
  } finally {
    r.dispatch = orig;
  }
  return names;
}

/** Deterministic pseudo-random numbers (mulberry32) in [lo, hi). */
export function rand(n: number, seed = 1, lo = -1, hi = 1): Float32Array {
  let a = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = lo + (hi - lo) * (((t ^ (t >>> 14)) >>> 0) / 4294967296);
  }
  return out;
}

/** The values an f16 tensor made from `d` holds (round to nearest even, as `Tensor.from(d, shape, 'f16')` converts), as f32. */
export function f16Rounded(d: Float32Array): Float32Array {
  return f16ToF32(f32ToF16(d));
}

/**
 * Runs `run` twice, as is and with `rt().maxBindingBytes` lowered to `limit` (which makes ops split their work into
 * windows), and returns both results read back plus the kernels the split run dispatched. The limit is restored
 * whatever happens.
 */
export async function splitRun(limit: number, run: () => Tensor[]): Promise<{ want: Float32Array[]; got: Float32Array[]; names: string[] }> {
  const read = async (ts: Tensor[]) => {
    const out = (await Promise.all(ts.map((t) => t.data()))) as Float32Array[];
    ts.forEach((t) => t.dispose());
    return out;
  };
  const want = await read(run());
  const r = rt();
  const saved = r.maxBindingBytes;
  let split: Tensor[] = [];
  try {
    r.maxBindingBytes = limit;
    const names = await dispatchedBy(() => {
      split = run();
    });
    return { want, got: await read(split), names };
  } finally {
    r.maxBindingBytes = saved;
  }
}

export function relErr(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  expect(got.length).toBe(ref.length);
  let err = 0;
  let mx = 0;
  for (let i = 0; i < ref.length; i++) {
    const e = Math.abs(got[i] - ref[i]);
    err = Number.isNaN(e) ? Infinity : Math.max(err, e);
    mx = Math.max(mx, Math.abs(ref[i]));
  }
  return mx === 0 ? err : err / mx;
}

export function expectClose(got: ArrayLike<number>, ref: ArrayLike<number>, tol: number, what: string) {
  const e = relErr(got, ref);
  if (!(e <= tol)) throw new Error(`${what}: max|err|/max|ref| = ${e.toExponential(3)} > ${tol}`);
}

/**
 * Checks the gradients of a GPU function against central finite differences of its float64 reference.
 * The scalar is L = sum(f(x) * R) for a fixed random R. Checks every element of every input when small,
 * or a seeded sample of `samples` elements.
 */
export async function checkGrad(
  name: string,
  inputs: { data: Float32Array; shape: number[] }[],
  gpuFn: (...xs: Tensor[]) => Tensor,
  refFn: (...xs: RT[]) => RT,
  opts: { eps?: number; tol?: number; samples?: number; which?: number[] } = {},
) {
  const { eps = 1e-4, tol = 5e-4, samples = 24 } = opts;
  const which = opts.which ?? inputs.map((_, i) => i);
  const ref64 = inputs.map((x) => ({ shape: [...x.shape], data: Float64Array.from(x.data) }));
  const y0 = refFn(...ref64);
  const R = rand(y0.data.length, 999);
  const loss = (xs: RT[]) => {
    const y = refFn(...xs);
    let s = 0;
    for (let i = 0; i < y.data.length; i++) s += y.data[i] * R[i];
    return s;
  };
  const gpuGrads = await tidy(() => {
    const ts = inputs.map((x) => Tensor.from(x.data, x.shape).requireGrad());
    const y = gpuFn(...ts);
    expect([...y.shape]).toEqual(y0.shape);
    const gs = grad(y, which.map((i) => ts[i]), Tensor.from(R, y.shape));
    return gs;
  });
  for (let w = 0; w < which.length; w++) {
    const k = which[w];
    const got = (await gpuGrads[w].data()) as Float32Array;
    const n = inputs[k].data.length;
    const idx = n <= samples ? [...Array(n).keys()] : [...rand(samples, 7 + k, 0, n)].map(Math.floor);
    const fd: number[] = [];
    const gs: number[] = [];
    for (const i of idx) {
      const x = ref64[k].data[i];
      ref64[k].data[i] = x + eps;
      const lp = loss(ref64);
      ref64[k].data[i] = x - eps;
      const lm = loss(ref64);
      ref64[k].data[i] = x;
      fd.push((lp - lm) / (2 * eps));
      gs.push(got[i]);
    }
    expectClose(gs, fd, tol, `${name}: d/d input ${k}`);
  }
  gpuGrads.forEach((g) => g.dispose());
}
