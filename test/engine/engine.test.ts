// Engine behaviour: scopes and the pool, checkpoint vs plain gradients, memory over a training loop,
// tensors larger than one storage binding, error surfacing, f16 storage, Adam/AdamW against PyTorch's rule.
import { beforeAll, describe, expect, it } from 'vitest';
import {
  Adam,
  AdamW,
  GpuError,
  NoAdapterError,
  Tensor,
  add,
  checkpoint,
  grad,
  linear,
  mean,
  mul,
  noGrad,
  rt,
  silu,
  sum,
  tanh,
  tidy,
  backward,
} from '../../engine/index.js';
import { gpu, rand, relErr } from '../helpers/check.js';

beforeAll(async () => {
  await gpu();
});

describe('scopes and memory', () => {
  it('tidy frees intermediates and keeps the result', async () => {
    const before = rt().memory().liveBytes;
    const x = Tensor.from(rand(1000), [1000]);
    const y = tidy(() => silu(mul(add(x, x), x)));
    expect(rt().memory().liveBytes - before).toBe(x.buffer.size + y.buffer.size);
    expect((await y.data()).length).toBe(1000);
    x.dispose();
    y.dispose();
    expect(rt().memory().liveBytes).toBe(before);
  });

  it('a disposed tensor cannot be used and says so', () => {
    const x = Tensor.from([1, 2], [2]);
    x.dispose();
    expect(() => add(x, x)).toThrow(/disposed/);
  });

  it('no GPU memory growth over 100 steps of a small training loop', async () => {
    const w = Tensor.from(rand(16 * 8, 3, -0.3, 0.3), [16, 8]).requireGrad().keep();
    const b = Tensor.from(rand(16, 4, -0.1, 0.1), [16]).requireGrad().keep();
    const x = Tensor.from(rand(32 * 8, 5), [32, 8]).keep();
    const opt = new AdamW([w, b], { lr: 0.01 });
    const losses: number[] = [];
    let live = 0;
    for (let i = 0; i < 100; i++) {
      const l = tidy(() => {
        const loss = mean(mul(tanh(linear(x, w, b)), tanh(linear(x, w, b))));
        const gs = grad(loss, [w, b]);
        opt.step(gs);
        return loss;
      });
      losses.push(await l.item());
      l.dispose();
      if (i === 9) live = rt().memory().liveBytes;
      if (i === 9) rt().resetPeak();
    }
    expect(rt().memory().liveBytes).toBe(live);
    expect(rt().memory().peakBytes).toBeLessThanOrEqual(live + 64 * 1024);
    expect(losses[99]).toBeLessThan(losses[0]);
    opt.dispose();
    [w, b, x].forEach((t) => t.dispose());
  });
});

describe('checkpoint', () => {
  it('checkpointed and plain gradients are identical, and intermediates are not kept', async () => {
    const w = Tensor.from(rand(33 * 33, 1, -0.2, 0.2), [33, 33]).keep();
    const x0 = Tensor.from(rand(7 * 33, 2), [7, 33]).keep();
    const block = (x: Tensor) => tanh(add(linear(x, w), x));
    const run = (ck: boolean) =>
      tidy(() => {
        const x = x0.detach().requireGrad();
        let h = x;
        for (let i = 0; i < 20; i++) h = ck ? checkpoint(block, [h]) : block(h);
        return grad(sum(mul(h, h)), [x])[0];
      });
    const plain = await run(false).data();
    rt().resetPeak();
    const base = rt().memory().liveBytes;
    const ck = await run(true).data();
    const ckPeak = rt().memory().peakBytes - base;
    expect(relErr(ck, plain)).toBe(0);
    rt().resetPeak();
    await run(false).data();
    const plainPeak = rt().memory().peakBytes - base;
    expect(ckPeak).toBeLessThan(plainPeak / 2);
  });

  it('weights used inside a checkpoint receive .grad through backward()', async () => {
    const w = Tensor.from(rand(9, 3), [3, 3]).requireGrad().keep();
    const x = Tensor.from(rand(6, 4), [2, 3]).requireGrad().keep();
    const f = (t: Tensor) => silu(linear(t, w));
    const ref = tidy(() => grad(sum(f(x)), [w])[0]);
    tidy(() => backward(sum(checkpoint(f, [x]))));
    expect(relErr(await w.grad!.data(), await ref.data())).toBeLessThan(1e-6);
  });
});

describe('large tensors and batching', () => {
  it('elementwise ops split tensors larger than one storage binding', async () => {
    const saved = rt().maxBindingBytes;
    const n = 70001;
    const a = rand(n, 1);
    const b = rand(n, 2);
    try {
      rt().maxBindingBytes = 4096 * 4; // force 5 chunks
      const y = await tidy(() => silu(add(Tensor.from(a, [n]), Tensor.from(b, [n])))).data();
      let err = 0;
      for (let i = 0; i < n; i++) {
        const s = a[i] + b[i];
        err = Math.max(err, Math.abs(y[i] - s / (1 + Math.exp(-s))));
      }
      expect(err).toBeLessThan(1e-5);
    } finally {
      rt().maxBindingBytes = saved;
    }
  });

  it('many dispatches go into few command buffers', async () => {
    const x = Tensor.from(rand(64), [64]);
    const before = rt().dispatchCount;
    const y = noGrad(() => tidy(() => {
      let h = x;
      for (let i = 0; i < 100; i++) h = add(h, x);
      return h;
    }));
    expect(rt().dispatchCount - before).toBe(100);
    const d = await y.data();
    expect(Math.abs(d[3] - 101 * (await x.data())[3])).toBeLessThan(1e-3);
  });
});

