// One way to get a WebGPU device in Node (Dawn through npm `webgpu`) and in browsers (`navigator.gpu`).
// Requests the adapter's real limits and the optional features we use when present.

export class NoAdapterError extends Error {
  constructor(detail: string) {
    const isNode = typeof process !== 'undefined' && !!process.versions?.node;
    const fix = isNode
      ? 'On Debian bookworm without a GPU, install Mesa\'s lavapipe (CPU Vulkan) from bookworm-backports as root:\n' +
        "  echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/backports.list\n" +
        '  apt-get update && apt-get install -y -t bookworm-backports mesa-vulkan-drivers libvulkan1\n' +
        '(or run `npm run setup`, which does this when run as root).'
      : 'Use a browser with WebGPU enabled (Chrome/Edge 113+, or Chromium with --enable-unsafe-webgpu), served over https or http://localhost.';
    super(`No WebGPU adapter found (${detail}).\n${fix}`);
    this.name = 'NoAdapterError';
  }
}

export interface GpuContext {
  device: GPUDevice;
  adapterInfo: { vendor: string; architecture: string; device: string; description: string };
  features: Set<string>;
  limits: GPUSupportedLimits;
  /** true when the device was created in WebGPU compatibility mode */
  compat: boolean;
  /** subgroup size range when the `subgroups` feature exists */
  subgroupMinSize?: number;
  subgroupMaxSize?: number;
  /** WGSL language features of the implementation (`GPU.wgslLanguageFeatures`), e.g. 'readonly_and_readwrite_storage_textures' */
  wgslFeatures: Set<string>;
  /** a short name of the adapter class used to choose kernel presets: 'cpu' (lavapipe, SwiftShader) or 'gpu' */
  adapterClass: 'cpu' | 'gpu';
}

/** The adapter's name for logs and records: its description, else its device id, else its vendor. */
export function adapterName(info: GpuContext['adapterInfo']): string {
  return info.description || info.device || info.vendor || 'unknown adapter';
}

export interface DeviceOptions {
  powerPreference?: GPUPowerPreference;
  /** ask for a compatibility-mode adapter (needed for Chromium's OpenGL ES WebGPU backend) */
  compatibility?: boolean;
  /** features to leave off even when present (testing the fallbacks) */
  disableFeatures?: string[];
}

const OPTIONAL_FEATURES = ['shader-f16', 'timestamp-query', 'subgroups'];
const LIMITS = [
  'maxBufferSize',
  'maxStorageBufferBindingSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ',
  'maxComputeWorkgroupsPerDimension',
  'maxStorageBuffersPerShaderStage',
] as const;

async function getGpu(): Promise<GPU> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu) return nav.gpu;
  const isNode = typeof process !== 'undefined' && !!process.versions?.node;
  if (!isNode) throw new NoAdapterError('navigator.gpu is undefined: this browser has no WebGPU or the page is not a secure context');
  if (!process.env.XDG_RUNTIME_DIR) process.env.XDG_RUNTIME_DIR = '/tmp';
  const mod = (await import('webgpu')) as unknown as { create: (flags: string[]) => GPU; globals: object };
  Object.assign(globalThis, mod.globals);
  // Dawn's instance must outlive every device made from it: if the GPU object were garbage-collected,
  // event processing would run on a destroyed instance and crash the process. Keep it for good.
  nodeGpu ??= mod.create([]);
  return nodeGpu;
}
let nodeGpu: GPU | undefined;

export async function requestGpu(opts: DeviceOptions = {}): Promise<GpuContext> {
  const gpu = await getGpu();
  const req: GPURequestAdapterOptions & { featureLevel?: string } = { powerPreference: opts.powerPreference ?? 'high-performance' };
  if (opts.compatibility) req.featureLevel = 'compatibility';
  let adapter: GPUAdapter | null = null;
  try {
    adapter = await gpu.requestAdapter(req);
  } catch (e) {
    throw new NoAdapterError(`requestAdapter failed: ${(e as Error).message}`);
  }
  if (!adapter) throw new NoAdapterError('requestAdapter returned null');
  const disabled = new Set(opts.disableFeatures ?? []);
  const requiredFeatures = OPTIONAL_FEATURES.filter((f) => adapter!.features.has(f) && !disabled.has(f)) as GPUFeatureName[];
  const requiredLimits: Record<string, number> = {};
  for (const k of LIMITS) {
    const v = (adapter.limits as unknown as Record<string, number>)[k];
    if (typeof v === 'number') requiredLimits[k] = v;
  }
  const device = await adapter.requestDevice({ requiredFeatures, requiredLimits });
  const info = (adapter as { info?: GPUAdapterInfo }).info;
  const adapterInfo = {
    vendor: info?.vendor ?? '',
    architecture: info?.architecture ?? '',
    device: info?.device ?? '',
    description: info?.description ?? '',
  };
  const desc = `${adapterInfo.vendor} ${adapterInfo.architecture} ${adapterInfo.device} ${adapterInfo.description}`.toLowerCase();
  const adapterClass = /llvmpipe|lavapipe|swiftshader|cpu|mesa\b.*software/.test(desc) || (info as { type?: string })?.type === 'cpu' ? 'cpu' : 'gpu';
  const compat = !adapter.features.has('core-features-and-limits') && !!opts.compatibility;
  return {
    device,
    adapterInfo,
    features: new Set([...device.features]),
    limits: device.limits,
    compat,
    subgroupMinSize: (info as unknown as { subgroupMinSize?: number })?.subgroupMinSize,
    subgroupMaxSize: (info as unknown as { subgroupMaxSize?: number })?.subgroupMaxSize,
    wgslFeatures: new Set([...((gpu as { wgslLanguageFeatures?: Iterable<string> }).wgslLanguageFeatures ?? [])]),
    adapterClass,
  };
}
