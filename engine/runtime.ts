// The runtime: one per device. Owns the buffer pool, the pipeline cache (keyed by WGSL source), the
// command batching (many dispatches per command buffer, flushed every `maxBatch` or on read-back),
// the per-batch uniform arena, memory counters, and error surfacing (validation, OOM, device loss).
import { requestGpu, type DeviceOptions, type GpuContext } from './device.js';

export class GpuError extends Error {
  constructor(message: string, readonly ops: string[] = []) {
    super(message);
    this.name = 'GpuError';
  }
}
export class GpuOutOfMemoryError extends GpuError {
  constructor(message: string, ops: string[] = []) {
    super(message, ops);
    this.name = 'GpuOutOfMemoryError';
  }
}
export class DeviceLostError extends GpuError {
  constructor(message: string) {
    super(message);
    this.name = 'DeviceLostError';
  }
}

const STORAGE_USAGE = GPUBufferUsageFlags();
function GPUBufferUsageFlags() {
  // GPUBufferUsage is a global only after the webgpu module is loaded; use numeric constants.
  return { STORAGE: 0x80, COPY_SRC: 0x4, COPY_DST: 0x8, UNIFORM: 0x40, MAP_READ: 0x1, QUERY_RESOLVE: 0x200 };
}

/** Round a byte size up to its pool bucket: powers of two up to 1 MiB, then multiples of 1/8 of the power of two. */
export function bucketSize(bytes: number): number {
  const b = Math.max(256, bytes);
  if (b <= 1 << 20) return 1 << Math.ceil(Math.log2(b));
  const p = 1 << Math.floor(Math.log2(b));
  const step = p / 8;
  return Math.ceil(b / step) * step;
}

/** A storage buffer (or a window of one) or a texture view bound to the next binding slot of a kernel. */
export type Binding = BufferBinding | { texture: GPUTextureView };
export interface BufferBinding {
  buffer: GPUBuffer;
  /** byte offset into the buffer (multiple of minStorageBufferOffsetAlignment) */
  offset?: number;
  size?: number;
}

export interface DispatchSpec {
  /** op name, used as the pipeline label and in error messages */
  name: string;
  /** WGSL source; binding 0 is the uniform block when `uniforms` is given, then the bindings in order */
  code: string;
  entry?: string;
  bindings: Binding[];
  uniforms?: ArrayBuffer;
  workgroups: [number, number?, number?];
}

/** One kernel's share of a profile (`Runtime.startProfile` / `stopProfile`). */
export interface KernelProfileRow {
  /** the dispatch's op name (pipeline label) */
  name: string;
  calls: number;
  /** GPU time summed over the calls, from timestamp queries around each dispatch */
  ms: number;
}

interface ProfileState {
  querySet: GPUQuerySet;
  resolve: GPUBuffer;
  /** dispatches of the current batch, in query order */
  names: string[];
  totals: Map<string, { calls: number; ns: number }>;
  reads: Promise<void>[];
}

export interface MemoryStats {
  liveBytes: number;
  peakBytes: number;
  pooledBytes: number;
  liveBuffers: number;
}

/** Dispatches per batch while profiling (two timestamps each). */
const PROFILE_BATCH = 64;

export class Runtime {
  readonly device: GPUDevice;
  readonly gpu: GpuContext;
  /** largest storage binding in bytes; tests may lower it to exercise the split paths */
  maxBindingBytes: number;
  readonly maxWorkgroups: number;
  readonly offsetAlign: number;
  maxBatch = 128;
  /**
   * Buffers released during a batch return to the pool only after its submit, so a batch also ends once this
   * many bytes wait for reuse: long batches for small tensors (fewer submits), bounded memory for big ones.
   */
  maxPendingFreeBytes = 64 * 1024 * 1024;
  private pendingFreeBytes = 0;
  /** optional cap on live GPU bytes (beyond the device's own limits); throws GpuOutOfMemoryError when exceeded */
  memoryCap = Infinity;

  // by WGSL source, then entry point; each with its bind group layout (asking Dawn for it per dispatch costs)
  private pipelines = new Map<string, Map<string, { pipeline: GPUComputePipeline; layout: GPUBindGroupLayout }>>();
  /** the open compute pass of the current batch: consecutive dispatches share one pass */
  private pass: GPUComputePassEncoder | null = null;
  private free = new Map<number, GPUBuffer[]>();
  private pendingFree: GPUBuffer[] = [];
  private encoder: GPUCommandEncoder | null = null;
  private batchOps: string[] = [];
  private uniformData = new Uint8Array(64 * 1024);
  private uniformUsed = 0;
  private uniformBuffer: GPUBuffer | null = null;
  private uniformBuffers: GPUBuffer[] = [];
  private error: GpuError | null = null;
  private lost: string | null = null;
  private stats: MemoryStats = { liveBytes: 0, peakBytes: 0, pooledBytes: 0, liveBuffers: 0 };
  dispatchCount = 0;
  private prof: ProfileState | null = null;

