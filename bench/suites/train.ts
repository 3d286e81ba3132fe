// One training step (forward + backward + global-norm gradient clipping + AdamW update) of each tiny-world
// model, with the per-step loss of its stage in tiny/train.ts at its default batch size: the CLIP text and
// image towers (contrastive, batch 64), the AutoencoderKL (reconstruction + KL, batch 32), the UNet (epsilon
// MSE on [B,4,8,8] latents with [B,77,32] conditioning, batch 64; random host data) and the judge CNN
// (batch 32; the noGrad VAE round trip of half the batch that stageJudge adds is left out). Data is built
// once in setup; the timed call is the step plus waiting for the GPU.
//
// The rows give ms per step; the shape names the images per step, and after each row a line prints
// images/s from wall-clock and from process CPU time (`images / (cpu_s / cores)`, as the table's (cpu)
// columns). The judge's rows also carry flops (forward + weight gradients + input gradients of all but
// the first layer) for the GFLOP/s columns.
//
// Peers, judge only (the other models have no counterpart in them): @tensorflow/tfjs-backend-webgpu
// (NHWC, explicit padding 1 as PyTorch's, tf.variableGrads, the same clipping, decoupled weight decay by
// assign, then tf.train.adam's applyGradients) and @jax-js/jax (NCHW, lax.conv, valueAndGrad, the clipping and AdamW
// update written with numpy ops, eagerly).
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import {
  AdamW,
  Tensor,
  add,
  affine,
  concat,
  div,
  exp,
  grad,
  linear as linearOp,
  matmul,
  mean,
  minimum,
  mul,
  reshape,
  rt,
  scale,
  slice,
  sqrt,
  sub,
  sum,
  tidy,
  transpose,
} from '../../engine/index.js';
import { ClipTextModel, ClipVisionModel } from '../../models/clip.js';
import { AutoencoderKL } from '../../models/vae.js';
import { UNet2DConditionModel } from '../../models/unet.js';
import { ClipTokenizer } from '../../models/tokenizer.js';
import { Params } from '../../models/weights.js';
import { IMAGE_SIZE, JUDGE_CONFIG, TEXT_CONFIG, UNET_CONFIG, VAE_CONFIG, VISION_CONFIG } from '../../tiny/configs.js';
import { DEFAULT_PLAN, clipNormalize, initParams, judgeForward, judgeParams, l2normalize, meanSquare, softCrossEntropy } from '../../tiny/train.js';
import { COLOURS, SHAPES, batch as worldBatch } from '../../tiny/world.js';
import { loadJax, loadTfjs, randn, type BenchCase, type BenchSuite } from '../lib.js';

const S = IMAGE_SIZE;
const CORES = cpus().length;
const WEIGHT_DECAY = 0.01;
const MAX_NORM = 1.0;
/** BENCH_TRAIN_LOSS=1: print every call's loss (adds a read-back to the timed call), to check that the libraries agree */
const LOSS = process.env.BENCH_TRAIN_LOSS === '1';

// ---------------- timing: images/s next to the row ----------------

/** Wraps the timed function, records wall and CPU ms per call, prints images/s (calls after the first). */
function perImage(label: string, images: number, fn: () => Promise<void>) {
  const calls: { ms: number; cpu: number }[] = [];
  return {
    fn: async () => {
      const t0 = performance.now();
      const c0 = process.cpuUsage();
      await fn();
      const d = process.cpuUsage(c0);
      calls.push({ ms: performance.now() - t0, cpu: (d.user + d.system) / 1000 });
    },
    report() {
      const timed = calls.length > 1 ? calls.slice(1) : calls; // the first call is run.ts's warm-up
      if (!timed.length) return;
      const med = (xs: number[]) => xs.sort((a, b) => a - b)[xs.length >> 1];
      const ms = med(timed.map((c) => c.ms));
      const cpu = med(timed.map((c) => c.cpu));
      console.log(
        `    ${label}: ${images} images/step, ${((images * 1000) / ms).toFixed(1)} images/s wall, ` +
          `${((images * 1000) / (cpu / CORES)).toFixed(1)} images/s (cpu, ${CORES} cores)`,
      );
    },
  };
}

