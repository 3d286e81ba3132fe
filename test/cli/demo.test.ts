// `seedselect demo` (`npm run demo`, the README's first command) on the shipped tiny-world model, shortened:
// references rendered, the before/after grid, loss curve and run.json written; its default concept is a
// tail concept of the shipped split; bad input is a UserError naming the argument.
import { describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { DEMO_CONCEPT, DEMO_SEED, defaultTinyModel, demo } from '../../cli/commands/demo.js';
import { UserError } from '../../cli/errors.js';

describe('seedselect demo', () => {
  it('defaults to a tail concept of the shipped model', async () => {
    const split = JSON.parse(await readFile(join(defaultTinyModel(), 'concepts.json'), 'utf8'));
    expect(split.tail).toContain(DEMO_CONCEPT);
    expect(Number.isInteger(DEMO_SEED)).toBe(true);
  });

  it('writes the grid, loss curve, run.json and references on the shipped model', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'seedselect-demo-'));
    try {
      const r = await demo({ out: dir, concept: DEMO_CONCEPT, iterations: 2, steps: 4, seed: DEMO_SEED, quiet: true });
      expect(r.run.status).toBe('done');
      expect(r.grid).toBe(join(dir, 'grid.png'));
      const grid = await sharp(r.grid!).metadata();
      // three rows (random seed, SeedSelect, references) of 128-pixel tiles plus labels
      expect(grid.height).toBeGreaterThanOrEqual(3 * 128);
      for (const f of ['loss.png', 'before.png', 'run.json']) expect((await stat(join(dir, f))).size).toBeGreaterThan(0);
      const run = JSON.parse(await readFile(join(dir, 'run.json'), 'utf8'));
      const hist = run.images[0].history as { total: number }[];
      expect(hist).toHaveLength(2);
      expect(hist.every((h) => Number.isFinite(h.total))).toBe(true);
      expect(run.options.prompt).toBe(`a ${DEMO_CONCEPT} on a white background`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('names the argument on bad input', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'seedselect-demo-'));
    try {
      await expect(demo({ out: dir, concept: 'teal hexagon', iterations: 1, steps: 2, seed: 0, quiet: true })).rejects.toThrow(UserError);
      await expect(demo({ out: dir, concept: 'teal hexagon', iterations: 1, steps: 2, seed: 0, quiet: true })).rejects.toThrow(/--concept: unknown concept "teal hexagon"/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