  constructor(gpu: GpuContext) {
    this.gpu = gpu;
    this.device = gpu.device;
    this.maxBindingBytes = gpu.limits.maxStorageBufferBindingSize;
    this.maxWorkgroups = gpu.limits.maxComputeWorkgroupsPerDimension;
    this.offsetAlign = gpu.limits.minStorageBufferOffsetAlignment;
    this.device.lost.then((info) => {
      if (info.reason !== 'destroyed') this.lost = `${info.reason}: ${info.message}`;
    });
    this.device.addEventListener('uncapturederror', (ev) => {
      const err = (ev as GPUUncapturedErrorEvent).error;
      this.recordError(err, ['(outside a batch)']);
    });
  }

  get features() {
    return this.gpu.features;
  }

  private recordError(err: GPUError, ops: string[]) {
    if (this.error) return;
    const where = ops.length ? ` in a batch with ops [${[...new Set(ops)].join(', ')}]` : '';
    const isOom = err.constructor?.name === 'GPUOutOfMemoryError' || /out of memory/i.test(err.message);
    this.error = isOom
      ? new GpuOutOfMemoryError(`GPU out of memory${where}: ${err.message}`, ops)
      : new GpuError(`WebGPU error${where}: ${err.message}`, ops);
  }

  /** Throws any error recorded since the last check (called at every op and read-back). */
  check() {
    if (this.lost) throw new DeviceLostError(`WebGPU device lost (${this.lost}); recreate the engine to continue`);
    if (this.error) {
      const e = this.error;
      this.error = null;
      throw e;
    }
  }

  // ---- memory ----
  alloc(bytes: number, label = 'tensor'): GPUBuffer {
    this.check();
    const size = bucketSize(bytes);
    if (size > this.gpu.limits.maxBufferSize)
      throw new GpuOutOfMemoryError(`${label}: a buffer of ${size} bytes exceeds the device's maxBufferSize (${this.gpu.limits.maxBufferSize})`, [label]);
    const list = this.free.get(size);
    let buf = list?.pop();
    if (buf) this.stats.pooledBytes -= size;
    else {
      if (this.stats.liveBytes + size > this.memoryCap) {
        this.releasePool();
        if (this.stats.liveBytes + size > this.memoryCap)
          throw new GpuOutOfMemoryError(`${label}: allocating ${size} bytes would exceed the memory cap (${this.memoryCap}); live ${this.stats.liveBytes}`, [label]);
      }
      this.device.pushErrorScope('out-of-memory');
      buf = this.device.createBuffer({ size, usage: STORAGE_USAGE.STORAGE | STORAGE_USAGE.COPY_SRC | STORAGE_USAGE.COPY_DST, label });
      this.device.popErrorScope().then((e) => e && this.recordError(e, [label]));
    }
    this.stats.liveBytes += size;
    this.stats.liveBuffers++;
    if (this.stats.liveBytes > this.stats.peakBytes) this.stats.peakBytes = this.stats.liveBytes;
    return buf;
  }

  /** Return a buffer to the pool; it becomes reusable only after the submit that may still use it. */
  release(buf: GPUBuffer) {
    this.stats.liveBytes -= buf.size;
    this.stats.liveBuffers--;
    this.pendingFree.push(buf);
    this.pendingFreeBytes += buf.size;
    if (!this.encoder) this.recycle();
  }

  private recycle() {
    for (const b of this.pendingFree) {
      let list = this.free.get(b.size);
      if (!list) this.free.set(b.size, (list = []));
      list.push(b);
      this.stats.pooledBytes += b.size;
    }
    this.pendingFree = [];
    this.pendingFreeBytes = 0;
  }

  /** Destroy every pooled (unused) buffer, and empty the kernels' caches (see `onReleasePool`). */
  releasePool() {
    this.flush();
    for (const list of this.free.values()) for (const b of list) b.destroy();
    this.free.clear();
    for (const drop of this.cacheDrops) drop();
    this.stats.pooledBytes = 0;
  }