// ---------------- ours ----------------

/** Global-norm gradient clipping on the GPU, as tiny/train.ts: g *= min(1, maxNorm / |g|). */
function clipGrads(gs: Tensor[], maxNorm: number): Tensor[] {
  const sq = gs.map((g) => reshape(sum(mul(g, g)), [1]));
  const total = sqrt(sum(concat(sq, 0)));
  const f = minimum(Tensor.scalar(1), div(Tensor.scalar(maxNorm), affine(total, 1, 1e-6)));
  return gs.map((g) => mul(g, f));
}

interface Built {
  params: Map<string, Tensor>;
  /** the loss of the prepared batch (recording on) */
  loss: () => Tensor;
  /** host-built inputs, kept across calls */
  inputs: Tensor[];
}

interface Stage {
  name: string;
  images: number;
  shape: string;
  lr: number;
  flops?: number;
  build(): Built;
}

let tokenizer: ClipTokenizer | null = null;
function loadTokenizer(): ClipTokenizer {
  if (tokenizer) return tokenizer;
  const dir = fileURLToPath(new URL('../../presets/clip-tokenizer/', import.meta.url));
  const vocab = JSON.parse(readFileSync(dir + 'vocab.json', 'utf8'));
  const merges = readFileSync(dir + 'merges.txt', 'utf8');
  tokenizer = ClipTokenizer.fromFiles(vocab, merges, { padToken: 'eos' });
  return tokenizer;
}

const indices = (B: number, offset = 0) => Array.from({ length: B }, (_, k) => offset + k * 7);

function clipStage(): Stage {
  const B = DEFAULT_PLAN.clip.batch;
  return {
    name: 'clip',
    images: B,
    shape: `${B} images 3x${S}x${S} + ${B} captions x77`,
    lr: DEFAULT_PLAN.clip.lr,
    build() {
      const textMap = initParams(TEXT_CONFIG, 'CLIPTextModel', 1, [['text_projection.weight', [32, TEXT_CONFIG.hidden_size as number], TEXT_CONFIG.hidden_size as number]]);
      const visionMap = initParams(VISION_CONFIG, 'CLIPVisionModelWithProjection', 2);
      const all = new Map([...textMap, ...visionMap]);
      const text = new ClipTextModel(TEXT_CONFIG, new Params(all));
      const vision = new ClipVisionModel(VISION_CONFIG, new Params(all));
      const b = worldBatch(indices(B), {}, 'train');
      const ids = b.captions.flatMap((c) => loadTokenizer().encode(c));
      const T = new Float32Array(B * B);
      for (let i = 0; i < B; i++) {
        const same = b.captions.map((c) => (c === b.captions[i] ? 1 : 0) as number);
        const n = same.reduce((a, x) => a + x, 0);
        for (let j = 0; j < B; j++) T[i * B + j] = same[j] / n;
      }
      const px = Tensor.from(clipNormalize(b.pixels, B), [B, 3, S, S]).keep();
      const targets = Tensor.from(T, [B, B]).keep();
      const logitScale = 20;
      return {
        params: all,
        inputs: [px, targets],
        loss: () => {
          const img = l2normalize(vision.forward(px).imageEmbeds!);
          const tout = text.forward(ids, [B, ids.length / B]);
          const txt = l2normalize(linearOp(tout.pooled, all.get('text_projection.weight')!));
          const logits = scale(matmul(img, transpose(txt, 0, 1)), logitScale);
          return scale(add(softCrossEntropy(logits, targets), softCrossEntropy(transpose(logits, 0, 1), targets)), 0.5);
        },
      };
    },
  };
}

