// Tiny world dataset: determinism per (seed, index), Zipf concept frequencies and the head/tail split,
// the geometry of each rendered shape, captions, batches and the disjoint reference stream. CPU only.
import { describe, expect, it } from 'vitest';
import {
  BACKGROUND_RGB,
  BACKGROUNDS,
  COLOUR_RGB,
  COLOURS,
  CONCEPTS,
  MAX_JITTER,
  SHAPES,
  balancedSpec,
  batch,
  caption,
  conceptTable,
  referenceSpecs,
  render,
  sampleSpec,
  splitFileJson,
  toRgb8,
  type SampleSpec,
} from '../../tiny/world.js';

const N = 32 * 32;

function pixel(img: Float32Array, x: number, y: number, size = 32): number[] {
  const n = size * size;
  return [0, 1, 2].map((c) => img[c * n + y * size + x]);
}

function spec(over: Partial<SampleSpec>): SampleSpec {
  return {
    kind: 'train',
    seed: 0,
    index: 0,
    concept: 'red circle',
    colour: 'red',
    shape: 'circle',
    background: 'white',
    cx: 16,
    cy: 16,
    radius: 10,
    rotation: 0,
    colourJitter: [0, 0, 0],
    ...over,
  };
}

const bg = (b: keyof typeof BACKGROUND_RGB) => BACKGROUND_RGB[b].map((v) => Math.fround(v / 255));

describe('tiny world: determinism', () => {
  it('same seed and index give the same spec and pixels, in any order', () => {
    for (const i of [0, 1, 7, 33, 1000, 123456789]) {
      const a = sampleSpec(i, { seed: 5 });
      // unrelated draws in between must not matter (no hidden state)
      sampleSpec(i + 1, { seed: 5 });
      balancedSpec(i, { seed: 5 });
      const b = sampleSpec(i, { seed: 5 });
      expect(b).toEqual(a);
      expect(render(b)).toEqual(render(a));
      expect(balancedSpec(i, { seed: 5 })).toEqual(balancedSpec(i, { seed: 5 }));
    }
  });

  it('different seeds and different indices give different samples', () => {
    let same = 0;
    for (let i = 0; i < 200; i++) {
      const a = sampleSpec(i, { seed: 1 });
      const b = sampleSpec(i, { seed: 2 });
      if (a.cx === b.cx && a.cy === b.cy && a.radius === b.radius) same++;
    }
    expect(same).toBe(0);
    expect(render(sampleSpec(3, { seed: 1 }))).not.toEqual(render(sampleSpec(3, { seed: 2 })));
    expect(sampleSpec(3).cx).not.toBe(sampleSpec(4).cx);
  });

  it('the concept table depends on the ordering seed only', () => {
    expect(conceptTable({ seed: 9 })).toEqual(conceptTable({ seed: 0 }));
    expect(conceptTable({ orderSeed: 1 }).map((r) => r.name)).not.toEqual(conceptTable().map((r) => r.name));
  });
});

