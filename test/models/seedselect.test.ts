// The whole SeedSelect chain against ../shared/golden: the `seedselect` and `seedselect_official` cases
// (reference constants, every DDIM step, losses, d loss / d z_T, intermediate gradients, Adam/AdamW
// trajectories), run through the same golden runner as `seedselect verify`.
import { describe, expect, it } from 'vitest';
import { resolve } from 'node:path';
import { init } from '../../engine/index.js';
import { runGoldenFolder } from '../../models/golden.js';

const GOLDEN = resolve('..', 'shared', 'golden');

describe('SeedSelect chain vs golden', () => {
  for (const name of ['seedselect_official', 'seedselect'])
    it(`${name}: every check passes`, async () => {
      await init();
      const checks = await runGoldenFolder(GOLDEN, { filter: new RegExp(`^${name}$`) });
      const mine = checks.filter((c) => c.case === name);
      expect(mine.length).toBeGreaterThan(15);
      const failed = mine.filter((c) => !c.ok).map((c) => `${c.tensor}: ${c.err} > ${c.tol} ${c.note ?? ''}`);
      expect(failed).toEqual([]);
    });
});
