/**
 * DDIM scheduler, matching diffusers 0.25.1 `DDIMScheduler` (eta = 0).
 *
 * Two uses:
 *  - `stepCoeffs(t)`: with eta = 0 and no clipping, one DDIM step is linear in (x, model_output):
 *      prev_sample          = sample     * x + model     * model_output
 *      pred_original_sample = predSample * x + predModel * model_output
 *    so a GPU kernel (or an autodiff graph) only needs four scalars per step. They are computed
 *    in float64 from the float32 alphas_cumprod.
 *  - `step(...)`: a CPU reference that repeats diffusers' float32 operations one by one.
 *
 * betas/alphas_cumprod reproduce PyTorch's float32 values bit for bit (see `torchLinspaceF32`).
 */

export type BetaSchedule = 'linear' | 'scaled_linear' | 'squaredcos_cap_v2';
export type TimestepSpacing = 'leading' | 'trailing' | 'linspace';
export type PredictionType = 'epsilon' | 'v_prediction' | 'sample';

export interface DdimConfig {
  numTrainTimesteps: number;
  betaStart: number;
  betaEnd: number;
  betaSchedule: BetaSchedule;
  trainedBetas: number[] | null;
  clipSample: boolean;
  clipSampleRange: number;
  setAlphaToOne: boolean;
  stepsOffset: number;
  timestepSpacing: TimestepSpacing;
  predictionType: PredictionType;
}

/** diffusers' `DDIMScheduler.__init__` defaults (note clip_sample defaults to true there). */
export const DDIM_DEFAULTS: DdimConfig = {
  numTrainTimesteps: 1000,
  betaStart: 0.0001,
  betaEnd: 0.02,
  betaSchedule: 'linear',
  trainedBetas: null,
  clipSample: true,
  clipSampleRange: 1.0,
  setAlphaToOne: true,
  stepsOffset: 0,
  timestepSpacing: 'leading',
  predictionType: 'epsilon',
};

export interface DdimStepCoeffs {
  t: number;
  prevT: number;
  alphaProdT: number;
  alphaProdPrev: number;
  /** prev_sample = sample * x + model * model_output */
  sample: number;
  model: number;
  /** pred_original_sample = predSample * x + predModel * model_output */
  predSample: number;
  predModel: number;
}

export interface DdimStepOutput {
  prevSample: Float32Array;
  predOriginalSample: Float32Array;
}

const fround = Math.fround;

// ---------------------------------------------------------------------------------------------
// Float32 helpers that mirror PyTorch CPU arithmetic.
// ---------------------------------------------------------------------------------------------

const f32Bits = new Float32Array(1);
const u32Bits = new Uint32Array(f32Bits.buffer);

/** The float32 next to `r` (a float32) in the direction of `toward`. */
function nextFloat32(r: number, toward: number): number {
  if (r === 0) return toward > 0 ? 1.401298464324817e-45 : -1.401298464324817e-45;
  f32Bits[0] = r;
  // For positive r, a larger magnitude means a larger bit pattern (and the reverse for negative).
  u32Bits[0] += (toward > r) === (r > 0) ? 1 : -1;
  return f32Bits[0];
}

/**
 * Single-rounding float32 fused multiply-add a*b + c for float32 inputs. PyTorch's CPU kernels
 * are compiled with FMA contraction, so `start + step * i` in its linspace is one fmaf.
 */
export function fmaF32(a: number, b: number, c: number): number {
  const p = a * b; // exact: two 24-bit significands fit in 53 bits
  const s = p + c;
  // TwoSum: s + e == p + c exactly.
  const bb = s - p;
  const e = p - (s - bb) + (c - bb);
  const r = fround(s);
  if (e === 0 || r === s) return r;
  // Double rounding only goes wrong when s sits exactly halfway between two float32 values.
  const other = nextFloat32(r, s);
  if ((r + other) / 2 !== s) return r;
  return e > 0 === other > r ? other : r;
}