describe('tiny world: concept frequencies', () => {
  const table = conceptTable();

  it('is a Zipf table over all 36 concepts with 12 head and 24 tail at s = 1.5, 1%', () => {
    expect(table.length).toBe(36);
    expect(new Set(table.map((r) => r.name))).toEqual(new Set(CONCEPTS));
    const total = table.reduce((a, r) => a + r.frequency, 0);
    expect(total).toBeCloseTo(1, 12);
    for (const r of table) expect(r.frequency / table[0].frequency).toBeCloseTo(1 / Math.pow(r.rank, 1.5), 12);
    expect(table.map((r) => r.rank)).toEqual(Array.from({ length: 36 }, (_, i) => i + 1));
    expect(table.filter((r) => r.split === 'head').length).toBe(12);
    for (const r of table) expect(r.split).toBe(r.frequency < 0.01 ? 'tail' : 'head');
    // options move the split
    const steep = conceptTable({ exponent: 2, threshold: 0.02 });
    for (const r of steep) expect(r.split).toBe(r.frequency < 0.02 ? 'tail' : 'head');
  });

  it('every colour and every shape occurs among the 12 head concepts', () => {
    for (const orderSeed of [undefined, 1, 2, 3, 77]) {
      const head = conceptTable({ orderSeed }).slice(0, 12);
      expect(new Set(head.map((r) => r.colour))).toEqual(new Set(COLOURS));
      expect(new Set(head.map((r) => r.shape))).toEqual(new Set(SHAPES));
    }
  });

  it('20000 training samples match the table; tail concepts are each under 1%', () => {
    const n = 20000;
    const counts = new Map<string, number>();
    for (let i = 0; i < n; i++) {
      const c = sampleSpec(i).concept;
      counts.set(c, (counts.get(c) ?? 0) + 1);
    }
    let chi2 = 0;
    for (const r of table) {
      const observed = counts.get(r.name) ?? 0;
      const expected = n * r.frequency;
      const se = Math.sqrt(n * r.frequency * (1 - r.frequency));
      // 36 simultaneous checks: 4.5 standard errors keeps the family-wise false alarm rate below 1e-4
      expect(Math.abs(observed - expected), `${r.name} (rank ${r.rank})`).toBeLessThan(4.5 * se);
      chi2 += (observed - expected) ** 2 / expected;
      if (r.split === 'tail') {
        expect(r.frequency).toBeLessThan(0.01);
        expect(observed / n, r.name).toBeLessThan(0.01 + 3 * (se / n));
      }
    }
    // chi-square with 35 degrees of freedom: 66.6 is the 0.999 quantile
    expect(chi2).toBeLessThan(66.6);
    const tailMass = table.filter((r) => r.split === 'tail').reduce((a, r) => a + (counts.get(r.name) ?? 0), 0) / n;
    const tailExpected = table.filter((r) => r.split === 'tail').reduce((a, r) => a + r.frequency, 0);
    expect(Math.abs(tailMass - tailExpected)).toBeLessThan(4 * Math.sqrt((tailExpected * (1 - tailExpected)) / n));
  });

  it('balanced samples are uniform over the 36 concepts, backgrounds uniform', () => {
    const n = 7200;
    const counts = new Map<string, number>();
    const bgs = new Map<string, number>();
    for (let i = 0; i < n; i++) {
      const s = balancedSpec(i);
      counts.set(s.concept, (counts.get(s.concept) ?? 0) + 1);
      bgs.set(s.background, (bgs.get(s.background) ?? 0) + 1);
    }
    let chi2 = 0;
    for (const c of CONCEPTS) chi2 += ((counts.get(c) ?? 0) - n / 36) ** 2 / (n / 36);
    expect(chi2).toBeLessThan(66.6);
    for (const b of BACKGROUNDS) expect(Math.abs((bgs.get(b) ?? 0) - n / 3)).toBeLessThan(4 * Math.sqrt((n * 2) / 9));
  });

  it('splitFileJson carries the parameters and the rows', () => {
    const j = splitFileJson({ exponent: 1.5, threshold: 0.01 });
    expect(j.exponent).toBe(1.5);
    expect(j.threshold).toBe(0.01);
    expect(typeof j.seed).toBe('number');
    expect(j.concepts).toEqual(conceptTable());
    expect(j.head.length + j.tail.length).toBe(36);
    expect(JSON.parse(JSON.stringify(j))).toEqual(j);
  });
});

