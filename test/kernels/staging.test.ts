// Staging textures (kernels/staging.ts): a buffer copied into a linear texture reads back element for element
// (whole rows and a partial last row), the cache reuses textures of the same role and size, accounts them as
// pooled memory and frees them on releasePool, and evicting past the cap keeps queued reads correct.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rt, Tensor, Uniforms } from '../../engine/index.js';
import { LINEAR_WIDTH, linearLoad, linearTexture, linearTextureFits, setStagingTextureCacheBytes, stagingTexture } from '../../kernels/staging.js';
import { gpu, rand } from '../helpers/check.js';

beforeAll(async () => {
  await gpu();
});
afterAll(() => setStagingTextureCacheBytes(256 * 2 ** 20));

// out[i] = element perm(i) of the linear texture: every lane reads a different texel, scattered over rows
const gatherKernel = /* wgsl */ `
struct P { n: u32, stride: u32, _0: u32, _1: u32 }
@group(0) @binding(0) var<uniform> u: P;
@group(0) @binding(1) var T: texture_2d<f32>;
@group(0) @binding(2) var<storage, read_write> O: array<vec4<f32>>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let i = g.x + g.y * 65535u * 64u;
  if (i >= u.n) { return; }
  let j = (i * u.stride) % u.n;
  O[i] = ${linearLoad('T', 'j')};
}`;

/** Reads `n` vec4s of t through a linear texture in the order j = i * stride mod n (stride coprime to n). */
async function gather(t: Tensor, n: number, stride: number, role = 'test'): Promise<Float32Array> {
  const out = Tensor.empty([n * 4]);
  rt().dispatch({
    name: 'staging_gather',
    code: gatherKernel,
    uniforms: new Uniforms().u32(n, stride, 0, 0).done(),
    bindings: [{ texture: linearTexture(t, n, role) }, { buffer: out.buffer }],
    workgroups: [Math.ceil(n / 64)],
  });
  const got = (await out.data()) as Float32Array;
  out.dispose();
  return got;
}

function expectGathered(got: Float32Array, src: Float32Array, n: number, stride: number) {
  let bad = -1;
  for (let i = 0; i < n && bad < 0; i++) {
    const j = (i * stride) % n;
    for (let c = 0; c < 4; c++) if (got[4 * i + c] !== src[4 * j + c]) bad = i;
  }
  expect(bad, `first wrong vec4 at ${bad}`).toBe(-1);
}

describe('staging textures', () => {
  it('a linear texture holds the buffer element for element: whole rows, a partial last row, one short row', async () => {
    for (const n of [2 * LINEAR_WIDTH + 37, LINEAR_WIDTH, 5]) {
      expect(linearTextureFits(n)).toBe(true);
      const src = rand(4 * n, n);
      const t = Tensor.from(src, [4 * n]);
      expectGathered(await gather(t, n, 7919), src, n, 7919);
      t.dispose();
    }
    expect(linearTextureFits(LINEAR_WIDTH * (rt().gpu.limits.maxTextureDimension2D + 1))).toBe(false);
  });

  it('reusing a cached texture for the next copy in the same batch keeps each kernel reading its own data', async () => {
    const n = LINEAR_WIDTH + 3;
    const a = rand(4 * n, 1);
    const b = rand(4 * n, 2);
    const ta = Tensor.from(a, [4 * n]);
    const tb = Tensor.from(b, [4 * n]);
    const outs = [Tensor.empty([4 * n]), Tensor.empty([4 * n])];
    // both copies go to the same cached texture before either kernel has run
    for (const [k, t] of [ta, tb].entries())
      rt().dispatch({
        name: 'staging_gather',
        code: gatherKernel,
        uniforms: new Uniforms().u32(n, 1, 0, 0).done(),
        bindings: [{ texture: linearTexture(t, n, 'shared') }, { buffer: outs[k].buffer }],
        workgroups: [Math.ceil(n / 64)],
      });
    expectGathered((await outs[0].data()) as Float32Array, a, n, 1);
    expectGathered((await outs[1].data()) as Float32Array, b, n, 1);
    [ta, tb, ...outs].forEach((t) => t.dispose());
  });

  it('are cached by role and size as pooled memory, evicted least recently used past the cap, freed by releasePool', async () => {
    const r = rt();
    r.releasePool();
    expect(r.memory().pooledBytes).toBe(0);
    const bytes = 16 * 16 * 16; // one [16, 16, 1] texture
    const a = stagingTexture('a', [16, 16, 1]);
    expect(stagingTexture('a', [16, 16, 1])).toBe(a);
    expect(stagingTexture('a', [16, 32, 1])).not.toBe(a);
    expect(r.memory().pooledBytes).toBe(3 * bytes);
    // a cap of three: the next texture evicts the least recently used ('a' 16x16 was used before 'a' 16x32)
    setStagingTextureCacheBytes(3 * bytes);
    stagingTexture('b', [16, 16, 1]);
    expect(r.memory().pooledBytes).toBe(3 * bytes);
    expect(stagingTexture('a', [16, 16, 1])).not.toBe(a);
    // eviction with a queued reader of the evicted texture: the batch is submitted before the texture goes
    const n = 16 * 16;
    const src = rand(4 * n, 3);
    const t = Tensor.from(src, [4 * n]);
    setStagingTextureCacheBytes(bytes);
    const out = Tensor.empty([4 * n]);
    r.dispatch({
      name: 'staging_gather',
      code: gatherKernel,
      uniforms: new Uniforms().u32(n, 3, 0, 0).done(),
      bindings: [{ texture: linearTexture(t, n, 'evicted') }, { buffer: out.buffer }],
      workgroups: [Math.ceil(n / 64)],
    });
    stagingTexture('c', [16, 16, 1]);
    expectGathered((await out.data()) as Float32Array, src, n, 3);
    [t, out].forEach((x) => x.dispose());
    setStagingTextureCacheBytes(256 * 2 ** 20);
    r.releasePool();
    expect(r.memory().pooledBytes).toBe(0);
  });
});