  private cacheDrops = new Set<() => void>();
  /**
   * Memory a kernel module keeps between calls (e.g. attention's staging textures) is counted as pooled:
   * `cacheBytes(+n)` when it is created, `cacheBytes(-n)` when freed; `drop` frees all of it on `releasePool()`.
   */
  cacheBytes(delta: number) {
    this.stats.pooledBytes += delta;
  }
  onReleasePool(drop: () => void) {
    this.cacheDrops.add(drop);
  }

  memory(): MemoryStats {
    return { ...this.stats };
  }
  resetPeak() {
    this.stats.peakBytes = this.stats.liveBytes;
  }

  // ---- pipelines ----
  pipeline(name: string, code: string, entry = 'main'): GPUComputePipeline {
    return this.pipelineEntry(name, code, entry).pipeline;
  }

  private pipelineEntry(name: string, code: string, entry = 'main'): { pipeline: GPUComputePipeline; layout: GPUBindGroupLayout } {
    // keyed by the source string itself: kernels that build their WGSL once per configuration pass the same
    // string object every time, whose hash V8 keeps, so a hit costs no rehashing of the source
    let byEntry = this.pipelines.get(code);
    const hit = byEntry?.get(entry);
    if (hit) return hit;
    this.device.pushErrorScope('validation');
    const module = this.device.createShaderModule({ code, label: name });
    const p = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: entry }, label: name });
    this.device.popErrorScope().then(async (e) => {
      if (!e) return;
      const info = await module.getCompilationInfo();
      const lines = code.split('\n');
      const msgs = info.messages
        .map((m) => `  line ${m.lineNum}: ${m.message}\n    ${lines[m.lineNum - 1]?.trim() ?? ''}`)
        .join('\n');
      this.recordError({ message: `shader "${name}" failed to compile:\n${msgs || e.message}` } as GPUError, [name]);
    });
    const made = { pipeline: p, layout: p.getBindGroupLayout(0) };
    if (!byEntry) this.pipelines.set(code, (byEntry = new Map()));
    byEntry.set(entry, made);
    return made;
  }

  // ---- dispatch ----
  private uniformSlot(data: ArrayBuffer): number {
    const size = Math.ceil(data.byteLength / 256) * 256;
    if (this.uniformUsed + size > this.uniformData.byteLength) this.flush();
    if (!this.uniformBuffer) {
      this.uniformBuffer = this.device.createBuffer({ size: this.uniformData.byteLength, usage: STORAGE_USAGE.UNIFORM | STORAGE_USAGE.COPY_DST, label: 'uniforms' });
    }
    const off = this.uniformUsed;
    this.uniformData.set(new Uint8Array(data), off);
    this.uniformUsed += size;
    return off;
  }

  private ensureEncoder(): GPUCommandEncoder {
    if (!this.encoder) {
      this.encoder = this.device.createCommandEncoder({ label: 'batch' });
      this.device.pushErrorScope('validation');
      this.device.pushErrorScope('out-of-memory');
    }
    return this.encoder;
  }

  dispatch(spec: DispatchSpec) {
    this.check();
    const { pipeline: pipe, layout } = this.pipelineEntry(spec.name, spec.code, spec.entry);
    // take the uniform slot first: a full arena flushes the batch
    const uoff = spec.uniforms ? this.uniformSlot(spec.uniforms) : -1;
    this.ensureEncoder();
    const entries: GPUBindGroupEntry[] = [];
    let b = 0;
    if (spec.uniforms) entries.push({ binding: b++, resource: { buffer: this.uniformBuffer!, offset: uoff, size: spec.uniforms.byteLength } });
    for (const bind of spec.bindings) {
      if ('texture' in bind) {
        entries.push({ binding: b++, resource: bind.texture });
        continue;
      }
      const size = bind.size ?? bind.buffer.size - (bind.offset ?? 0);
      entries.push({ binding: b++, resource: { buffer: bind.buffer, offset: bind.offset ?? 0, size: Math.min(size, this.maxBindingBytes) } });
    }
    const [x, y = 1, z = 1] = spec.workgroups;
    if (x > this.maxWorkgroups || y > this.maxWorkgroups || z > this.maxWorkgroups)
      throw new GpuError(`${spec.name}: dispatch ${x}x${y}x${z} exceeds maxComputeWorkgroupsPerDimension ${this.maxWorkgroups}`, [spec.name]);
    const group = this.device.createBindGroup({ layout, entries, label: spec.name });
    // One pass for consecutive dispatches: WebGPU makes each dispatch's storage writes visible to the next
    // (every dispatch is its own usage scope), so the pass boundary bought nothing but overhead. A profiled
    // dispatch gets a pass of its own, with timestamps at its start and end.
    const pass = this.prof ? this.profiledPass(spec.name) : (this.pass ??= this.encoder!.beginComputePass({ label: 'batch' }));
    pass.setPipeline(pipe);
    pass.setBindGroup(0, group);
    if (x > 0 && y > 0 && z > 0) pass.dispatchWorkgroups(x, y, z);
    if (this.prof) pass.end();
    this.batchOps.push(spec.name);
    this.dispatchCount++;
    if (
      this.batchOps.length >= this.maxBatch ||
      this.pendingFreeBytes >= this.maxPendingFreeBytes ||
      (this.prof && this.prof.names.length >= PROFILE_BATCH)
    )
      this.flush();
  }

  // ---- kernel profile ----
  /**
   * Time every dispatch from now on with GPU timestamp queries (each dispatch then gets a compute pass of its
   * own, so a profiled run is somewhat slower than a plain one). Needs the adapter's 'timestamp-query'.
   */
  startProfile() {
    if (this.prof) throw new GpuError('startProfile: a profile is already running; call stopProfile() first');
    if (!this.features.has('timestamp-query'))
      throw new GpuError("startProfile: this adapter has no 'timestamp-query' feature, so kernels cannot be timed on it");
    this.flush();
    const count = 2 * PROFILE_BATCH;
    this.prof = {
      querySet: this.device.createQuerySet({ type: 'timestamp', count, label: 'profile' }),
      resolve: this.device.createBuffer({ size: 8 * count, usage: STORAGE_USAGE.QUERY_RESOLVE | STORAGE_USAGE.COPY_SRC, label: 'profile resolve' }),
      names: [],
      totals: new Map(),
      reads: [],
    };
  }

  /** End the profile: per-kernel GPU time, largest first. */
  async stopProfile(): Promise<KernelProfileRow[]> {
    const p = this.prof;
    if (!p) throw new GpuError('stopProfile: no profile is running (call startProfile() first)');
    this.flush();
    this.prof = null;
    await Promise.all(p.reads);
    p.querySet.destroy();
    p.resolve.destroy();
    this.check();
    return [...p.totals]
      .map(([name, t]) => ({ name, calls: t.calls, ms: t.ns / 1e6 }))
      .sort((a, b) => b.ms - a.ms);
  }

  private profiledPass(name: string): GPUComputePassEncoder {
    const p = this.prof!;
    this.endPass();
    const i = p.names.length;
    p.names.push(name);
    return this.encoder!.beginComputePass({
      label: name,
      timestampWrites: { querySet: p.querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 },
    });
  }

  /** Resolve the current batch's timestamps into a buffer read after the submit (called by flush). */
  private resolveProfile(): (() => void) | null {
    const p = this.prof;
    if (!p || p.names.length === 0) return null;
    const n = p.names.length;
    const names = p.names;
    p.names = [];
    const staging = this.device.createBuffer({ size: 16 * n, usage: STORAGE_USAGE.MAP_READ | STORAGE_USAGE.COPY_DST, label: 'profile read' });
    this.encoder!.resolveQuerySet(p.querySet, 0, 2 * n, p.resolve, 0);
    this.encoder!.copyBufferToBuffer(p.resolve, 0, staging, 0, 16 * n);
    return () => {
      p.reads.push(
        staging.mapAsync(0x1).then(() => {
          const t = new BigInt64Array(staging.getMappedRange().slice(0));
          staging.unmap();
          staging.destroy();
          for (let i = 0; i < n; i++) {
            const ns = Number(t[2 * i + 1] - t[2 * i]);
            const row = p.totals.get(names[i]) ?? { calls: 0, ns: 0 };
            row.calls++;
            // timestamps may be quantized or (rarely) out of order on some adapters: never count negative time
            row.ns += Math.max(0, ns);
            p.totals.set(names[i], row);
          }
        }),
      );
    };
  }

  /** Record a buffer-to-buffer copy in the current batch. */
  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, bytes: number) {
    this.check();
    const enc = this.ensureEncoder();
    this.endPass();
    enc.copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
    this.batchOps.push('copy');
  }

  /**
   * Record a buffer-to-texture copy in the current batch: `size` texels [width, height, layers] from `src` at
   * `offset`, rows `bytesPerRow` apart (a multiple of 256) and layers `rowsPerImage` rows apart, to `origin`.
   */
  copyToTexture(
    src: GPUBuffer,
    offset: number,
    bytesPerRow: number,
    rowsPerImage: number,
    dst: GPUTexture,
    size: [number, number, number],
    origin: [number, number, number] = [0, 0, 0],
  ) {
    this.check();
    const enc = this.ensureEncoder();
    this.endPass();
    enc.copyBufferToTexture({ buffer: src, offset, bytesPerRow, rowsPerImage }, { texture: dst, origin }, size);
    this.batchOps.push('copy_to_texture');
  }

  private endPass() {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
  }

  /** Submit the current batch. */
  flush() {
    if (!this.encoder) return;
    this.endPass();
    const afterSubmit = this.resolveProfile();
    if (this.uniformUsed > 0) this.device.queue.writeBuffer(this.uniformBuffer!, 0, this.uniformData, 0, this.uniformUsed);
    this.device.queue.submit([this.encoder.finish()]);
    afterSubmit?.();
    const ops = this.batchOps;
    const pop = (e: GPUError | null) => e && this.recordError(e, ops);
    this.device.popErrorScope().then(pop);
    this.device.popErrorScope().then(pop);
    this.encoder = null;
    this.batchOps = [];
    if (this.uniformBuffer) {
      // the uniform arena of a submitted batch is destroyed once the queue is done with it
      const ub = this.uniformBuffer;
      this.uniformBuffers.push(ub);
      this.uniformBuffer = null;
      if (this.uniformBuffers.length > 8) {
        const old = this.uniformBuffers.splice(0, this.uniformBuffers.length - 8);
        this.device.queue.onSubmittedWorkDone().then(() => old.forEach((u) => u.destroy()));
      }
    }
    this.uniformUsed = 0;
    this.recycle();
  }

  /** Upload host data into a GPU buffer (queued before the next submit). */
  write(buf: GPUBuffer, data: ArrayBufferView, offset = 0) {
    this.flush(); // keep queue order: pending dispatches may read the old contents
    this.device.queue.writeBuffer(buf, offset, data.buffer, data.byteOffset, data.byteLength);
  }

  /** Read bytes back (flushes pending work). */
  async read(buf: GPUBuffer, offset: number, bytes: number): Promise<ArrayBuffer> {
    this.check();
    const size = Math.ceil(bytes / 4) * 4;
    const staging = this.device.createBuffer({ size, usage: STORAGE_USAGE.MAP_READ | STORAGE_USAGE.COPY_DST, label: 'readback' });
    this.copy(buf, offset, staging, 0, size);
    this.flush();
    try {
      await staging.mapAsync(1 /* READ */);
    } catch (e) {
      this.check();
      throw new GpuError(`read-back failed: ${(e as Error).message}`);
    }
    const out = staging.getMappedRange().slice(0, bytes);
    staging.unmap();
    staging.destroy();
    this.check();
    return out;
  }

  /** Waits for all submitted work (for benchmarks). */
  async sync() {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.check();
  }
}