describe('tiny world: sample specs', () => {
  it('radius, position, rotation and jitter stay in range; objects stay inside the canvas', () => {
    for (let i = 0; i < 500; i++) {
      for (const s of [sampleSpec(i), balancedSpec(i)]) {
        expect(s.radius).toBeGreaterThanOrEqual(6);
        expect(s.radius).toBeLessThanOrEqual(11);
        expect(Math.abs(s.rotation)).toBeLessThanOrEqual(Math.PI / 12);
        if (s.shape === 'circle' || s.shape === 'ring') expect(s.rotation).toBe(0);
        for (const j of s.colourJitter) {
          expect(Number.isInteger(j)).toBe(true);
          expect(Math.abs(j)).toBeLessThanOrEqual(MAX_JITTER);
        }
        // the whole border keeps the background colour
        const img = render(s);
        const b = bg(s.background);
        const off: number[][] = [];
        for (let k = 0; k < 32; k++) {
          for (const [x, y] of [[k, 0], [k, 31], [0, k], [31, k]]) {
            if (pixel(img, x, y).some((v, c) => v !== b[c])) off.push([x, y]);
          }
        }
        expect(off, `sample ${i} ${s.concept}`).toEqual([]);
      }
    }
  });

  it('references: the requested concept, deterministic, disjoint from training and balanced samples', () => {
    const refs = referenceSpecs('purple star', 5, 3);
    expect(refs.length).toBe(5);
    for (const r of refs) {
      expect(r.concept).toBe('purple star');
      expect(r.kind).toBe('reference');
    }
    expect(referenceSpecs('purple star', 5, 3)).toEqual(refs);
    expect(referenceSpecs('purple star', 3, 3)).toEqual(refs.slice(0, 3));
    const key = (s: SampleSpec) => `${s.cx} ${s.cy} ${s.radius}`;
    const seen = new Set<string>();
    for (let i = 0; i < 2000; i++) seen.add(key(sampleSpec(i, { seed: 3 }))).add(key(balancedSpec(i, { seed: 3 })));
    for (const r of refs) expect(seen.has(key(r))).toBe(false);
    expect(() => referenceSpecs('pink star', 1)).toThrow();
  });

  it('captions', () => {
    expect(caption(spec({ colour: 'purple', shape: 'star', background: 'white' }))).toBe('a purple star on a white background');
    const s = sampleSpec(17);
    expect(caption(s)).toBe(`a ${s.colour} ${s.shape} on a ${s.background} background`);
    expect(s.concept).toBe(`${s.colour} ${s.shape}`);
  });
});

