// Staging textures: copies of buffers that kernels on CPU adapters read through the texture path.
//
// On llvmpipe (lavapipe) a storage-buffer load whose address differs per lane is a loop over the 8 lanes with a
// bounds-check branch per component, while a texture fetch is one branchless gather, and a buffer-to-texture
// copy is a memcpy on the queue. So a kernel that reads far more than it writes runs faster on a texture copy
// of its input (bench/README.md: 2x for Winograd's dU -> dW transform, copy included). Texture stores are
// slower than buffer stores there (0.6x measured), so outputs stay in buffers, and a shader-side copy into a
// texture (a buffer load plus a texture store per texel) costs more than the memcpy: copies go through
// `copyBufferToTexture` wherever its 256-byte row alignment allows.
//
// The textures are cached per runtime by role and size, counted as the runtime's pooled memory and freed by its
// `releasePool()`. Reusing one for the next call is safe without waiting: the queue runs the next call's copy
// after this call's kernels. The least recently used go once the total passes the cap
// (`setStagingTextureCacheBytes`).
import { rt } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { perRuntime } from './util.js';

let capBytes = 256 * 2 ** 20;

/** Cap on the staging textures kept between calls (bytes; default 256 MiB); the least recently used go first. */
export function setStagingTextureCacheBytes(bytes: number) {
  capBytes = bytes;
}

/** storage formats of staging textures: f32 values, or f16 values (f16 activations; read back as f32 in shaders) */
export type StagingFormat = 'rgba32float' | 'rgba16float';
/** the staging format that holds the values of a tensor of dtype `dt` */
export const stagingFormat = (dt: string): StagingFormat => (dt === 'f16' ? 'rgba16float' : 'rgba32float');
/** bytes of one texel of `f` (one vec4 of the tensor it holds) */
export const texelBytes = (f: GPUTextureFormat) => (f === 'rgba16float' ? 8 : 16);
const texBytes = (x: GPUTexture) => x.width * x.height * x.depthOrArrayLayers * texelBytes(x.format);

const cache = perRuntime(
  () => new Map<string, GPUTexture>(),
  (m) => {
    for (const x of m.values()) (x.destroy(), rt().cacheBytes(-texBytes(x)));
    m.clear();
  },
);

/**
 * A texture [w, h, layers] of `format` (default rgba32float) for `role` (usable as a storage or sampled texture
 * and as a copy destination), from the cache or new; its previous contents are undefined.
 */
export function stagingTexture(role: string, size: [number, number, number], format: StagingFormat = 'rgba32float'): GPUTexture {
  const r = rt();
  const c = cache();
  const key = `${role} ${size.join('x')} ${format}`;
  let tex = c.get(key);
  if (tex) c.delete(key); // re-inserted below: the map's order is least recently used first
  else {
    let bytes = size[0] * size[1] * size[2] * texelBytes(format);
    for (const x of c.values()) bytes += texBytes(x);
    if (bytes > capBytes) {
      r.flush(); // pending kernels may use the textures destroyed here; submitted work keeps them alive
      for (const [k, x] of c) {
        if (bytes <= capBytes) break;
        bytes -= texBytes(x);
        x.destroy();
        r.cacheBytes(-texBytes(x));
        c.delete(k);
      }
    }
    tex = r.device.createTexture({
      size,
      format,
      usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.COPY_DST,
      label: `staging_${role}`,
    });
    r.cacheBytes(texBytes(tex));
  }
  c.set(key, tex);
  return tex;
}

// ---- a buffer as a linear texture ----
// A run of vec4s seen as a 2D texture LINEAR_WIDTH texels wide: element i at (i % width, i / width). Any
// length fits (one copy for the whole rows, one for the last partial row), and the shader's address
// arithmetic is a mask and a shift.

/** texels per row of a linear texture (a power of two; within compatibility mode's 4096 limit) */
export const LINEAR_WIDTH = 4096;
const LINEAR_SHIFT = Math.log2(LINEAR_WIDTH);

/** rows of the linear texture for `vec4s` values: rounded up to a multiple of 16, so that similar sizes share one */
const linearRows = (vec4s: number) => Math.ceil(Math.max(1, Math.ceil(vec4s / LINEAR_WIDTH)) / 16) * 16;

/** Whether `vec4s` values fit one linear texture on this device. */
export function linearTextureFits(vec4s: number): boolean {
  return linearRows(vec4s) <= rt().gpu.limits.maxTextureDimension2D;
}

/**
 * The first `vec4s` vec4 values of `t` copied into a linear texture for `role` (a 2D view, for `texture_2d<f32>`
 * bindings read with `linearLoad`; an f16 tensor goes to an rgba16float texture, which shaders read as f32).
 * The caller checks `linearTextureFits`.
 */
export function linearTexture(t: Tensor, vec4s: number, role: string): GPUTextureView {
  const full = Math.floor(vec4s / LINEAR_WIDTH);
  const rest = vec4s - full * LINEAR_WIDTH;
  const format = stagingFormat(t.dtype);
  const tex = stagingTexture(role, [LINEAR_WIDTH, linearRows(vec4s), 1], format);
  const r = rt();
  const rowBytes = LINEAR_WIDTH * texelBytes(format);
  if (full > 0) r.copyToTexture(t.buffer, 0, rowBytes, full, tex, [LINEAR_WIDTH, full, 1]);
  if (rest > 0) r.copyToTexture(t.buffer, full * rowBytes, rowBytes, 1, tex, [rest, 1, 1], [0, full, 0]);
  return tex.createView();
}

/** WGSL: element `idx` (a u32 expression) of the linear texture `name` (a `texture_2d<f32>`). */
export function linearLoad(name: string, idx: string): string {
  return `textureLoad(${name}, vec2<u32>((${idx}) & ${LINEAR_WIDTH - 1}u, (${idx}) >> ${LINEAR_SHIFT}u), 0)`;
}
