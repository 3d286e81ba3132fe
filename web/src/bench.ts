// Kernel benchmarks in the browser. Two sets:
//  - 'suites': the project's benchmark suites (bench/suites/*.ts, the same cases as `npm run bench`, with the
//    tfjs / jax-js peers when they load here), plus conv2d, fused attention and group norm at UNet shapes;
//  - 'quick': small shapes of the same kernels, for software adapters (SwiftShader, lavapipe).
// Every timed call waits for the GPU; the table shows the median per call, GFLOP/s and GB/s.
import { rt } from '../../engine/runtime.js';
import { Tensor, tidy } from '../../engine/tensor.js';
import { grad } from '../../engine/autodiff.js';
import { add, silu } from '../../kernels/elementwise.js';
import { matmul, matmulRaw, setMatmulSharedTuning, setMatmulVariant, type MatmulVariant } from '../../kernels/matmul.js';
import { conv2d, setConv2dVariant } from '../../kernels/conv2d.js';
import { attention, setAttentionVariant, type AttentionVariant } from '../../kernels/attention.js';
import { groupNorm } from '../../kernels/groupnorm.js';
import { copyCase, gpuFn, randn, peerNotes, type BenchCase, type BenchSuite } from '../../bench/lib.js';
import { startGpu, gpuSummary } from './gpu.js';

export interface BenchRow {
  suite: string;
  name: string;
  shape: string;
  pass: string;
  library: string;
  runs: number;
  median_ms: number;
  gflops: number | null;
  gbps: number | null;
}

// bench/suites/models.ts builds whole models on disk (Node only); every other suite runs here as in Node
const suiteModules = import.meta.glob<{ default?: BenchSuite; suite?: BenchSuite }>(['../../bench/suites/*.ts', '!../../bench/suites/models.ts']);

const T = (shape: number[], seed: number) => Tensor.from(randn(shape.reduce((a, b) => a * b, 1), seed), shape);

/** A case over tensors made in setup and freed in teardown; `variant` forces a tiling while it runs. */
function tensorCase(
  c: Omit<BenchCase, 'setup' | 'teardown'>,
  make: () => Tensor[],
  run: (t: Tensor[]) => Tensor | Tensor[],
  force?: { set: () => void; reset: () => void },
): BenchCase {
  let ts: Tensor[] = [];
  return {
    ...c,
    async setup() {
      ts = make();
      const fn = gpuFn(() => run(ts));
      if (!force) return fn;
      return async () => {
        force.set();
        try {
          await fn();
        } finally {
          force.reset();
        }
      };
    },
    teardown() {
      ts.forEach((t) => t.dispose());
      ts = [];
    },
  };
}

const forceMatmul = (v: MatmulVariant) => ({ set: () => setMatmulVariant(v), reset: () => setMatmulVariant(null) });
const forceAttention = (v: AttentionVariant) => ({ set: () => setAttentionVariant(v), reset: () => setAttentionVariant(null) });

/** matmul [1024x320]@[320x1280], and conv2d, fused attention and group norm unless `have` names suites for them. */
function unetSuite(quick: boolean, have: Set<string> = new Set()): BenchSuite {
  const cases: BenchCase[] = [];
  if (!quick) {
    // a UNet transformer block's feed-forward at 32x32 latents
    const [M, K, N] = [1024, 320, 1280];
    cases.push(
      tensorCase(
        { name: 'matmul', shape: `${M}x${K} @ ${K}x${N}`, pass: 'fwd', flops: 2 * M * N * K, bytes: 4 * (M * K + K * N + M * N) },
        () => [T([M, K], 1), T([K, N], 2)],
        ([a, b]) => matmulRaw(a, b),
      ),
    );
  }
  if (!have.has('conv')) {
    const [C, HW] = quick ? [64, 16] : [320, 64];
    const shape = `1x${C}x${HW}x${HW} * ${C}x${C}x3x3`;
    const flops = 2 * C * C * 9 * HW * HW;
    const make = () => [T([1, C, HW, HW], 3), T([C, C, 3, 3], 4), T([C], 5), T([1, C, HW, HW], 6)];
    cases.push(
      tensorCase({ name: 'conv2d 3x3', shape, pass: 'fwd', flops, bytes: 4 * (2 * C * HW * HW + C * C * 9 + C) }, make, ([x, w, b]) => conv2d(x, w, b, { padding: 1 })),
      tensorCase({ name: 'conv2d 3x3 [shared tiles]', shape, pass: 'fwd', flops, bytes: 4 * (2 * C * HW * HW + C * C * 9 + C) }, make, ([x, w, b]) => conv2d(x, w, b, { padding: 1 }), {
        set: () => setConv2dVariant('shared'),
        reset: () => setConv2dVariant(null),
      }),
      tensorCase({ name: 'conv2d 3x3 autodiff', shape, pass: 'fwd+bwd', flops: 3 * flops }, make, ([x, w, b, g]) =>
        tidy(() => {
          const xx = x.detach().requireGrad();
          const ww = w.detach().requireGrad();
          return grad(conv2d(xx, ww, b, { padding: 1 }), [xx, ww], g);
        }),
      ),
    );
  }
  if (!have.has('attention')) {
    const [B, S, H, D] = quick ? [2, 256, 8, 40] : [2, 4096, 5, 64];
    for (const v of ['register', 'shared'] as AttentionVariant[])
      cases.push(
        tensorCase(
          { name: `attention [${v}]`, shape: `B=${B} S=${S} heads=${H} D=${D}`, pass: 'fwd', flops: 4 * B * H * S * S * D, bytes: 4 * 4 * B * S * H * D },
          () => [T([B, S, H * D], 6), T([B, S, H * D], 7), T([B, S, H * D], 8)],
          ([q, k, vv]) => attention(q, k, vv, { heads: H }),
          forceAttention(v),
        ),
      );
  }
  if (!have.has('groupnorm')) {
    const [gc, ghw] = quick ? [64, 32] : [320, 64];
    cases.push(
      tensorCase(
        { name: 'groupnorm', shape: `1x${gc}x${ghw}x${ghw}, 32 groups`, pass: 'fwd', bytes: 4 * 2 * gc * ghw * ghw },
        () => [T([1, gc, ghw, ghw], 12), T([gc], 13), T([gc], 14)],
        ([x, g, b]) => groupNorm(x, 32, g, b, 1e-5),
      ),
    );
  }
  return { name: quick ? 'quick (unet kernels)' : 'unet kernels', cases };
}