describe('tiny world: rendering', () => {
  it('is CHW in [0, 1] with the background colour far from the object', () => {
    const img = render(spec({ background: 'gray', cx: 10, cy: 10, radius: 6 }));
    expect(img.length).toBe(3 * N);
    expect(img.every((v) => v >= 0 && v <= 1)).toBe(true);
    expect(pixel(img, 28, 28)).toEqual(bg('gray'));
    expect(pixel(img, 28, 3)).toEqual(bg('gray'));
  });

  it('a circle is the object colour at its centre (within jitter), blended at its edge', () => {
    for (const colour of COLOURS) {
      const jitter: [number, number, number] = [12, -12, 5];
      const img = render(spec({ colour, shape: 'circle', background: 'black', colourJitter: jitter }));
      const base = COLOUR_RGB[colour];
      const centre = pixel(img, 16, 16);
      for (let c = 0; c < 3; c++) {
        expect(Math.abs(centre[c] - base[c] / 255)).toBeLessThanOrEqual(MAX_JITTER / 255 + 1e-6);
        expect(centre[c]).toBeCloseTo((base[c] + jitter[c]) / 255, 6);
      }
      // pixel (24, 20) spans 9.1 to 10.1 px from the centre: partly covered
      const edge = pixel(img, 24, 20)[0];
      expect(edge).toBeGreaterThan(0);
      expect(edge).toBeLessThan(centre[0]);
    }
  });

  it('a ring shows the background at its centre and the object on its band', () => {
    const img = render(spec({ shape: 'ring', colour: 'blue', background: 'white', radius: 10 }));
    expect(pixel(img, 15, 15)).toEqual(bg('white'));
    expect(pixel(img, 16, 16)).toEqual(bg('white'));
    // band between 5.5 and 10 px from the centre (16, 16): pixel 23 covers x in [23, 24]
    expect(pixel(img, 23, 16)).toEqual(objFloat('blue'));
    expect(pixel(img, 16, 8)).toEqual(objFloat('blue'));
  });

  it("a cross's diagonal corners are background while a square's are filled, also rotated", () => {
    for (const rotation of [0, Math.PI / 12, -Math.PI / 12]) {
      const cross = render(spec({ shape: 'cross', colour: 'green', background: 'white', radius: 10, rotation }));
      const square = render(spec({ shape: 'square', colour: 'green', background: 'white', radius: 10, rotation }));
      // (16 ± 5.5, 16 ± 5.5) pixel centres: 7.8 px from the centre at 45° (±15°)
      for (const [x, y] of [[21, 21], [10, 10], [21, 10], [10, 21]]) {
        expect(pixel(cross, x, y), `cross ${x},${y} rot ${rotation}`).toEqual(bg('white'));
        expect(pixel(square, x, y), `square ${x},${y} rot ${rotation}`).toEqual(objFloat('green'));
      }
      // the cross has its arms (pixels within 3 px of the centre along each axis stay inside when rotated)
      expect(pixel(cross, 16, 13)).toEqual(objFloat('green'));
      expect(pixel(cross, 18, 15)).toEqual(objFloat('green'));
    }
    const upright = render(spec({ shape: 'cross', colour: 'green', background: 'white', radius: 10 }));
    expect(pixel(upright, 16, 7)).toEqual(objFloat('green'));
    expect(pixel(upright, 24, 15)).toEqual(objFloat('green'));
  });

  it('a triangle points up; a star has tips and notches', () => {
    const tri = render(spec({ shape: 'triangle', colour: 'red', background: 'black', radius: 10 }));
    // apex at (16, 6): just below it filled, beside it empty; the base (y = 21) spans about ±8.7 px
    expect(pixel(tri, 15, 9)[0]).toBeGreaterThan(0.5);
    expect(pixel(tri, 10, 8)).toEqual(bg('black'));
    expect(pixel(tri, 9, 19)).toEqual(objFloat('red'));
    expect(pixel(tri, 16, 23)).toEqual(bg('black'));

    const star = render(spec({ shape: 'star', colour: 'yellow', background: 'black', radius: 10 }));
    expect(pixel(star, 16, 16)).toEqual(objFloat('yellow'));
    // 2-3 px below the top tip (16, 6) is covered; straight below the centre lies the notch between the two
    // lower tips (inner vertex at 4.5 px), so 6-8 px down is empty
    expect(pixel(star, 15, 8)[0]).toBeGreaterThan(0.3);
    expect(pixel(star, 15, 22)).toEqual(bg('black'));
    expect(pixel(star, 16, 23)).toEqual(bg('black'));
  });

  it('renders at other sizes by scaling the 32x32 geometry', () => {
    const s = spec({ shape: 'circle', radius: 8 });
    const big = render(s, 64);
    expect(big.length).toBe(3 * 64 * 64);
    expect(pixel(big, 32, 32, 64)).toEqual(objFloat('red'));
    expect(pixel(big, 60, 60, 64)).toEqual(bg('white'));
  });

  it('batch gives [B, 3, 32, 32] in [-1, 1] with captions; toRgb8 gives HWC bytes', () => {
    const idx = [4, 9, 33, 7];
    const b = batch(idx, { seed: 2 }, 'balanced');
    expect(b.pixels.length).toBe(4 * 3 * N);
    expect(b.captions.length).toBe(4);
    for (let k = 0; k < idx.length; k++) {
      const s = balancedSpec(idx[k], { seed: 2 });
      expect(b.captions[k]).toBe(caption(s));
      expect(b.concepts[k]).toBe(s.concept);
      const img = render(s);
      let err = 0;
      for (let i = 0; i < 3 * N; i++) err = Math.max(err, Math.abs(b.pixels[k * 3 * N + i] - (img[i] * 2 - 1)));
      expect(err).toBeLessThan(1e-6);
    }
    expect(b.pixels.every((v) => Math.abs(v) <= 1)).toBe(true);
    expect(batch([4], { seed: 2 }).concepts[0]).toBe(sampleSpec(4, { seed: 2 }).concept);

    const img = render(spec({ background: 'gray' }));
    const rgb = toRgb8(img);
    expect(rgb.length).toBe(3 * N);
    expect([...rgb.slice(0, 3)]).toEqual([128, 128, 128]);
    const centre = (16 * 32 + 16) * 3;
    expect([...rgb.slice(centre, centre + 3)]).toEqual([...COLOUR_RGB.red]);
    // [-1, 1] input: the same bytes up to rounding of blended edge values
    const signed = toRgb8(b.pixels.subarray(0, 3 * N), true);
    const plain = toRgb8(render(balancedSpec(4, { seed: 2 })));
    expect(signed.every((v, i) => Math.abs(v - plain[i]) <= 1)).toBe(true);
  });

  it('renders fast: 2000 images in under 4 s', () => {
    const t0 = performance.now();
    for (let i = 0; i < 2000; i++) render(sampleSpec(i));
    // about 0.13 ms per image on one core; the bound leaves room for a loaded machine
    expect(performance.now() - t0).toBeLessThan(4000);
  });
});

function objFloat(colour: keyof typeof COLOUR_RGB): number[] {
  return COLOUR_RGB[colour].map((v) => Math.fround(v / 255));
}