function vaeStage(): Stage {
  const B = DEFAULT_PLAN.vae.batch;
  return {
    name: 'vae',
    images: B,
    shape: `${B} images 3x${S}x${S}`,
    lr: DEFAULT_PLAN.vae.lr,
    build() {
      const map = initParams(VAE_CONFIG, 'AutoencoderKL', 3);
      const vae = new AutoencoderKL(VAE_CONFIG, new Params(map));
      const lat = S / vae.downscale;
      const b = worldBatch(indices(B), {}, 'train');
      const x = Tensor.from(b.pixels, [B, 3, S, S]).keep();
      const eps = Tensor.from(randn(B * 4 * lat * lat, 11), [B, 4, lat, lat]).keep();
      const klWeight = 1e-3;
      return {
        params: map,
        inputs: [x, eps],
        loss: () => {
          const d = vae.encode(x);
          const z = AutoencoderKL.sample(d, eps);
          const rec = vae.decode(z);
          const kl = mean(affine(sub(add(mul(d.mean, d.mean), exp(d.logvar)), d.logvar), 0.5, -0.5));
          return add(meanSquare(rec, x), scale(kl, klWeight));
        },
      };
    },
  };
}

function unetStage(): Stage {
  const B = DEFAULT_PLAN.unet.batch;
  const lat = S / 4;
  const D = UNET_CONFIG.cross_attention_dim as number;
  return {
    name: 'unet',
    images: B,
    shape: `${B} latents 4x${lat}x${lat}, cond ${B}x77x${D}`,
    lr: DEFAULT_PLAN.unet.lr,
    build() {
      const map = initParams(UNET_CONFIG, 'UNet2DConditionModel', 4);
      const unet = new UNet2DConditionModel(UNET_CONFIG, new Params(map));
      const x = Tensor.from(randn(B * 4 * lat * lat, 21), [B, 4, lat, lat]).keep();
      const eps = Tensor.from(randn(B * 4 * lat * lat, 22), [B, 4, lat, lat]).keep();
      const c = Tensor.from(randn(B * 77 * D, 23), [B, 77, D]).keep();
      const ts = Array.from({ length: B }, (_, k) => (k * 379) % 1000);
      return {
        params: map,
        inputs: [x, eps, c],
        loss: () => meanSquare(unet.forward(x, ts, c), eps),
      };
    },
  };
}

/** Judge data: balanced renders, one-hot colour and shape targets. */
function judgeData(B: number) {
  const b = worldBatch(indices(B), {}, 'balanced');
  const nC = COLOURS.length;
  const nS = SHAPES.length;
  const Tc = new Float32Array(B * nC);
  const Ts = new Float32Array(B * nS);
  b.specs.forEach((sp, k) => {
    Tc[k * nC + COLOURS.indexOf(sp.colour)] = 1;
    Ts[k * nS + SHAPES.indexOf(sp.shape)] = 1;
  });
  return { pixels: b.pixels, Tc, Ts, nC, nS };
}

/** Judge step flops: forward convs + head, weight gradients of all, input gradients of all but the first conv. */
function judgeFlops(B: number): number {
  let cin = 3;
  let hw = S;
  let fwd = 0;
  let first = 0;
  JUDGE_CONFIG.layers.forEach(([cout, stride], i) => {
    hw = Math.floor((hw + 2 - 3) / stride) + 1;
    const f = 2 * B * hw * hw * cout * cin * 9;
    if (i === 0) first = f;
    fwd += f;
    cin = cout;
  });
  fwd += 2 * B * cin * (COLOURS.length + SHAPES.length);
  return 3 * fwd - first;
}

function judgeStage(): Stage {
  const B = DEFAULT_PLAN.judge.batch;
  return {
    name: 'judge',
    images: B,
    shape: `${B} images 3x${S}x${S}`,
    lr: DEFAULT_PLAN.judge.lr,
    flops: judgeFlops(B),
    build() {
      const map = judgeParams(5);
      const params = new Params(map);
      const d = judgeData(B);
      const x = Tensor.from(d.pixels, [B, 3, S, S]).keep();
      const tc = Tensor.from(d.Tc, [B, d.nC]).keep();
      const ts = Tensor.from(d.Ts, [B, d.nS]).keep();
      return {
        params: map,
        inputs: [x, tc, ts],
        loss: () => {
          const logits = judgeForward(params, x);
          const lc = slice(logits, { 1: [0, d.nC] });
          const ls = slice(logits, { 1: [d.nC, d.nC + d.nS] });
          return add(softCrossEntropy(lc, tc), softCrossEntropy(ls, ts));
        },
      };
    },
  };
}

