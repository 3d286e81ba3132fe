import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { encodeSafetensors } from '../../weights-tools/safetensors.js';
import { ldmUnetKeyMap, ldmVaeKeyMap, ldmClipTextKeyMap, invertKeyMap } from '../../weights-tools/keymap.js';
import { paramSpec } from '../../weights-tools/param-spec.js';
import { GOLDEN } from './helpers.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
function cli(...args: string[]) {
  const r = spawnSync('npx', ['tsx', 'cli/seedselect.ts', ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'cli-weights-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('seedselect inspect', () => {
  it('lists tensors, totals and the config check of a golden model folder', () => {
    const r = cli('inspect', join(GOLDEN, 'models/unet_sd2'));
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain('model folder (UNet2DConditionModel)');
    expect(r.out).toMatch(/down_blocks\.1\.attentions\.0\.proj_in\.weight\s+F32\s+\[64, 64\]\s+16,384/);
    expect(r.out).toContain('total: 494 tensors, 2,164,452 elements');
    expect(r.out).toContain('config check: matches the config');
    expect(r.out).toContain('no problems found');
  });

  it('recognises a CLIP folder and prints a summary only with --summary', () => {
    const r = cli('inspect', join(GOLDEN, 'models/clip_text_sd1'), '--summary');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain('model folder (CLIPTextModel)');
    expect(r.out).toContain('transformers CLIP text model weights');
    expect(r.out).not.toContain('layer_norm1.weight');
  });

  it('a path that does not exist is a user error (exit 1)', () => {
    const r = cli('inspect', join(tmp, 'nope'));
    expect(r.code).toBe(1);
    expect(r.err).toContain('NOT_FOUND');
    expect(r.err).toContain(join(tmp, 'nope'));
  });

  it('a corrupt file is reported with its error and exit code 1', async () => {
    const bytes = encodeSafetensors([{ name: 'w', dtype: 'F32', shape: [4], data: new Float32Array(4) }]);
    const p = join(tmp, 'cut.safetensors');
    await writeFile(p, bytes.subarray(0, bytes.length - 3));
    const r = cli('inspect', p);
    expect(r.code).toBe(1);
    expect(r.out).toContain('TRUNCATED');
    expect(r.out).toContain(p);
  });

  it('recognises an LDM single-file layout and reports how it differs from SD 1.5', async () => {
    const cfg = (d: string) => JSON.parse(readFileSync(join(GOLDEN, 'models', d, 'config.json'), 'utf8'));
    const parts = [[ldmUnetKeyMap(cfg('unet_sd1')), paramSpec(cfg('unet_sd1'))], [ldmVaeKeyMap(cfg('vae')), paramSpec(cfg('vae'))], [ldmClipTextKeyMap(cfg('clip_text_sd1')), paramSpec(cfg('clip_text_sd1'))]] as const;
    const entries = parts.flatMap(([m, s]) => [...invertKeyMap(m, s)].map(([name, e]) => ({ name, dtype: 'F16' as const, shape: e.shape, data: new Uint16Array(e.shape.reduce((a, d) => a * d, 1)) })));
    const p = join(tmp, 'tiny-sd1.safetensors');
    await writeFile(p, encodeSafetensors(entries));
    const r = cli('inspect', p, '--summary');
    expect(r.out).toContain('LDM single-file Stable Diffusion 1.x checkpoint');
    expect(r.out).toMatch(/sd-1\.5 UNet2DConditionModel: \d+ missing, \d+ with the wrong shape/);
    expect(r.code).toBe(1);
  });
});

describe('seedselect make-model', () => {
  it('writes a model that inspect then accepts', async () => {
    const out = join(tmp, 'vision');
    const r = cli('make-model', '--config', join(GOLDEN, 'models/clip_vision/config.json'), '--out', out, '--seed', '5', '--dtype', 'f16', '--quiet');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain('CLIPVisionModelWithProjection, 24,655 parameters');
    const i = cli('inspect', out);
    expect(i.code, i.err).toBe(0);
    expect(i.out).toMatch(/visual_projection\.weight\s+F16\s+\[16, 32\]/);
    expect(JSON.parse(await readFile(join(out, 'config.json'), 'utf8')).projection_dim).toBe(16);
  });

  it('rejects bad options as user errors', () => {
    const cfg = join(GOLDEN, 'models/vae/config.json');
    expect(cli('make-model', '--config', cfg, '--out', join(tmp, 'x'), '--dtype', 'f8').code).toBe(1);
    expect(cli('make-model', '--config', cfg, '--out', join(tmp, 'x'), '--seed', 'abc').code).toBe(1);
    const r = cli('make-model', '--config', 'no-such-preset', '--out', join(tmp, 'x'));
    expect(r.code).toBe(1);
    expect(r.err).toContain('sd-1.5');
  });
});
