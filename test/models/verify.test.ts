// `seedselect verify` and the golden-case framework behind it: the CLI passes on the real CLIP/DDIM cases
// and fails (exit 1, naming the tensor) when one reference tensor is altered; discovery and kind
// inference; the special tolerances (zero up to round-off, sum(output*R) losses); coverage of unchecked
// tensors; errors and missing runners reported per case without stopping the others.
import { spawn } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  discoverCases, kindOfTensor, normalizedError, registerRunner, runGoldenFolder, TOLERANCES, type CaseCheck,
} from '../../models/golden.js';
import { encodeSafetensors, type StDtype } from '../../weights-tools/safetensors.js';
import { openSafetensorsFile, writeSafetensorsFile } from '../../weights-tools/node-source.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const GOLDEN = path.resolve('..', 'shared', 'golden');

/** Run the CLI; independent runs go in parallel. */
function cli(...args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((done, fail) => {
    const p = spawn('npx', ['tsx', 'cli/seedselect.ts', ...args], { cwd: ROOT, timeout: 120_000 });
    let out = '';
    let err = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    p.on('error', fail);
    p.on('close', (code) => done({ code, out, err }));
  });
}

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'verify-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** Copy a golden case's tensors, changing one tensor with `edit`, via the weights-tools writer. */
async function copyTensors(src: string, dst: string, edit: Record<string, (x: Float32Array) => void>) {
  const f = await openSafetensorsFile(src);
  const out: { name: string; dtype: StDtype; shape: number[]; data: ArrayBufferView }[] = [];
  for (const t of f.tensors.values()) {
    if (edit[t.name]) {
      const x = await f.readF32(t.name);
      edit[t.name](x);
      out.push({ name: t.name, dtype: 'F32', shape: t.shape, data: x });
    } else out.push({ name: t.name, dtype: t.dtype, shape: t.shape, data: await f.readBytes(t.name) });
  }
  await f.close();
  await writeSafetensorsFile(dst, out);
}

describe('seedselect verify (CLI)', () => {
  it('passes on the CLIP and DDIM golden cases and prints the table', async () => {
    const r = await cli('verify', '../shared/golden', '--filter', 'clip|ddim');
    expect(r.code, r.err + r.out.slice(-2000)).toBe(0);
    expect(r.out).toMatch(/^case\s+tensor\s+kind\s+err\/max\|ref\|\s+tol\s+result/m);
    expect(r.out).toMatch(/clip_vision\s+grad\.input\.pixel_values\s+gradient\s+\d\.\d\de-\d+\s+5\.00e-4\s+PASS/);
    expect(r.out).toMatch(/clip_text_sd2\s+output\.penultimate_normed\s+output\s+\S+\s+1\.00e-4\s+PASS/);
    expect(r.out).toMatch(/ddim_v_prediction_50\s+step49\.prev_sample\s+output\s+\S+\s+1\.00e-4\s+PASS/);
    expect(r.out).not.toMatch(/FAIL/);
    expect(r.out).not.toMatch(/unet_sd|seedselect|^vae/m);
    expect(r.out).toMatch(/summary: 7 cases, \d+ checks: \d+ passed, 0 failed, 0 skipped/);
  });

  it('fails with exit code 1 naming a reference tensor that was altered', async () => {
    const dir = path.join(tmp, 'altered');
    await mkdir(path.join(dir, 'models', 'clip_vision'), { recursive: true });
    await mkdir(path.join(dir, 'clip_vision'), { recursive: true });
    await mkdir(path.join(dir, 'scheduler'), { recursive: true });
    for (const f of ['config.json', 'model.safetensors'])
      await copyFile(path.join(GOLDEN, 'models/clip_vision', f), path.join(dir, 'models/clip_vision', f));
    for (const f of ['ddim_epsilon_5.json', 'ddim_epsilon_5.safetensors'])
      await copyFile(path.join(GOLDEN, 'scheduler', f), path.join(dir, 'scheduler', f));
    await copyFile(path.join(GOLDEN, 'clip_vision/golden.json'), path.join(dir, 'clip_vision/golden.json'));
    const altered = 'grad.param.vision_model.encoder.layers.2.mlp.fc1.weight';
    await copyTensors(path.join(GOLDEN, 'clip_vision/golden.safetensors'), path.join(dir, 'clip_vision/golden.safetensors'), {
      // 1% of the largest magnitude on one element: 20x the gradient tolerance
      [altered]: (x) => {
        x[7] += 0.01 * x.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      },
    });
    const json = path.join(tmp, 'altered.json');
    const r = await cli('verify', dir, '--json', json);
    expect(r.code, r.err).toBe(1);
    expect(r.out).toMatch(new RegExp(`clip_vision\\s+${altered.replace(/\./g, '\\.')}\\s+gradient\\s+(9\\.\\d\\de-3|1\\.\\d\\de-2)\\s+5\\.00e-4\\s+FAIL`));
    expect(r.err).toContain(altered);
    // everything else still passes, the other case included
    expect(r.out).toMatch(/clip_vision\s+output\.image_embeds\s+output\s+\S+\s+1\.00e-4\s+PASS/);
    expect(r.out).toMatch(/ddim_epsilon_5\s+step4\.prev_sample/);
    expect(r.out).toMatch(/summary: 2 cases, \d+ checks: \d+ passed, 1 failed, 0 skipped/);
    const report = JSON.parse(await readFile(json, 'utf8'));
    expect(report.summary.failed).toBe(1);
    expect(report.checks.filter((c: CaseCheck) => !c.ok).map((c: CaseCheck) => c.tensor)).toEqual([altered]);
  });

  it('user errors: a missing folder and a bad --filter exit with code 1', async () => {
    const [a, b] = await Promise.all([cli('verify', path.join(tmp, 'nope')), cli('verify', GOLDEN, '--filter', '(')]);
    expect(a.code).toBe(1);
    expect(a.err).toContain('is not a folder');
    expect(b.code).toBe(1);
    expect(b.err).toContain('invalid regular expression');
  });
});