/**
 * `torch.linspace(start, end, steps, dtype=torch.float32)` on CPU (x86 AVX2 + FMA build, one
 * thread), bit for bit. The kernel computes `start + step*i` below the halfway index and
 * `end - step*(steps-1-i)` above it, but its vectorized path fills blocks of 2x8 lanes as
 * `base + k*step` from the block's first value, leaving the tail to the scalar formula.
 */
export function torchLinspaceF32(start: number, end: number, steps: number): Float32Array {
  const out = new Float32Array(steps);
  if (steps === 0) return out;
  if (steps === 1) {
    out[0] = fround(start);
    return out;
  }
  const s = fround(start);
  const e = fround(end);
  const step = fround(fround(e - s) / (steps - 1));
  const halfway = Math.floor(steps / 2);
  const scalarAt = (i: number): number =>
    i < halfway ? fmaF32(step, fround(i), s) : fmaF32(-step, fround(steps - i - 1), e);
  const lanes = 8;
  let i = 0;
  for (; i <= steps - 2 * lanes; i += 2 * lanes) {
    for (let v = i; v < i + 2 * lanes; v += lanes) {
      const base = scalarAt(v);
      out[v] = base;
      for (let k = 1; k < lanes; k++) out[v + k] = fmaF32(k, step, base);
    }
  }
  for (; i < steps; i++) out[i] = scalarAt(i);
  return out;
}