describe('errors', () => {
  it('a WebGPU validation error is thrown as a GpuError naming the op', async () => {
    const x = Tensor.from([1, 2, 3, 4], [4]);
    rt().dispatch({ name: 'broken_op', code: 'this is not wgsl', bindings: [{ buffer: x.buffer }], workgroups: [1] });
    await expect(rt().sync()).rejects.toThrow(GpuError);
    await rt().sync().catch(() => {});
  });

  it('the no-adapter error says how to install lavapipe', () => {
    const e = new NoAdapterError('requestAdapter returned null');
    expect(e.message).toMatch(/bookworm-backports/);
    expect(e.message).toMatch(/mesa-vulkan-drivers/);
  });

  it('shape errors name the op and shapes', () => {
    const a = Tensor.from(rand(6), [2, 3]);
    const b = Tensor.from(rand(4), [4]);
    expect(() => add(a, b)).toThrow(/add: shapes \[2,3\] and \[4\]/);
  });
});

describe('dtypes', () => {
  it('f16 and i32 tensors round-trip', async () => {
    const v = [0, 1, -2.5, 65504, 1e-3];
    const h = await Tensor.from(v, [5], 'f16').data();
    expect(relErr(h, v)).toBeLessThan(1e-3);
    expect([...(await Tensor.from([1, -7, 3], [3], 'i32').data())]).toEqual([1, -7, 3]);
  });
});

describe('optimizers follow PyTorch update rules', () => {
  function hostAdam(x: number[], gs: number[][], lr: number, wd: number, decoupled: boolean) {
    const m = x.map(() => 0);
    const v = x.map(() => 0);
    const [b1, b2, eps] = [0.9, 0.999, 1e-8];
    gs.forEach((g0, t0) => {
      const t = t0 + 1;
      for (let i = 0; i < x.length; i++) {
        let g = g0[i];
        if (decoupled) x[i] *= 1 - lr * wd;
        else g += wd * x[i];
        m[i] = b1 * m[i] + (1 - b1) * g;
        v[i] = b2 * v[i] + (1 - b2) * g * g;
        x[i] -= (lr / (1 - b1 ** t)) * (m[i] / (Math.sqrt(v[i]) / Math.sqrt(1 - b2 ** t) + eps));
      }
    });
    return x;
  }
  for (const [name, decoupled] of [['Adam', false], ['AdamW', true]] as const) {
    it(`${name} matches the reference over 3 steps`, async () => {
      const x0 = [...rand(7, 1)];
      const gs = [0, 1, 2].map((k) => [...rand(7, 10 + k)]);
      const p = Tensor.from(x0, [7]);
      const opt = decoupled ? new AdamW([p], { lr: 0.1, weightDecay: 0.01 }) : new Adam([p], { lr: 0.1, weightDecay: 0.01 });
      for (const g of gs) opt.step([Tensor.from(g, [7])]);
      const ref = hostAdam([...x0], gs, 0.1, 0.01, decoupled);
      expect(relErr(await p.data(), ref)).toBeLessThan(1e-5);
    });
  }
});

describe('graph lifetime', () => {
  it('a tensor returned with its graph frees that graph when disposed', async () => {
    const x = Tensor.from(rand(100), [100]).requireGrad();
    const before = rt().memory().liveBytes;
    const y = tidy(() => tanh(silu(mul(x, x))));
    expect(rt().memory().liveBytes).toBeGreaterThan(before + y.buffer.size);
    y.dispose();
    expect(rt().memory().liveBytes).toBe(before);
  });
});

describe('kernel profile', () => {
  it('times every dispatch by kernel name and leaves results unchanged', async () => {
    const r = rt();
    if (!r.features.has('timestamp-query')) {
      expect(() => r.startProfile()).toThrow(/timestamp-query/);
      return;
    }
    const a = Tensor.from(rand(4096, 1), [64, 64]).keep();
    const plain = await tidy(() => mul(add(a, a), a).keep()).data();
    r.startProfile();
    expect(() => r.startProfile()).toThrow(/already running/);
    // more dispatches than one profiled batch holds
    let y = a;
    for (let i = 0; i < 70; i++) {
      const next = tidy(() => add(y, a).keep());
      if (y !== a) y.dispose();
      y = next;
    }
    const profiled = tidy(() => mul(add(a, a), a).keep());
    const rows = await r.stopProfile();
    expect(await profiled.data()).toEqual(plain);
    const byName = new Map(rows.map((x) => [x.name, x]));
    expect(byName.get('add')?.calls).toBe(71);
    expect(byName.get('mul')?.calls).toBe(1);
    for (const x of rows) expect(x.ms).toBeGreaterThanOrEqual(0);
    expect(rows.reduce((s, x) => s + x.ms, 0)).toBeGreaterThan(0);
    for (let i = 1; i < rows.length; i++) expect(rows[i - 1].ms).toBeGreaterThanOrEqual(rows[i].ms);
    await expect(r.stopProfile()).rejects.toThrow(/no profile is running/);
  });
});