function oursCase(st: Stage): BenchCase {
  let built: Built | null = null;
  let opt: AdamW | null = null;
  let timer: ReturnType<typeof perImage> | null = null;
  return {
    name: `${st.name} step`,
    shape: st.shape,
    pass: 'fwd+bwd',
    flops: st.flops,
    async setup() {
      const b = st.build();
      built = b;
      const params = [...b.params.values()];
      for (const t of params) t.requiresGrad = true;
      const o = new AdamW(params, { lr: st.lr, weightDecay: WEIGHT_DECAY });
      opt = o;
      timer = perImage(`train/${st.name} ours`, st.images, async () => {
        const dbg = tidy(() => {
          const l = b.loss();
          const gs = clipGrads(grad(l, params), MAX_NORM);
          o.step(gs);
          return LOSS ? l.detach().keep() : null;
        });
        if (dbg) {
          console.log(`    ours loss ${await dbg.item()}`);
          dbg.dispose();
        }
        await rt().sync();
      });
      return timer.fn;
    },
    teardown() {
      timer?.report();
      opt?.dispose();
      if (built) {
        for (const t of built.params.values()) t.dispose();
        built.inputs.forEach((t) => t.dispose());
      }
      built = null;
      opt = null;
      timer = null;
    },
  };
}

// ---------------- @tensorflow/tfjs-backend-webgpu: the judge ----------------

type Tf = typeof import('@tensorflow/tfjs-core');
type TfT = import('@tensorflow/tfjs-core').Tensor;
type TfV = import('@tensorflow/tfjs-core').Variable;
type T4 = import('@tensorflow/tfjs-core').Tensor4D;


let tfSetups = 0;
function tfJudgeCase(): BenchCase {
  const B = DEFAULT_PLAN.judge.batch;
  let owned: TfT[] = [];
  let timer: ReturnType<typeof perImage> | null = null;
  return {
    name: 'judge step',
    shape: `${B} images 3x${S}x${S}`,
    pass: 'fwd+bwd',
    library: '@tensorflow/tfjs-backend-webgpu',
    flops: judgeFlops(B),
    async setup() {
      const tf: Tf | null = await loadTfjs();
      if (!tf) return null;
      const tag = `benchjudge${tfSetups++}`;
      // the same initial weights as ours, OIHW -> HWIO
      const init = judgeParams(5);
      const host = new Map<string, Float32Array>();
      for (const [k, t] of init) {
        host.set(k, (await t.data()) as Float32Array);
        t.dispose();
      }
      const vars: TfV[] = [];
      const convs: { w: TfV; b: TfV; stride: number }[] = [];
      let cin = 3;
      JUDGE_CONFIG.layers.forEach(([cout, stride], i) => {
        const w = tf.tidy(() => tf.variable(tf.transpose(tf.tensor4d(host.get(`convs.${i}.weight`)!, [cout, cin, 3, 3]), [2, 3, 1, 0]), true, `${tag}.w${i}`));
        const b = tf.variable(tf.tensor1d(host.get(`convs.${i}.bias`)!), true, `${tag}.b${i}`);
        convs.push({ w, b, stride });
        vars.push(w, b);
        cin = cout;
      });
      const heads = COLOURS.length + SHAPES.length;
      const hw = tf.tidy(() => tf.variable(tf.transpose(tf.tensor2d(host.get('head.weight')!, [heads, cin])), true, `${tag}.hw`));
      const hb = tf.variable(tf.tensor1d(host.get('head.bias')!), true, `${tag}.hb`);
      vars.push(hw, hb);
      const d = judgeData(B);
      const x = tf.tidy(() => tf.transpose(tf.tensor4d(d.pixels, [B, 3, S, S]), [0, 2, 3, 1]));
      const tc = tf.tensor2d(d.Tc, [B, d.nC]);
      const ts = tf.tensor2d(d.Ts, [B, d.nS]);
      const opt = tf.train.adam(DEFAULT_PLAN.judge.lr, 0.9, 0.999, 1e-8);
      owned = [...vars, x, tc, ts];
      const pad: [[number, number], [number, number], [number, number], [number, number]] = [
        [0, 0],
        [1, 1],
        [1, 1],
        [0, 0],
      ];
      const ce = (logits: TfT, t: TfT) => tf.mean(tf.neg(tf.sum(tf.mul(t, tf.logSoftmax(logits)), -1)));
      const loss = () => {
        let h = x as T4;
        for (const c of convs) h = tf.relu(tf.add(tf.conv2d(h, c.w as unknown as T4, c.stride, pad), c.b)) as T4;
        const logits = tf.add(tf.matMul(tf.mean(h, [1, 2]), hw), hb);
        const lc = tf.slice(logits, [0, 0], [B, d.nC]);
        const ls = tf.slice(logits, [0, d.nC], [B, d.nS]);
        return tf.add(ce(lc, tc), ce(ls, ts)) as import('@tensorflow/tfjs-core').Scalar;
      };
      timer = perImage('train/judge tfjs', B, async () => {
        const dbg = tf.tidy(() => {
          const { value, grads } = tf.variableGrads(loss, vars);
          const names = Object.keys(grads);
          // pairwise adds: tf.addN over more than a few tensors builds an invalid WebGPU pipeline on lavapipe
          const total = tf.sqrt(names.map((n) => tf.sum(tf.square(grads[n]))).reduce((a, b) => tf.add(a, b)));
          const f = tf.minimum(1, tf.div(MAX_NORM, tf.add(total, 1e-6)));
          // decoupled weight decay first, as torch.optim.AdamW and ours: tf.train.adam then does the Adam part
          for (const v of vars) v.assign(tf.mul(v, 1 - DEFAULT_PLAN.judge.lr * WEIGHT_DECAY));
          opt.applyGradients(names.map((name) => ({ name, tensor: tf.mul(grads[name], f) })));
          return value;
        });
        if (LOSS) console.log(`    tfjs loss ${(await dbg.data())[0]}`);
        dbg.dispose();
        // the queue is in order: one element of the last updated variable waits for the whole step
        const one = tf.slice(hb, [0], [1]);
        await one.data();
        one.dispose();
      });
      owned.push({ dispose: () => opt.dispose() } as unknown as TfT);
      return timer.fn;
    },
    teardown() {
      timer?.report();
      owned.forEach((t) => t.dispose());
      owned = [];
      timer = null;
    },
  };
}