/** numpy's round-half-to-even. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x - Math.trunc(x)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

// ---------------------------------------------------------------------------------------------
// Scheduler.
// ---------------------------------------------------------------------------------------------

export class DdimScheduler {
  readonly config: DdimConfig;
  readonly betas: Float32Array;
  readonly alphas: Float32Array;
  readonly alphasCumprod: Float32Array;
  readonly finalAlphaCumprod: number;
  /** Standard deviation of the initial noise; 1 for DDIM. */
  readonly initNoiseSigma = 1;
  numInferenceSteps: number | null = null;
  timesteps: number[];

  constructor(config: Partial<DdimConfig> = {}) {
    const c: DdimConfig = { ...DDIM_DEFAULTS, ...config };
    this.config = c;
    const n = c.numTrainTimesteps;
    if (c.trainedBetas) {
      this.betas = Float32Array.from(c.trainedBetas);
    } else if (c.betaSchedule === 'linear') {
      this.betas = torchLinspaceF32(c.betaStart, c.betaEnd, n);
    } else if (c.betaSchedule === 'scaled_linear') {
      // linspace(sqrt(b0), sqrt(b1)) in float32, then squared in float32.
      const root = torchLinspaceF32(Math.sqrt(c.betaStart), Math.sqrt(c.betaEnd), n);
      this.betas = root.map((x) => fround(x * x));
    } else if (c.betaSchedule === 'squaredcos_cap_v2') {
      // betas_for_alpha_bar: float64 in Python, then a float32 tensor.
      const alphaBar = (t: number) => Math.cos(((t + 0.008) / 1.008) * Math.PI / 2) ** 2;
      this.betas = new Float32Array(n);
      for (let i = 0; i < n; i++) this.betas[i] = Math.min(1 - alphaBar((i + 1) / n) / alphaBar(i / n), 0.999);
    } else {
      throw new Error(`DDIM: unsupported beta_schedule ${JSON.stringify(c.betaSchedule)}`);
    }
    if (this.betas.length !== n) throw new Error(`DDIM: ${this.betas.length} betas for ${n} train timesteps`);
    this.alphas = this.betas.map((b) => fround(1 - b));
    // torch.cumprod on CPU accumulates float32 inputs in double and rounds each output.
    this.alphasCumprod = new Float32Array(n);
    let acc = 1;
    for (let i = 0; i < n; i++) {
      acc *= this.alphas[i];
      this.alphasCumprod[i] = acc;
    }
    this.finalAlphaCumprod = c.setAlphaToOne ? 1 : this.alphasCumprod[0];
    this.timesteps = Array.from({ length: n }, (_, i) => n - 1 - i);
  }

  /**
   * From a diffusers `scheduler_config.json` object (snake_case). Unknown keys (_class_name,
   * skip_prk_steps, ...) are ignored; missing keys take DDIMScheduler's defaults.
   */
  static fromConfig(json: Record<string, unknown>): DdimScheduler {
    const c: Partial<DdimConfig> = {};
    const num = (k: string) => (typeof json[k] === 'number' ? (json[k] as number) : undefined);
    const bool = (k: string) => (typeof json[k] === 'boolean' ? (json[k] as boolean) : undefined);
    const str = (k: string) => (typeof json[k] === 'string' ? (json[k] as string) : undefined);
    const set = <K extends keyof DdimConfig>(key: K, v: DdimConfig[K] | undefined) => {
      if (v !== undefined) c[key] = v;
    };
    set('numTrainTimesteps', num('num_train_timesteps'));
    set('betaStart', num('beta_start'));
    set('betaEnd', num('beta_end'));
    set('betaSchedule', str('beta_schedule') as BetaSchedule | undefined);
    set('trainedBetas', Array.isArray(json.trained_betas) ? (json.trained_betas as number[]) : undefined);
    set('clipSample', bool('clip_sample'));
    set('clipSampleRange', num('clip_sample_range'));
    set('setAlphaToOne', bool('set_alpha_to_one'));
    set('stepsOffset', num('steps_offset'));
    set('timestepSpacing', str('timestep_spacing') as TimestepSpacing | undefined);
    set('predictionType', str('prediction_type') as PredictionType | undefined);
    if (json.thresholding === true) throw new Error('DDIM: thresholding is not supported');
    if (json.rescale_betas_zero_snr === true) throw new Error('DDIM: rescale_betas_zero_snr is not supported');
    return new DdimScheduler(c);
  }

  /** Integer timesteps for `n` inference steps, highest first (diffusers `set_timesteps`). */
  setTimesteps(n: number): number[] {
    const c = this.config;
    const N = c.numTrainTimesteps;
    if (!Number.isInteger(n) || n < 1 || n > N) throw new Error(`DDIM: num_inference_steps must be in 1..${N}, got ${n}`);
    let ts: number[];
    if (c.timestepSpacing === 'leading') {
      const ratio = Math.floor(N / n);
      ts = Array.from({ length: n }, (_, i) => (n - 1 - i) * ratio + c.stepsOffset);
    } else if (c.timestepSpacing === 'linspace') {
      // np.linspace(0, N-1, n).round()[::-1] in float64; numpy pins the last value to the end point.
      const step = n > 1 ? (N - 1) / (n - 1) : 0;
      const vals = Array.from({ length: n }, (_, i) => (i === n - 1 && n > 1 ? N - 1 : i * step));
      ts = vals.map(roundHalfEven).reverse();
    } else if (c.timestepSpacing === 'trailing') {
      // np.round(np.arange(N, 0, -N/n)) - 1; numpy's arange fills start + i*delta, with delta
      // re-derived from the first two values.
      const ratio = N / n;
      const len = Math.ceil(N / ratio);
      const delta = N - ratio - N;
      ts = Array.from({ length: len }, (_, i) => roundHalfEven(N + i * delta) - 1);
    } else {
      throw new Error(`DDIM: unsupported timestep_spacing ${JSON.stringify(c.timestepSpacing)}`);
    }
    this.numInferenceSteps = n;
    this.timesteps = ts;
    return ts;
  }

  private requireSteps(): number {
    if (this.numInferenceSteps === null) throw new Error('DDIM: call setTimesteps() first');
    return this.numInferenceSteps;
  }

  /** diffusers: prev_timestep = t - num_train_timesteps // num_inference_steps (any spacing). */
  prevTimestep(t: number): number {
    return t - Math.floor(this.config.numTrainTimesteps / this.requireSteps());
  }

  private alphaAt(t: number): number {
    const a = this.alphasCumprod[t];
    if (a === undefined) throw new Error(`DDIM: timestep ${t} is outside 0..${this.alphasCumprod.length - 1}`);
    return a;
  }

  /** Linear coefficients of step t (eta = 0). Clipping would make the step non-linear. */
  stepCoeffs(t: number): DdimStepCoeffs {
    if (this.config.clipSample) throw new Error('DDIM: clip_sample makes the step non-linear; no coefficients');
    const prevT = this.prevTimestep(t);
    const alphaProdT = this.alphaAt(t);
    const alphaProdPrev = prevT >= 0 ? this.alphaAt(prevT) : this.finalAlphaCumprod;
    const sa = Math.sqrt(alphaProdT);
    const sb = Math.sqrt(1 - alphaProdT);
    const sPrev = Math.sqrt(alphaProdPrev);
    const sDir = Math.sqrt(1 - alphaProdPrev); // eta = 0: no variance term
    // x0 = p0*x + p1*m and eps = e0*x + e1*m; then prev = sPrev*x0 + sDir*eps.
    let p0: number, p1: number, e0: number, e1: number;
    switch (this.config.predictionType) {
      case 'epsilon':
        [p0, p1, e0, e1] = [1 / sa, -sb / sa, 0, 1];
        break;
      case 'v_prediction':
        [p0, p1, e0, e1] = [sa, -sb, sb, sa];
        break;
      case 'sample':
        [p0, p1, e0, e1] = [0, 1, 1 / sb, -sa / sb];
        break;
      default:
        throw new Error(`DDIM: unsupported prediction_type ${JSON.stringify(this.config.predictionType)}`);
    }
    return {
      t,
      prevT,
      alphaProdT,
      alphaProdPrev,
      sample: sPrev * p0 + sDir * e0,
      model: sPrev * p1 + sDir * e1,
      predSample: p0,
      predModel: p1,
    };
  }

  /** Coefficients for every timestep of the current schedule, in order. */
  allStepCoeffs(): DdimStepCoeffs[] {
    this.requireSteps();
    return this.timesteps.map((t) => this.stepCoeffs(t));
  }

  /**
   * One DDIM step on the CPU (eta = 0), in diffusers' float32 order of operations: every tensor
   * op rounds to float32, and `x ** 0.5` is a float32 sqrt.
   */
  step(modelOutput: Float32Array, t: number, sample: Float32Array): DdimStepOutput {
    if (modelOutput.length !== sample.length) throw new Error('DDIM: model output and sample sizes differ');
    const prevT = this.prevTimestep(t);
    const alphaProdT = this.alphaAt(t);
    const alphaProdPrev = prevT >= 0 ? this.alphaAt(prevT) : this.finalAlphaCumprod;
    const betaProdT = fround(1 - alphaProdT);
    const sa = fround(Math.sqrt(alphaProdT));
    const sb = fround(Math.sqrt(betaProdT));
    const sPrev = fround(Math.sqrt(alphaProdPrev));
    // (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 with std_dev_t = 0.
    const sDir = fround(Math.sqrt(fround(1 - alphaProdPrev)));
    const n = sample.length;
    const x0 = new Float32Array(n);
    const prev = new Float32Array(n);
    const kind = this.config.predictionType;
    const clip = this.config.clipSample;
    const range = this.config.clipSampleRange;
    for (let i = 0; i < n; i++) {
      const x = sample[i];
      const m = modelOutput[i];
      let p: number;
      let eps: number;
      if (kind === 'epsilon') {
        p = fround(fround(x - fround(sb * m)) / sa);
        eps = m;
      } else if (kind === 'v_prediction') {
        p = fround(fround(sa * x) - fround(sb * m));
        eps = fround(fround(sa * m) + fround(sb * x));
      } else if (kind === 'sample') {
        p = m;
        eps = fround(fround(x - fround(sa * p)) / sb);
      } else {
        throw new Error(`DDIM: unsupported prediction_type ${JSON.stringify(kind)}`);
      }
      // Clipping happens after eps is derived (use_clipped_model_output = False).
      if (clip) p = Math.min(Math.max(p, -range), range);
      x0[i] = p;
      prev[i] = fround(fround(sPrev * p) + fround(sDir * eps));
    }
    return { prevSample: prev, predOriginalSample: x0 };
  }
}
