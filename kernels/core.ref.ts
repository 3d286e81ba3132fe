// Float64 CPU reference for the core ops (elementwise, reductions, data movement, matmul, softmax,
// layer norm). Used only by tests: slow, obvious code that the GPU kernels are checked against, and
// the function that finite differences are taken of.
export interface RT {
  shape: number[];
  data: Float64Array;
}

export const rprod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
export function rstrides(shape: readonly number[]) {
  const st = new Array(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    st[i] = s;
    s *= shape[i];
  }
  return st as number[];
}
export const rt64 = (data: ArrayLike<number>, shape: number[]): RT => ({ shape: [...shape], data: Float64Array.from(data) });

function bshape(a: number[], b: number[]) {
  const n = Math.max(a.length, b.length);
  return [...Array(n)].map((_, i) => {
    const x = a[a.length - n + i] ?? 1;
    const y = b[b.length - n + i] ?? 1;
    return x === 1 ? y : x;
  });
}
function bindex(shape: number[], out: number[], o: number): number {
  // index into `shape` of output flat index o (broadcast)
  const ost = rstrides(out);
  const st = rstrides(shape);
  const off = out.length - shape.length;
  let idx = 0;
  for (let d = 0; d < out.length; d++) {
    const c = Math.floor(o / ost[d]) % out[d];
    if (d >= off && shape[d - off] !== 1) idx += c * st[d - off];
  }
  return idx;
}

export function rmap(xs: RT[], f: (...v: number[]) => number): RT {
  const shape = xs.map((x) => x.shape).reduce(bshape);
  const n = rprod(shape);
  const data = new Float64Array(n);
  for (let o = 0; o < n; o++) data[o] = f(...xs.map((x) => x.data[bindex(x.shape, shape, o)]));
  return { shape, data };
}

export function erf(x: number): number {
  // series / continued fraction to double precision
  const ax = Math.abs(x);
  if (ax < 2.5) {
    let sum = ax;
    let term = ax;
    for (let n = 1; n < 80; n++) {
      term *= (-ax * ax) / n;
      sum += term / (2 * n + 1);
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc continued fraction
  let f = 0;
  for (let n = 60; n >= 1; n--) f = n / 2 / (ax + f);
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / (ax + f);
  return Math.sign(x) * (1 - erfc);
}
const sig = (x: number) => 1 / (1 + Math.exp(-x));
export const UNARY_REF: Record<string, (x: number, p0: number, p1: number) => number> = {
  neg: (x) => -x,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  rsqrt: (x) => 1 / Math.sqrt(x),
  abs: Math.abs,
  sigmoid: sig,
  silu: (x) => x * sig(x),
  gelu: (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)),
  quick_gelu: (x) => x * sig(1.702 * x),
  tanh: Math.tanh,
  relu: (x) => Math.max(0, x),
  clamp: (x, lo, hi) => Math.min(hi, Math.max(lo, x)),
  pow: (x, p) => Math.sign(x) ** (p % 2 === 1 || p % 2 === -1 ? 1 : 0) * Math.abs(x) ** p,
  affine: (x, s, t) => x * s + t,
};
export const BINARY_REF: Record<string, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  maximum: Math.max,
  minimum: Math.min,
};

export function rreduce(x: RT, axes: number[], op: 'sum' | 'max' | 'mean', keep = false): RT {
  const ax = axes.map((a) => (a < 0 ? a + x.shape.length : a));
  const outShape = x.shape.map((d, i) => (ax.includes(i) ? 1 : d));
  const out = new Float64Array(rprod(outShape)).fill(op === 'max' ? -Infinity : 0);
  const st = rstrides(x.shape);
  const ost = rstrides(outShape);
  for (let i = 0; i < x.data.length; i++) {
    let o = 0;
    for (let d = 0; d < x.shape.length; d++) if (!ax.includes(d)) o += (Math.floor(i / st[d]) % x.shape[d]) * ost[d];
    out[o] = op === 'max' ? Math.max(out[o], x.data[i]) : out[o] + x.data[i];
  }
  if (op === 'mean') {
    const n = ax.reduce((a, i) => a * x.shape[i], 1);
    for (let i = 0; i < out.length; i++) out[i] /= n;
  }
  return { shape: keep ? outShape : x.shape.filter((_, i) => !ax.includes(i)), data: out };
}

export function rpermute(x: RT, perm: number[]): RT {
  const shape = perm.map((p) => x.shape[p]);
  const st = rstrides(x.shape);
  const ost = rstrides(shape);
  const data = new Float64Array(x.data.length);
  for (let o = 0; o < data.length; o++) {
    let i = 0;
    for (let d = 0; d < shape.length; d++) i += (Math.floor(o / ost[d]) % shape[d]) * st[perm[d]];
    data[o] = x.data[i];
  }
  return { shape, data };
}

