// `seedselect augment`: shard parsing, every-N-th class selection, mirrored outputs, resume by skipping.
import { describe, expect, it } from 'vitest';
import { mkdtemp, mkdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import sharp from 'sharp';
import { makeModel, presetsDir } from '../../weights-tools/model-maker.js';
import { parseShard, register } from '../../cli/commands/augment.js';

describe('seedselect augment', () => {
  it('parses shards and rejects bad ones', () => {
    expect(parseShard('1/4')).toEqual({ index: 1, count: 4 });
    expect(() => parseShard('4/4')).toThrow(/0 <= i < N/);
    expect(() => parseShard('a/b')).toThrow(/i\/N/);
  });

  it('generates for every N-th class into a mirrored tree and skips finished classes', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'seedselect-aug-'));
    try {
      const model = join(dir, 'model');
      await makeModel({ config: 'tiny-sd', out: model, seed: 2, tokenizerDir: join(presetsDir(), 'clip-tokenizer') });
      for (const cls of ['blue_ring', 'green_cross', 'red_star']) {
        await mkdir(join(dir, 'data', cls), { recursive: true });
        await sharp({ create: { width: 32, height: 32, channels: 3, background: '#3366cc' } }).png().toFile(join(dir, 'data', cls, 'a.png'));
      }
      const args = ['augment', '--model', model, '--data', join(dir, 'data'), '--out', join(dir, 'out'), '--num-images', '1', '--shard', '1/2', '--steps', '3', '--iterations', '1'];
      const run = async () => {
        const p = new Command();
        register(p);
        await p.parseAsync(args, { from: 'user' });
        return JSON.parse(await readFile(join(dir, 'out', 'summary-1-of-2.json'), 'utf8'));
      };
      const s1 = await run();
      expect(s1.classes.map((c: { class: string }) => c.class)).toEqual(['green_cross']);
      expect(s1.classes[0].status).toBe('done');
      await readFile(join(dir, 'out', 'green_cross', 'image-00.png'));
      const s2 = await run();
      expect(s2.classes[0].status).toBe('skipped (done)');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
