// GEGLU as in diffusers' attention feed-forward, after its projection: x [..., 2D] is split into
// (hidden, gate) along the last axis and y = hidden * gelu(gate) with the exact (erf) GELU.
// Forward and backward are one elementwise pass each (vec4 when D % 4 == 0); the backward writes both
// halves of dx from the same loads. Each row is split over TC invocations that each loop over columns
// sub, sub + TC, ... (neighbouring invocations on neighbouring vec4s; many per invocation on CPU adapters,
// where per-workgroup overhead dominates). Inputs larger than one storage binding are processed in row
// windows bound at aligned offsets. x, y, dy and dx share one storage dtype, f32 or f16 (shader-f16); the
// arithmetic is f32 (every load widened, every store narrowed).
import { rt, Uniforms } from '../engine/runtime.js';
import { ShapeError, Tensor, record, wantsGrad } from '../engine/tensor.js';
import { grid, WG_INDEX, memoKernel, flatMain, enableF16, floatDtype, sameFloatDtype, storageType, bindWindow, alignedRowStep } from './util.js';

const kernel = memoKernel(kernelSource);
function kernelSource(vec: boolean, backward: boolean, dt: string): string {
  const V = vec ? 'vec4<f32>' : 'f32';
  const S = vec ? `vec4<${storageType(dt)}>` : storageType(dt);
  return /* wgsl */ `${enableF16(dt)}
${WG_INDEX}
alias V = ${V};
alias S = ${S};
// 1 + erf(z) from erfc(|z|) (Chebyshev fit with fractional error < 1.2e-7 for all z >= 0): 2 - erfc(z) for
// z >= 0 and erfc(-z) for z < 0, which keeps the left tail of gelu accurate instead of cancelling.
fn one_plus_erf(z: V) -> V {
  let a = abs(z);
  let t = 1.0 / (1.0 + 0.5 * a);
  let p = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807
    + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
  let e = t * exp(p - a * a);
  return select(2.0 - e, e, z < V(0.0));
}
struct P { rows: u32, D4: u32, TC: u32, _0: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> X: array<S>;
${
  backward
    ? `@group(0) @binding(2) var<storage, read> G: array<S>;
@group(0) @binding(3) var<storage, read_write> DX: array<S>;`
    : '@group(0) @binding(2) var<storage, read_write> Y: array<S>;'
}
${flatMain('t', 'u.rows * u.TC')}
  let row = t / u.TC;
  let sub = t - row * u.TC;
  for (var c = sub; c < u.D4; c += u.TC) {
    let i = row * u.D4 + c;
    let xi = i + row * u.D4; // row * 2 * D4 + c
    let h = V(X[xi]);
    let gt = V(X[xi + u.D4]);
    let cdf = 0.5 * one_plus_erf(gt * 0.7071067811865476);
    ${
      backward
        ? `let g = V(G[i]);
    DX[xi] = S(g * gt * cdf);
    DX[xi + u.D4] = S(g * h * (cdf + gt * 0.3989422804014327 * exp(-0.5 * gt * gt)));`
        : 'Y[i] = S(h * gt * cdf);'
    }
  }
}`;
}

/** vec4 outputs per invocation (null: the adapter's preset). For benchmarks and tests. */
let perInvocation: number | null = null;
export function setGegluChunk(n: number | null) {
  perInvocation = n === null ? null : Math.max(1, Math.floor(n));
}

function run(name: string, x: Tensor, g: Tensor | null, out: Tensor, D: number) {
  const r = rt();
  const rows = x.size / (2 * D);
  const vec = D % 4 === 0;
  const D4 = vec ? D / 4 : D;
  const bytes = x.dtype === 'f16' ? 2 : 4;
  const rowBytes = 2 * D * bytes;
  let per = rows;
  if (rows * rowBytes > r.maxBindingBytes) {
    const step = alignedRowStep(D, bytes); // rows per aligned offset step of the D-wide tensors
    per = Math.floor(r.maxBindingBytes / rowBytes / step) * step;
    if (per < 1) throw new ShapeError(`${name}: ${step} row(s) of ${rowBytes} bytes exceed the storage binding limit (${r.maxBindingBytes})`);
  }
  const code = kernel(vec, !!g, x.dtype);
  const TC = Math.ceil(D4 / (perInvocation ?? (r.gpu.adapterClass === 'cpu' ? 64 : 4)));
  for (let r0 = 0; r0 < rows; r0 += per) {
    const nr = Math.min(per, rows - r0);
    // rows of 2D (x, dx) and of D (y, dy) elements; windows start at aligned offsets, so their shift is 0
    const wide = (t: Tensor) => bindWindow(t, r0 * 2 * D, nr * 2 * D).bind;
    const narrow = (t: Tensor) => bindWindow(t, r0 * D, nr * D).bind;
    r.dispatch({
      name,
      code,
      uniforms: new Uniforms().u32(nr, D4, TC, 0).done(),
      bindings: g ? [wide(x), narrow(g), wide(out)] : [wide(x), narrow(out)],
      workgroups: grid(Math.ceil((nr * TC) / 64)),
    });
  }
}

/**
 * diffusers GEGLU after its projection: x [..., 2D] -> hidden * gelu(gate), [..., D] (erf GELU), in x's dtype
 * (f32, or f16 with shader-f16). Gradient for x, in x's dtype (dy must have y's).
 */
export function geglu(x: Tensor): Tensor {
  if (x.rank < 1 || x.shape[x.rank - 1] % 2) throw new ShapeError(`geglu: last dim must be even (2 * D), got [${x.shape}]`);
  const dt = floatDtype('geglu', 'x', x);
  const D = x.shape[x.rank - 1] / 2;
  const y = Tensor.empty([...x.shape.slice(0, -1), D], dt, 'geglu');
  if (y.size === 0) return y;
  run('geglu', x, null, y, D);
  return record(y, 'geglu', [x], (g) => {
    if (!wantsGrad(x)) return [null];
    sameFloatDtype('geglu backward', [y, g], ['y', 'dy']);
    const dx = Tensor.empty(x.shape, dt, 'geglu_backward');
    run('geglu_backward', x, g, dx, D);
    return [dx];
  });
}