describe('golden framework', () => {
  let fw: string;
  const f32 = (v: number[]) => new Float32Array(v);
  const st = (ts: Record<string, Float32Array>) =>
    encodeSafetensors(Object.entries(ts).map(([name, data]) => ({ name, dtype: 'F32' as const, shape: [data.length], data })));

  beforeAll(async () => {
    fw = path.join(tmp, 'fw');
    const write = async (rel: string, meta: object, tensors: Record<string, Float32Array>, file = 'golden.safetensors') => {
      await mkdir(path.join(fw, rel), { recursive: true });
      const jsonName = file === 'golden.safetensors' ? 'golden.json' : file.replace(/\.safetensors$/, '.json');
      await writeFile(path.join(fw, rel, jsonName), JSON.stringify(meta));
      await writeFile(path.join(fw, rel, file), st(tensors));
    };
    // y . R cancels: loss is about -1e-4 while sum|y R| is about 4
    const y = [1, 1, 1, 1];
    const R = [1, -1, 1, -1.0001];
    await write('case_a', {
      kind: 'TestKind',
      fp32_vs_fp64: { 'grad.param.z': { note: 'reference is zero up to round-off' } },
    }, {
      'input.x': f32([1, 2]),
      'output.y': f32(y),
      'loss.R': f32(R),
      loss: f32([y.reduce((a, v, i) => a + v * R[i], 0)]),
      'grad.param.z': f32([1e-7, -2e-7, 0]),
      'output.unchecked': f32([1, 2]),
    });
    await write('case_b', { kind: 'TestThrows' }, { 'output.y': f32([1]) });
    await write('case_c', { kind: 'NoSuchKind' }, { 'output.y': f32([1]) });
    await mkdir(path.join(fw, 'models', 'm1'), { recursive: true });
    await writeFile(path.join(fw, 'models', 'm1', 'config.json'), JSON.stringify({ _class_name: 'UNet2DConditionModel' }));
    await write('case_d', { model_dir: 'models/m1', case: 'named_d' }, { 'output.y': f32([1]) });
    await write('sched', { procedure: 'x' }, { timesteps: f32([1]) }, 'ddim_custom_3.safetensors');
    await write('plain', {}, { 'output.y': f32([1]) });

    registerRunner('TestKind', async (ctx) => {
      await ctx.check('output.y', f32(y));
      const got = y.reduce((a, v, i) => a + v * R[i], 0) + 1e-5;
      await ctx.checkLoss('loss', got, [['output.y', 'loss.R']]);
      await ctx.check('grad.param.z', f32([0, 0, 0]));
      await ctx.check('grad.param.z', f32([1e-3, 0, 0]), { note: 'too far' });
    });
    registerRunner('TestThrows', async (ctx) => {
      await ctx.check('output.y', f32([1]));
      throw new Error('boom');
    });
  });

  it('discovers cases and infers their kinds', async () => {
    const cases = await discoverCases(fw);
    const kinds = Object.fromEntries(cases.map((c) => [c.name, `${c.kind} (${c.kindSource})`]));
    expect(kinds).toEqual({
      case_a: 'TestKind (json)',
      case_b: 'TestThrows (json)',
      case_c: 'NoSuchKind (json)',
      named_d: 'UNet2DConditionModel (model)',
      plain: 'plain (name)',
      ddim_custom_3: 'DDIMScheduler (file)',
    });
    const real = await discoverCases(GOLDEN);
    const realKinds = Object.fromEntries(real.map((c) => [c.name, c.kind]));
    expect(realKinds).toMatchObject({
      clip_text_sd1: 'CLIPTextModel', clip_vision: 'CLIPVisionModelWithProjection', unet_sd2: 'UNet2DConditionModel',
      vae: 'AutoencoderKL', ddim_v_prediction_50: 'DDIMScheduler', seedselect: 'seedselect', seedselect_official: 'seedselect_official',
    });
    expect(real.length).toBe(12);
  });

  it('judges zero-up-to-round-off tensors absolutely and sum(output*R) losses against sum|output*R|', async () => {
    const checks = await runGoldenFolder(fw, { filter: /^case_a$/ });
    const get = (t: string, note?: string) => checks.filter((c) => c.tensor === t && (!note || c.note?.includes(note)));
    expect(get('output.y')[0]).toMatchObject({ kind: 'output', err: 0, tol: TOLERANCES.forward, ok: true });
    const loss = get('loss')[0];
    expect(loss.kind).toBe('loss');
    expect(loss.ok).toBe(true);
    expect(loss.err).toBeCloseTo(1e-5 / 4.0001, 9);
    const [zero, far] = get('grad.param.z');
    expect(zero).toMatchObject({ kind: 'gradient', tol: TOLERANCES.zeroAbs, ok: true });
    expect(zero.err).toBeCloseTo(2e-7, 12);
    expect(zero.note).toContain('zero up to round-off');
    expect(far).toMatchObject({ ok: false });
    // a tensor the runner never looked at is a failure
    expect(get('output.unchecked')[0]).toMatchObject({ ok: false, note: 'not checked by the runner' });
    expect(get('input.x')).toEqual([]);
  });

  it('an error or a missing runner fails that case only; --allow-missing turns the latter into a skip', async () => {
    const seen: string[] = [];
    const checks = await runGoldenFolder(fw, { filter: /^case_[bc]$/, onCase: (c) => seen.push(c.name) });
    expect(seen).toEqual(['case_b', 'case_c']);
    const b = checks.filter((c) => c.case === 'case_b');
    expect(b[0]).toMatchObject({ tensor: 'output.y', ok: true });
    expect(b.find((c) => !c.ok)?.note).toBe('error: boom');
    const c = checks.find((x) => x.case === 'case_c')!;
    expect(c.ok).toBe(false);
    expect(c.note).toMatch(/^skipped: no runner for kind "NoSuchKind"/);
    const allowed = await runGoldenFolder(fw, { filter: 'case_c', allowMissing: true });
    expect(allowed).toHaveLength(1);
    expect(allowed[0].ok).toBe(true);
  });

  it('the CLI reports a case without a runner as SKIP with --allow-missing and as FAIL without', async () => {
    const [a, b] = await Promise.all([cli('verify', fw, '--filter', '^plain$'), cli('verify', fw, '--filter', '^plain$', '--allow-missing')]);
    expect(a.code).toBe(1);
    expect(a.out).toMatch(/plain\s+-\s+output\s+-\s+0\s+FAIL\s+skipped: no runner/);
    expect(b.code, b.err).toBe(0);
    expect(b.out).toMatch(/plain\s+-\s+output\s+-\s+0\s+SKIP/);
    expect(b.out).toMatch(/1 skipped/);
  });

  it('names tensor kinds and normalizes errors by max|ref|', () => {
    expect(kindOfTensor('grad.input.sample')).toBe('gradient');
    expect(kindOfTensor('encode.grad.param.encoder.conv_in.weight')).toBe('gradient');
    expect(kindOfTensor('act.mid_block')).toBe('activation');
    expect(kindOfTensor('loss')).toBe('loss');
    expect(kindOfTensor('decode.loss')).toBe('loss');
    expect(kindOfTensor('loss.total')).toBe('loss');
    expect(kindOfTensor('adam.step1.loss_total')).toBe('loss');
    expect(kindOfTensor('output.sample')).toBe('output');
    expect(kindOfTensor('step3.prev_sample')).toBe('output');
    expect(normalizedError([1, 2.5], [1, 2]).err).toBeCloseTo(0.25);
    expect(normalizedError([0.5], [0]).err).toBe(0.5);
    expect(normalizedError([NaN], [1]).err).toBe(Infinity);
  });
});