/** Small shapes of matmul and elementwise (the suites' shapes are too big for a CPU adapter). */
function quickSuite(): BenchSuite {
  const [M, K, N] = [256, 320, 320];
  const cases: BenchCase[] = [];
  for (const v of [null, 'register', 'shared'] as (MatmulVariant | null)[])
    cases.push(
      tensorCase(
        { name: v ? `matmul [${v} tiling]` : 'matmul', shape: `${M}x${K} @ ${K}x${N}`, pass: 'fwd', flops: 2 * M * N * K, bytes: 4 * (M * K + K * N + M * N) },
        () => [T([M, K], 1), T([K, N], 2)],
        ([a, b]) => matmulRaw(a, b),
        v ? forceMatmul(v) : undefined,
      ),
    );
  // the 'shared' tiling's options (GPUs, off by default): coalesced loads, and K split in 2 slices here
  cases.push(
    tensorCase(
      { name: 'matmul [shared tuned]', shape: `${M}x${K} @ ${K}x${N}`, pass: 'fwd', flops: 2 * M * N * K, bytes: 4 * (M * K + K * N + M * N) },
      () => [T([M, K], 1), T([K, N], 2)],
      ([a, b]) => matmulRaw(a, b, { transB: true }),
      {
        set: () => (setMatmulVariant('shared'), setMatmulSharedTuning({ coalesced: true, splitK: 2 })),
        reset: () => (setMatmulVariant(null), setMatmulSharedTuning(null)),
      },
    ),
  );
  cases.push(
    tensorCase(
      { name: 'matmul autodiff', shape: `${M}x${K} @ ${K}x${N}`, pass: 'fwd+bwd', flops: 3 * 2 * M * N * K },
      () => [T([M, K], 1), T([K, N], 2), T([M, N], 3)],
      ([a, b, g]) =>
        tidy(() => {
          const aa = a.detach().requireGrad();
          const bb = b.detach().requireGrad();
          return grad(matmul(aa, bb), [aa, bb], g);
        }),
    ),
  );
  const n = 1 << 20;
  cases.push(
    copyCase(n, `${n}`),
    tensorCase({ name: 'add', shape: `${n}`, pass: 'fwd', flops: n, bytes: 12 * n }, () => [T([n], 9), T([n], 10)], ([a, b]) => add(a, b)),
    tensorCase({ name: 'silu', shape: `${n}`, pass: 'fwd', flops: 4 * n, bytes: 8 * n }, () => [T([n], 11)], ([a]) => silu(a)),
  );
  return { name: 'quick', cases };
}