export function rslice(x: RT, ranges: [number, number][]): RT {
  const shape = x.shape.map((d, i) => (ranges[i] ? ranges[i][1] - ranges[i][0] : d));
  const st = rstrides(x.shape);
  const ost = rstrides(shape);
  const data = new Float64Array(rprod(shape));
  for (let o = 0; o < data.length; o++) {
    let i = 0;
    for (let d = 0; d < shape.length; d++) i += ((Math.floor(o / ost[d]) % shape[d]) + (ranges[d]?.[0] ?? 0)) * st[d];
    data[o] = x.data[i];
  }
  return { shape, data };
}

export function rconcat(xs: RT[], axis: number): RT {
  const shape = [...xs[0].shape];
  shape[axis] = xs.reduce((a, x) => a + x.shape[axis], 0);
  const ost = rstrides(shape);
  const data = new Float64Array(rprod(shape));
  let off = 0;
  for (const x of xs) {
    const st = rstrides(x.shape);
    for (let i = 0; i < x.data.length; i++) {
      let o = 0;
      for (let d = 0; d < shape.length; d++) o += ((Math.floor(i / st[d]) % x.shape[d]) + (d === axis ? off : 0)) * ost[d];
      data[o] = x.data[i];
    }
    off += x.shape[axis];
  }
  return { shape, data };
}

export function rpad(x: RT, pads: [number, number][]): RT {
  const shape = x.shape.map((d, i) => d + (pads[i]?.[0] ?? 0) + (pads[i]?.[1] ?? 0));
  const st = rstrides(x.shape);
  const ost = rstrides(shape);
  const data = new Float64Array(rprod(shape));
  for (let i = 0; i < x.data.length; i++) {
    let o = 0;
    for (let d = 0; d < shape.length; d++) o += ((Math.floor(i / st[d]) % x.shape[d]) + (pads[d]?.[0] ?? 0)) * ost[d];
    data[o] = x.data[i];
  }
  return { shape, data };
}

export function rgather(table: RT, ids: number[]): RT {
  const D = table.shape[1];
  const data = new Float64Array(ids.length * D);
  ids.forEach((id, i) => data.set(table.data.subarray(id * D, id * D + D), i * D));
  return { shape: [ids.length, D], data };
}

export function rmatmul(a: RT, b: RT, transA = false, transB = false): RT {
  const M = transA ? a.shape.at(-1)! : a.shape.at(-2)!;
  const K = transA ? a.shape.at(-2)! : a.shape.at(-1)!;
  const N = transB ? b.shape.at(-2)! : b.shape.at(-1)!;
  const Ba = rprod(a.shape.slice(0, -2));
  const Bb = rprod(b.shape.slice(0, -2));
  const B = Math.max(Ba, Bb);
  const data = new Float64Array(B * M * N);
  for (let bt = 0; bt < B; bt++) {
    const ao = Ba === 1 ? 0 : bt * M * K;
    const bo = Bb === 1 ? 0 : bt * K * N;
    for (let m = 0; m < M; m++)
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++)
          s += a.data[ao + (transA ? k * M + m : m * K + k)] * b.data[bo + (transB ? n * K + k : k * N + n)];
        data[bt * M * N + m * N + n] = s;
      }
  }
  const batch = (Ba >= Bb ? a : b).shape.slice(0, -2);
  return { shape: [...batch, M, N], data };
}

export function rsoftmax(x: RT, scale = 1): RT {
  const L = x.shape.at(-1)!;
  const data = new Float64Array(x.data.length);
  for (let r = 0; r < x.data.length / L; r++) {
    let m = -Infinity;
    for (let i = 0; i < L; i++) m = Math.max(m, x.data[r * L + i] * scale);
    let s = 0;
    for (let i = 0; i < L; i++) s += Math.exp(x.data[r * L + i] * scale - m);
    for (let i = 0; i < L; i++) data[r * L + i] = Math.exp(x.data[r * L + i] * scale - m) / s;
  }
  return { shape: [...x.shape], data };
}

export function rlayerNorm(x: RT, w: RT, b: RT, eps = 1e-5): RT {
  const L = x.shape.at(-1)!;
  const data = new Float64Array(x.data.length);
  for (let r = 0; r < x.data.length / L; r++) {
    let mean = 0;
    for (let i = 0; i < L; i++) mean += x.data[r * L + i];
    mean /= L;
    let v = 0;
    for (let i = 0; i < L; i++) v += (x.data[r * L + i] - mean) ** 2;
    const rstd = 1 / Math.sqrt(v / L + eps);
    for (let i = 0; i < L; i++) data[r * L + i] = (x.data[r * L + i] - mean) * rstd * w.data[i] + b.data[i];
  }
  return { shape: [...x.shape], data };
}
