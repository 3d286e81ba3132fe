// The engine's public surface: device/runtime, tensors and scopes, autodiff, and every op.
export { init, rt, Runtime, GpuError, GpuOutOfMemoryError, DeviceLostError, Uniforms, type KernelProfileRow } from './runtime.js';
export { NoAdapterError, adapterName, type GpuContext, type DeviceOptions } from './device.js';
export { Tensor, ShapeError, tidy, tidyAsync, noGrad, noGradAsync, isGradEnabled, record, needsGrad, wantsGrad, type DType } from './tensor.js';
export { grad, backward, checkpoint } from './autodiff.js';
export * from './ops.js';
export { Adam, AdamW, type AdamOptions } from './optim.js';