async function loadSuites(set: 'quick' | 'suites', notes: string[]): Promise<BenchSuite[]> {
  if (set === 'quick') return [quickSuite(), unetSuite(true)];
  const out: BenchSuite[] = [];
  for (const path of Object.keys(suiteModules).sort()) {
    const file = path.replace(/^.*\/bench\//, 'bench/');
    try {
      const mod = await suiteModules[path]();
      const s = mod.default ?? mod.suite;
      if (s) out.push(s);
      else notes.push(`${file}: no default export, skipped`);
    } catch (e) {
      notes.push(`${file} does not load in a browser, skipped: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  // the kernels that have no suite in bench/ yet, at UNet shapes
  out.push(unetSuite(false, new Set(out.map((s) => s.name))));
  return out;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

async function timeCase(suite: string, c: BenchCase, minMs: number, maxRuns: number): Promise<BenchRow | null> {
  const fn = await c.setup();
  if (!fn) return null;
  await fn(); // warm-up: compiles the pipelines
  const times: number[] = [];
  const start = performance.now();
  while ((performance.now() - start < minMs || times.length < 3) && times.length < maxRuns) {
    const t = performance.now();
    await fn();
    times.push(performance.now() - t);
  }
  const ms = median(times);
  return {
    suite,
    name: c.name,
    shape: c.shape,
    pass: c.pass,
    library: c.library ?? 'ours',
    runs: times.length,
    median_ms: ms,
    gflops: c.flops ? c.flops / ms / 1e6 : null,
    gbps: c.bytes ? c.bytes / ms / 1e6 : null,
  };
}

const fmt = (x: number | null, d = 1) => (x === null ? '' : x >= 100 ? x.toFixed(0) : x.toFixed(d));

function row(r: BenchRow): HTMLTableRowElement {
  const tr = document.createElement('tr');
  for (const v of [r.suite, r.name, r.shape, r.pass, r.library, r.runs, fmt(r.median_ms, 3), fmt(r.gflops, 2), fmt(r.gbps, 2)]) {
    const td = document.createElement('td');
    td.textContent = String(v);
    tr.append(td);
  }
  return tr;
}

const state = { rows: [] as BenchRow[], notes: [] as string[], done: false, error: null as string | null };
(window as unknown as { bench: typeof state }).bench = state;

const el = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

async function runAll() {
  const btn = el<HTMLButtonElement>('run');
  btn.disabled = true;
  Object.assign(state, { rows: [], notes: [], done: false, error: null });
  const tbody = el('bench-table').querySelector('tbody')!;
  tbody.replaceChildren();
  el('bench-notes').replaceChildren();
  const set = el<HTMLSelectElement>('set').value as 'quick' | 'suites';
  const peers = el<HTMLInputElement>('peers').checked;
  const filterText = el<HTMLInputElement>('filter').value.trim();
  const minMs = 1000 * Math.max(0.01, Number(el<HTMLInputElement>('min-time').value) || 0.5);
  const status = el('bench-status');
  status.dataset.state = 'running';
  try {
    const filter = filterText ? new RegExp(filterText, 'i') : null;
    const suites = await loadSuites(set, state.notes);
    const todo = suites.flatMap((s) => s.cases.map((c) => [s, c] as const)).filter(([s, c]) => (!filter || filter.test(`${s.name}/${c.name}`)) && (peers || !c.library));
    for (const [i, [s, c]] of todo.entries()) {
      status.textContent = `Running ${i + 1}/${todo.length}: ${s.name}/${c.name} (${c.library ?? 'ours'}) ${c.shape}…`;
      try {
        const r = await timeCase(s.name, c, minMs, 1000);
        if (r) {
          state.rows.push(r);
          tbody.append(row(r));
        } else state.notes.push(`${s.name}/${c.name} (${c.library ?? 'ours'}) skipped`);
      } catch (e) {
        state.notes.push(`${s.name}/${c.name} (${c.library ?? 'ours'}) failed: ${(e as Error).message.split('\n')[0]}`);
        if (!c.library) throw e;
      } finally {
        await c.teardown?.();
        rt().releasePool();
      }
    }
    for (const s of suites) if (s.notes) state.notes.push(...s.notes.map((n) => `${s.name}: ${n}`));
    status.textContent = `Done: ${state.rows.length} cases.`;
    status.dataset.state = 'done';
  } catch (e) {
    state.error = (e as Error).message;
    status.textContent = `Failed: ${(e as Error).message}`;
    status.dataset.state = 'error';
  } finally {
    state.notes.push(...peerNotes.filter((n) => !state.notes.includes(n)));
    el('bench-notes').replaceChildren(
      ...state.notes.map((n) => {
        const li = document.createElement('li');
        li.textContent = n;
        return li;
      }),
    );
    state.done = true;
    btn.disabled = false;
  }
}

async function main() {
  const params = new URLSearchParams(location.search);
  const gs = el('gpu-status');
  try {
    await startGpu({
      forceCompat: params.get('compat') === '1',
      onLost: (m) => {
        gs.textContent = `WebGPU device lost: ${m}. Reload the page.`;
        gs.dataset.state = 'error';
      },
    });
    gs.textContent = `WebGPU: ${gpuSummary()}`;
    gs.dataset.state = 'ready';
  } catch (e) {
    gs.textContent = (e as Error).message;
    gs.dataset.state = 'error';
    const m = el('message');
    m.textContent = (e as Error).message;
    m.hidden = false;
    state.error = (e as Error).message;
    state.done = true;
    return;
  }
  // software adapters get the small shapes unless asked otherwise
  el<HTMLSelectElement>('set').value = params.get('set') ?? (params.get('quick') === '1' || rt().gpu.adapterClass === 'cpu' ? 'quick' : 'suites');
  if (params.get('min')) el<HTMLInputElement>('min-time').value = params.get('min')!;
  if (params.get('filter')) el<HTMLInputElement>('filter').value = params.get('filter')!;
  if (params.get('peers')) el<HTMLInputElement>('peers').checked = params.get('peers') === '1';
  const btn = el<HTMLButtonElement>('run');
  btn.disabled = false;
  btn.onclick = () => void runAll();
  if (params.get('auto') === '1') await runAll();
}

void main();
