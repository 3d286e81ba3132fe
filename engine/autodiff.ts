// Reverse-mode autodiff over the records that ops attach to their outputs (see `record` in tensor.ts),
// and the checkpoint primitive: run a function without keeping its intermediates, recompute it in backward.
import { Tensor, ShapeError, isGradEnabled, noGrad, record, tidy, wantsGrad, withGrad } from './tensor.js';
import { add, cast, ones, zeros } from '../kernels/elementwise.js';
import { floatOf } from '../kernels/util.js';

function topoOrder(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  // iterative DFS (a UNet graph is deep enough to overflow recursion)
  const stack: [Tensor, number][] = [[root, 0]];
  while (stack.length) {
    const top = stack[stack.length - 1];
    const [t, i] = top;
    if (i === 0) {
      if (seen.has(t)) {
        stack.pop();
        continue;
      }
      seen.add(t);
    }
    const inputs = t.node?.inputs ?? [];
    if (i < inputs.length) {
      top[1]++;
      const c = inputs[i];
      if (!seen.has(c) && (c.node || c.requiresGrad)) stack.push([c, 0]);
    } else {
      stack.pop();
      order.push(t);
    }
  }
  return order; // inputs before outputs
}

/**
 * Gradients of `output` with respect to `wrt` (any tensors: inputs or parameters). `gradOutput` defaults
 * to ones (so a scalar loss needs none). Tensors in `wrt` that the output does not depend on get zeros.
 * Leaves not listed in `wrt` that require grad get their gradients accumulated into `.grad` when
 * `accumulateLeaves` is set (that is what `backward()` does).
 */
export function grad(output: Tensor, wrt: Tensor[], gradOutput?: Tensor, accumulateLeaves = false, retainGraph = false): Tensor[] {
  if (gradOutput && gradOutput.size !== output.size)
    throw new ShapeError(`grad: gradOutput [${gradOutput.shape}] does not match output [${output.shape}]`);
  // the upstream gradient takes the output's dtype (a gradient has the dtype of its tensor)
  if (gradOutput && gradOutput.dtype !== output.dtype && output.dtype !== 'i32') gradOutput = noGrad(() => cast(gradOutput!, floatOf(output)));
  const wanted = new Set(wrt);
  const order = topoOrder(output);
  const grads = new Map<Tensor, Tensor>();
  const userGrad = !!gradOutput;
  grads.set(output, gradOutput ?? noGrad(() => ones(output.shape, floatOf(output))));
  const result = new Map<Tensor, Tensor>();
  const accumulate = (t: Tensor, g: Tensor) => {
    const prev = grads.get(t);
    if (!prev) grads.set(t, g);
    else {
      grads.set(t, noGrad(() => add(prev, g)));
      if (prev !== gradOutput || !userGrad) prev.dispose();
      g.dispose();
    }
  };
  noGrad(() => {
    for (let k = order.length - 1; k >= 0; k--) {
      const t = order[k];
      const g = grads.get(t);
      if (!g) continue;
      grads.delete(t);
      if (wanted.has(t)) result.set(t, g);
      if (t.node) {
        const node = t.node;
        // the rule's temporaries are freed; only the input gradients survive
        const gs = tidy(() => node.backward(g));
        const seen = new Set<Tensor>([g]);
        for (let i = 0; i < node.inputs.length; i++) {
          let gi = gs[i];
          // a rule may pass its upstream gradient through, or give one tensor to two inputs: alias by views
          if (gi && seen.has(gi)) gi = gi.view(gi.shape);
          if (gi) seen.add(gi);
          const inp = node.inputs[i];
          if (!gi) continue;
          if (!(inp.node || inp.requiresGrad)) {
            gi.dispose();
            continue;
          }
          if (gi.size !== inp.size) throw new ShapeError(`backward of ${node.name}: gradient [${gi.shape}] does not match input [${inp.shape}]`);
          let gv = gi;
          if (gi.shape.length !== inp.shape.length || gi.shape.some((d, j) => d !== inp.shape[j])) {
            gv = gi.view(inp.shape);
            gi.dispose();
          }
          // rules may compute in another float dtype (f16 with f32 gives f32): the gradient takes its tensor's
          if (gv.dtype !== inp.dtype && inp.dtype !== 'i32') {
            const c = cast(gv, floatOf(inp));
            gv.dispose();
            gv = c;
          }
          accumulate(inp, gv);
        }
      } else if (accumulateLeaves && t.requiresGrad && !wanted.has(t)) {
        if (t.grad) {
          const s = add(t.grad, g);
          t.grad.dispose();
          g.dispose();
          t.grad = s.keep();
        } else t.grad = g.keep();
        continue;
      }
      if (!wanted.has(t) && (g !== gradOutput || !userGrad)) g.dispose();
    }
  });
  // like PyTorch, free the graph after use: scopes then release the intermediates it held
  if (!retainGraph) for (const t of order) t.node = null;
  return wrt.map((t) => result.get(t) ?? noGrad(() => zeros(t.shape, floatOf(t))));
}

/** Accumulate d(output)/d(leaf) into `.grad` of every leaf that requires grad. */
export function backward(output: Tensor, gradOutput?: Tensor) {
  grad(output, [], gradOutput, true);
}

/**
 * Run `fn(...inputs)` keeping none of its intermediates; during backward, run it again with recording on
 * and backpropagate through that recomputation. Leaves used inside `fn` that require grad (e.g. weights)
 * receive their gradient in `.grad`. `fn` must be deterministic.
 */
export function checkpoint(fn: (...xs: Tensor[]) => Tensor, inputs: Tensor[], name = 'checkpoint'): Tensor {
  if (!isGradEnabled()) return tidy(() => fn(...inputs));
  const out = noGrad(() => tidy(() => fn(...inputs)));
  return record(out, name, inputs, (g) => {
    const detached = inputs.map((x) => {
      const d = x.detach();
      d.requiresGrad = wantsGrad(x);
      return d;
    });
    const wanted = detached.filter((d) => d.requiresGrad);
    const gs = tidy(() => {
      const y = withGrad(() => fn(...detached));
      return grad(y, wanted, g, true);
    });
    let k = 0;
    return detached.map((d) => (d.requiresGrad ? gs[k++] : null));
  });
}
