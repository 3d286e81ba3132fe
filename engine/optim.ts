// Adam and AdamW over tensors, with PyTorch's update order (bias-corrected step size, eps added after
// the square root of the corrected second moment) so that trajectories match torch.optim. One fused
// kernel updates parameter, first and second moments in place.
import { rt, Uniforms } from './runtime.js';
import { ShapeError, Tensor, noGrad } from './tensor.js';
import { zeros } from '../kernels/elementwise.js';
import { grid, WG_INDEX } from '../kernels/util.js';

const UPDATE = /* wgsl */ `
${WG_INDEX}
struct P { n: u32, decoupled: u32, lr: f32, b1: f32, b2: f32, eps: f32, wd: f32, bc1: f32, bc2sqrt: f32, _0: u32, _1: u32, _2: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var<storage, read> G: array<f32>;
@group(0) @binding(2) var<storage, read_write> X: array<f32>;
@group(0) @binding(3) var<storage, read_write> M: array<f32>;
@group(0) @binding(4) var<storage, read_write> V: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = wg_index(wid, nwg) * 64u + li;
  if (i >= u.n) { return; }
  var x = X[i];
  var g = G[i];
  if (u.decoupled == 1u) { x = x * (1.0 - u.lr * u.wd); } else { g = g + u.wd * x; }
  let m = u.b1 * M[i] + (1.0 - u.b1) * g;
  let v = u.b2 * V[i] + (1.0 - u.b2) * g * g;
  M[i] = m;
  V[i] = v;
  let denom = sqrt(v) / u.bc2sqrt + u.eps;
  X[i] = x - (u.lr / u.bc1) * m / denom;
}`;

export interface AdamOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
  /** decoupled weight decay (AdamW); default false for Adam, true for AdamW */
  decoupled?: boolean;
}

export class Adam {
  lr: number;
  readonly betas: [number, number];
  readonly eps: number;
  weightDecay: number;
  readonly decoupled: boolean;
  stepCount = 0;
  private state = new Map<Tensor, { m: Tensor; v: Tensor }>();

  constructor(readonly params: Tensor[], opts: AdamOptions = {}) {
    this.lr = opts.lr ?? 1e-3;
    this.betas = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0;
    this.decoupled = opts.decoupled ?? false;
  }

  /** Update every parameter in place from `grads` (same order as params) or from each param's `.grad`. */
  step(grads?: (Tensor | null)[]) {
    this.stepCount++;
    const t = this.stepCount;
    const [b1, b2] = this.betas;
    noGrad(() => {
      this.params.forEach((p, i) => {
        const g = grads ? grads[i] : p.grad;
        if (!g) return;
        if (g.size !== p.size) throw new ShapeError(`Adam: gradient [${g.shape}] does not match parameter [${p.shape}]`);
        let s = this.state.get(p);
        if (!s) {
          s = { m: zeros(p.shape).keep(), v: zeros(p.shape).keep() };
          this.state.set(p, s);
        }
        rt().dispatch({
          name: 'adam_update',
          code: UPDATE,
          uniforms: new Uniforms()
            .u32(p.size, this.decoupled ? 1 : 0)
            .f32(this.lr, b1, b2, this.eps, this.weightDecay, 1 - b1 ** t, Math.sqrt(1 - b2 ** t))
            .u32(0, 0, 0)
            .done(),
          bindings: [g, p, s.m, s.v].map((x) => ({ buffer: x.buffer })),
          workgroups: grid(Math.ceil(p.size / 64)),
        });
        p.markModified();
      });
    });
  }

  zeroGrad() {
    for (const p of this.params) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  /** Moments for checkpointing a run (read back to host). */
  async exportState(): Promise<{ step: number; m: Float32Array[]; v: Float32Array[] }> {
    const m: Float32Array[] = [];
    const v: Float32Array[] = [];
    for (const p of this.params) {
      const s = this.state.get(p);
      m.push(s ? ((await s.m.data()) as Float32Array) : new Float32Array(p.size));
      v.push(s ? ((await s.v.data()) as Float32Array) : new Float32Array(p.size));
    }
    return { step: this.stepCount, m, v };
  }

  importState(st: { step: number; m: Float32Array[]; v: Float32Array[] }) {
    this.stepCount = st.step;
    this.params.forEach((p, i) => {
      const old = this.state.get(p);
      old?.m.dispose();
      old?.v.dispose();
      this.state.set(p, { m: Tensor.from(st.m[i], p.shape).keep(), v: Tensor.from(st.v[i], p.shape).keep() });
    });
  }

  dispose() {
    for (const s of this.state.values()) {
      s.m.dispose();
      s.v.dispose();
    }
    this.state.clear();
  }
}

export class AdamW extends Adam {
  constructor(params: Tensor[], opts: AdamOptions = {}) {
    super(params, { weightDecay: 0.01, ...opts, decoupled: true });
  }
}
