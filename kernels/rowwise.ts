// Shared WGSL for kernels that give one 64-wide workgroup to each row of a [rows, L] tensor and reduce
// across it in workgroup memory (softmax, layer norm). A barrier precedes each reuse of the scratch
// array (write-after-read), which matters on adapters that run a workgroup's invocations in sequence.
export const ROW_REDUCE = /* wgsl */ `
var<workgroup> red: array<f32, 64>;
fn row_sum(v: f32, li: u32) -> f32 {
  workgroupBarrier();
  red[li] = v;
  workgroupBarrier();
  for (var s = 32u; s > 0u; s = s >> 1u) {
    if (li < s) { red[li] = red[li] + red[li + s]; }
    workgroupBarrier();
  }
  return red[0];
}
fn row_max(v: f32, li: u32) -> f32 {
  workgroupBarrier();
  red[li] = v;
  workgroupBarrier();
  for (var s = 32u; s > 0u; s = s >> 1u) {
    if (li < s) { red[li] = max(red[li], red[li + s]); }
    workgroupBarrier();
  }
  return red[0];
}`;