let current: Runtime | null = null;
let pending: Promise<Runtime> | null = null;

/** Create (once) and return the runtime. */
export async function init(opts?: DeviceOptions): Promise<Runtime> {
  if (current) return current;
  if (!pending) pending = requestGpu(opts).then((g) => (current = new Runtime(g)));
  try {
    return await pending;
  } catch (e) {
    pending = null;
    throw e;
  }
}

/** The runtime created by `init()`. */
export function rt(): Runtime {
  if (!current) throw new Error('engine not initialised: call `await init()` first');
  return current;
}

/** Helper to build a uniform block: u32/i32/f32 fields, each 4 bytes, in order. */
export class Uniforms {
  private view: DataView;
  private n = 0;
  constructor(private maxFields = 64) {
    this.view = new DataView(new ArrayBuffer(maxFields * 4));
  }
  u32(...v: number[]) {
    for (const x of v) this.view.setUint32(4 * this.n++, x >>> 0, true);
    return this;
  }
  i32(...v: number[]) {
    for (const x of v) this.view.setInt32(4 * this.n++, x | 0, true);
    return this;
  }
  f32(...v: number[]) {
    for (const x of v) this.view.setFloat32(4 * this.n++, x, true);
    return this;
  }
  /** pad to a multiple of 4 fields (vec4 alignment) */
  align4() {
    while (this.n % 4) this.u32(0);
    return this;
  }
  done(): ArrayBuffer {
    const len = Math.max(16, Math.ceil((this.n * 4) / 16) * 16);
    return this.view.buffer.slice(0, len) as ArrayBuffer;
  }
}
