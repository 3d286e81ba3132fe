// Starting the engine in a browser: checks for WebGPU, picks core or compatibility mode (Chromium's
// OpenGL ES backend only offers compatibility-mode adapters), checks the adapter's limits against what
// the engine's kernels need, and reports device loss.
import { init, rt, type Runtime } from '../../engine/runtime.js';

export class GpuSetupError extends Error {
  constructor(
    readonly kind: 'no-webgpu' | 'no-adapter' | 'limits' | 'device',
    message: string,
  ) {
    super(message);
    this.name = 'GpuSetupError';
  }
}

/**
 * The limits the engine's kernels rely on: 16x16 matmul tiles (256 invocations, 8 KiB of workgroup memory),
 * 64-wide workgroups elsewhere, and up to 7 storage buffers in one kernel (attention backward).
 */
export const REQUIRED_LIMITS: Record<string, number> = {
  maxComputeInvocationsPerWorkgroup: 256,
  maxComputeWorkgroupSizeX: 64,
  maxComputeWorkgroupSizeY: 16,
  maxComputeWorkgroupStorageSize: 8192,
  maxStorageBuffersPerShaderStage: 7,
  maxComputeWorkgroupsPerDimension: 65535,
};

/** Limits below what the kernels need, as readable lines (empty when the adapter is fine). */
export function limitProblems(limits: GPUSupportedLimits): string[] {
  const out: string[] = [];
  const got = limits as unknown as Record<string, number>;
  for (const [k, need] of Object.entries(REQUIRED_LIMITS)) {
    const have = got[k];
    if (typeof have === 'number' && have < need) out.push(`${k} is ${have}, needs at least ${need}`);
  }
  return out;
}

export interface GpuStart {
  runtime: Runtime;
  compat: boolean;
  description: string;
}

/** Create the engine's device. `forceCompat` asks for a compatibility-mode adapter even when a core one exists. */
export async function startGpu(opts: { forceCompat?: boolean; onLost?: (message: string) => void } = {}): Promise<GpuStart> {
  const gpu = (navigator as Navigator & { gpu?: GPU }).gpu;
  if (!gpu) {
    const secure = window.isSecureContext;
    throw new GpuSetupError(
      'no-webgpu',
      secure
        ? 'This browser has no WebGPU (navigator.gpu is missing). Use Chrome or Edge 113+, Safari 26+, or Firefox 141+ on a system where WebGPU is enabled.'
        : 'WebGPU needs a secure context: open this page over https:// or from http://localhost.',
    );
  }
  let adapter: GPUAdapter | null = null;
  let compat = false;
  if (!opts.forceCompat) adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' }).catch(() => null);
  if (!adapter) {
    adapter = await gpu.requestAdapter({ featureLevel: 'compatibility' } as GPURequestAdapterOptions).catch(() => null);
    compat = !!adapter;
  }
  if (!adapter)
    throw new GpuSetupError(
      'no-adapter',
      'WebGPU is present but no GPU adapter is available (the GPU may be blocklisted or disabled). In Chrome, check chrome://gpu; on Linux, Chromium needs --enable-unsafe-webgpu (and Vulkan).',
    );
  const problems = limitProblems(adapter.limits);
  if (problems.length)
    throw new GpuSetupError('limits', `This GPU adapter's WebGPU limits are too small for the engine's kernels: ${problems.join('; ')}.`);
  let runtime: Runtime;
  try {
    runtime = await init({ compatibility: compat });
  } catch (e) {
    throw new GpuSetupError('device', `Could not create the WebGPU device: ${(e as Error).message}`);
  }
  runtime.device.lost.then((info) => {
    if (info.reason !== 'destroyed') opts.onLost?.(info.message || 'unknown reason');
  });
  const a = runtime.gpu.adapterInfo;
  const description = [a.vendor, a.architecture, a.device, a.description].filter(Boolean).join(' ') || 'unknown adapter';
  return { runtime, compat: runtime.gpu.compat || compat, description };
}

export function gpuSummary(): string {
  const g = rt().gpu;
  const a = g.adapterInfo;
  const name = a.description || [a.vendor, a.architecture, a.device].filter(Boolean).join(' ') || 'adapter without a name';
  const mode = [g.compat ? 'compatibility mode' : 'core', g.adapterClass === 'cpu' ? 'CPU kernel presets' : 'GPU kernel presets'];
  return `${name} (${mode.join(', ')}; max binding ${(g.limits.maxStorageBufferBindingSize / 2 ** 20).toFixed(0)} MiB)`;
}
