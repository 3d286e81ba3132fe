// Experiment: what one lane-varying vec4 load costs on this adapter, by memory kind.
// `npx tsx bench/experiments/load-costs.ts`. Each kernel runs a loop of 8 statements `acc = fma(acc, c, load)`;
// the table shows process CPU nanoseconds per statement per 8-lane subgroup (lavapipe runs kernels on CPU
// threads, so CPU time stays meaningful when other processes share the cores). Subtract the `fma only` row
// to get the load itself. Findings on llvmpipe (Mesa 25.0, AVX2): storage-buffer loads whose address differs
// per lane become a per-lane loop with a bounds-check branch per component; read-only storage textures are
// fetched by a branchless gather function (several times cheaper, but every fetch is a call that spills
// all vector registers); uniform buffers with constant offsets are scalar loads + broadcast.
import { init, rt } from '../../engine/index.js';

await init();
const dev = rt().device;
const W = 1024;
const H = 256;
const tex = dev.createTexture({ size: [W, H], format: 'rgba32float', usage: GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST });
const ubo = dev.createBuffer({ size: 65536, usage: GPUBufferUsage.UNIFORM });
const ssbo = dev.createBuffer({ size: W * H * 16, usage: GPUBufferUsage.STORAGE });
const out = dev.createBuffer({ size: 4096 * 8 * 16, usage: GPUBufferUsage.STORAGE });

const LOADS: Record<string, string> = {
  'fma only': `vec4<f32>(f32(k))`,
  'storage buffer, vec4 per lane': `S[(k * 8u + lid.x) & 16383u]`,
  'storage buffer, f32 per lane': `vec4<f32>(S1[(k * 8u + lid.x) & 65535u])`,
  'storage buffer, same address': `S[(wid.x * 64u + k) & 16383u]`,
  'uniform buffer, vec4 per lane': `U[(k * 8u + lid.x) & 4095u]`,
  'uniform buffer, constant index': `U[7]`,
  'workgroup memory, vec4 per lane': `WG[(k * 8u + lid.x) & 1023u]`,
  'sampled texture textureLoad': `textureLoad(T, vec2<u32>((k * 8u + lid.x) & 1023u, wid.x & 255u), 0)`,
  'read-only storage texture': `textureLoad(ST, vec2<u32>((k * 8u + lid.x) & 1023u, wid.x & 255u))`,
};

const rows: Record<string, string>[] = [];
for (const [name, load] of Object.entries(LOADS)) {
  const stmts = [...Array(8).keys()].map((j) => `{ let k = k0 + ${j}u; acc${j & 3} = fma(acc${j & 3}, vec4<f32>(1.0001), ${load}); }`);
  const code = /* wgsl */ `
@group(0) @binding(0) var T: texture_2d<f32>;
@group(0) @binding(1) var ST: texture_storage_2d<rgba32float, read>;
@group(0) @binding(2) var<uniform> U: array<vec4<f32>, 4096>;
@group(0) @binding(3) var<storage, read> S: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> S1: array<f32>;
@group(0) @binding(5) var<storage, read_write> Y: array<vec4<f32>>;
var<workgroup> WG: array<vec4<f32>, 1024>;
@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  WG[lid.x] = S[lid.x];
  workgroupBarrier();
  var acc0 = vec4<f32>(0.0); var acc1 = acc0; var acc2 = acc0; var acc3 = acc0;
  let n = arrayLength(&Y) / 32u;
  for (var k0 = 0u; k0 < n; k0 += 8u) {
    ${stmts.join('\n    ')}
  }
  Y[wid.x * 8u + lid.x] = acc0 + acc1 + acc2 + acc3 + textureLoad(T, vec2<u32>(0u), 0) + textureLoad(ST, vec2<u32>(0u)) + U[0] + vec4<f32>(S1[0]) + WG[1];
}`;
  const pipe = dev.createComputePipeline({ layout: 'auto', compute: { module: dev.createShaderModule({ code }), entryPoint: 'main' } });
  const bg = dev.createBindGroup({
    layout: pipe.getBindGroupLayout(0),
    entries: [
      { binding: 0, resource: tex.createView() },
      { binding: 1, resource: tex.createView() },
      { binding: 2, resource: { buffer: ubo } },
      { binding: 3, resource: { buffer: ssbo } },
      { binding: 4, resource: { buffer: ssbo } },
      { binding: 5, resource: { buffer: out } },
    ],
  });
  const groups = 4096;
  const run = async () => {
    const enc = dev.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipe);
    pass.setBindGroup(0, bg);
    pass.dispatchWorkgroups(groups);
    pass.end();
    dev.queue.submit([enc.finish()]);
    await dev.queue.onSubmittedWorkDone();
  };
  await run();
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const c0 = process.cpuUsage();
    await run();
    const c = process.cpuUsage(c0);
    best = Math.min(best, c.user + c.system);
  }
  // 1024 statements per invocation-group (n = 1024)
  rows.push({ load: name, 'CPU ns per statement per subgroup': ((best * 1000) / (1024 * groups)).toFixed(1) });
}
console.table(rows);
process.exit(0);