// ---------------- @jax-js/jax: the judge ----------------

type Jax = typeof import('@jax-js/jax');
type Arr = import('@jax-js/jax').Array;
type JParams = Record<string, Arr>;

function jaxJudgeCase(jit: boolean): BenchCase {
  const B = DEFAULT_PLAN.judge.batch;
  let owned: Arr[] = [];
  let state: { p: JParams; m: JParams; v: JParams } | null = null;
  let timer: ReturnType<typeof perImage> | null = null;
  let jitted: { dispose(): void } | null = null;
  return {
    name: jit ? 'judge step [jit loss+grad]' : 'judge step',
    shape: `${B} images 3x${S}x${S}`,
    pass: 'fwd+bwd',
    library: '@jax-js/jax',
    flops: judgeFlops(B),
    async setup() {
      const jax: Jax | null = await loadJax();
      if (!jax) return null;
      const np = jax.numpy;
      const nC = COLOURS.length;
      const init = judgeParams(5);
      const p: JParams = {};
      const host = new Map<string, Float32Array>();
      for (const [k, t] of init) {
        const v = new Float32Array((await t.data()) as Float32Array);
        if (!k.startsWith('head.')) p[k] = np.array(v).reshape([...t.shape]);
        else host.set(k, v);
        t.dispose();
      }
      // two heads instead of slicing the logits: the same arithmetic
      const hwHost = host.get('head.weight')!;
      const hbHost = host.get('head.bias')!;
      const cin = hwHost.length / (nC + SHAPES.length);
      p['headc.weight'] = np.array(hwHost.slice(0, nC * cin)).reshape([nC, cin]);
      p['heads.weight'] = np.array(hwHost.slice(nC * cin)).reshape([SHAPES.length, cin]);
      p['headc.bias'] = np.array(hbHost.slice(0, nC));
      p['heads.bias'] = np.array(hbHost.slice(nC));
      const zeros = () => Object.fromEntries(Object.entries(p).map(([k, a]) => [k, np.zeros([...a.shape])])) as JParams;
      const st = { p, m: zeros(), v: zeros() };
      state = st;
      const d = judgeData(B);
      const x = np.array(new Float32Array(d.pixels)).reshape([B, 3, S, S]);
      const tc = np.array(d.Tc).reshape([B, nC]);
      const ts = np.array(d.Ts).reshape([B, SHAPES.length]);
      owned = [x, tc, ts];
      const pad: [number, number][] = [
        [1, 1],
        [1, 1],
      ];
      const ce = (logits: Arr, t: Arr) => np.mean(np.sum(t.mul(jax.nn.logSoftmax(logits, -1)), -1)).mul(-1);
      const lossFn = (q: JParams, xx: Arr, tcc: Arr, tss: Arr): Arr => {
        let h = xx;
        JUDGE_CONFIG.layers.forEach(([cout, stride], i) => {
          const y = jax.lax.conv(h, q[`convs.${i}.weight`], [stride, stride], pad);
          h = jax.nn.relu(y.add(q[`convs.${i}.bias`].reshape([1, cout, 1, 1])));
        });
        const pooled = np.mean(h, [2, 3]);
        const lc = np.matmul(pooled.ref, q['headc.weight'].transpose()).add(q['headc.bias']);
        const ls = np.matmul(pooled, q['heads.weight'].transpose()).add(q['heads.bias']);
        return ce(lc, tcc).add(ce(ls, tss));
      };
      let vg = jax.valueAndGrad(lossFn);
      if (jit) {
        const j = jax.jit(vg as unknown as (q: JParams, xx: Arr, tcc: Arr, tss: Arr) => [Arr, JParams]);
        jitted = j;
        vg = j as unknown as typeof vg;
      }
      const lr = DEFAULT_PLAN.judge.lr;
      const [b1, b2, eps] = [0.9, 0.999, 1e-8];
      let step = 0;
      timer = perImage(`train/judge jax-js${jit ? ' jit' : ''}`, B, async () => {
        step++;
        const [loss, g] = vg(jax.tree.ref(st.p), x.ref, tc.ref, ts.ref) as unknown as [Arr, JParams];
        if (LOSS) console.log(`    jax-js loss ${(await loss.ref.data())[0]}`);
        loss.dispose();
        const keys = Object.keys(g);
        // global-norm clipping
        const sq = keys.map((k) => np.sum(g[k].ref.mul(g[k].ref)));
        const total = np.sqrt(sq.reduce((a, b) => a.add(b)));
        const f = np.minimum(1, np.array(MAX_NORM).div(total.add(1e-6)));
        const bc1 = 1 - b1 ** step;
        const bc2s = Math.sqrt(1 - b2 ** step);
        for (const k of keys) {
          const gk = g[k].mul(f.ref);
          const m = st.m[k].mul(b1).add(gk.ref.mul(1 - b1));
          const v = st.v[k].mul(b2).add(gk.ref.mul(gk).mul(1 - b2));
          const upd = m.ref.div(np.sqrt(v.ref).div(bc2s).add(eps)).mul(lr / bc1);
          st.p[k] = st.p[k].mul(1 - lr * WEIGHT_DECAY).sub(upd);
          st.m[k] = m;
          st.v[k] = v;
        }
        f.dispose();
        for (const k of keys) await st.p[k].blockUntilReady();
      });
      return timer.fn;
    },
    teardown() {
      timer?.report();
      owned.forEach((a) => a.dispose());
      owned = [];
      if (state) for (const t of [state.p, state.m, state.v]) for (const a of Object.values(t)) a.dispose();
      state = null;
      jitted?.dispose();
      jitted = null;
      timer = null;
    },
  };
}

const suite: BenchSuite = {
  name: 'train',
  cases: [...[clipStage(), vaeStage(), unetStage(), judgeStage()].map(oursCase), tfJudgeCase(), jaxJudgeCase(false), jaxJudgeCase(true)],
  notes: ['peers run the judge only: the CLIP towers, AutoencoderKL and UNet have no counterpart in tfjs-core or jax-js'],
};
export default suite;
