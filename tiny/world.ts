// "Tiny world": a seeded synthetic dataset of 32x32 images with captions, for training a miniature
// Stable Diffusion whose rare concepts SeedSelect can then be tested on.
//
// Each image is one coloured shape on a plain background, captioned "a purple star on a white background".
// A concept is a (colour, shape) pair: 6 colours x 6 shapes = 36 concepts. Their training frequencies are
// long-tailed (Zipf, p(rank) ∝ 1/rank^s, s = 1.5 by default), which is the situation SeedSelect targets: a
// text-to-image model trained on such data renders head concepts well and tail concepts badly. The concept
// ordering is fixed by a seed and built so that every colour and every shape occurs among the 12 head
// concepts; each tail concept is thus a rare *combination* of a common colour and a common shape, so a
// model that fails on it fails at composition, not at an unseen word. With s = 1.5 and the default 1%
// threshold exactly the top 12 ranks are head and the other 24 are tail.
//
// Determinism: every sample is a pure function of (dataset seed, stream, index), drawn from a small
// counter-based generator (a 32-bit integer hash of the key, then a Weyl sequence through the same hash).
// Any index can be generated alone, in any order, on any machine, with no state. Three disjoint streams:
// `train` (Zipf concepts), `balanced` (uniform concepts: judge classifier, evaluation) and `reference`
// (few-shot reference images for SeedSelect, keyed by concept and number, never overlapping the others).
//
// Rendering is CPU-only: 4x4 supersampled coverage of a hand-written point-in-shape test, blended over
// the background; pixels whose centre is farther than the shape's extent are not supersampled.

export const SHAPES = ['circle', 'square', 'triangle', 'star', 'cross', 'ring'] as const;
export const COLOURS = ['red', 'green', 'blue', 'yellow', 'purple', 'orange'] as const;
export const BACKGROUNDS = ['white', 'black', 'gray'] as const;
export type Shape = (typeof SHAPES)[number];
export type Colour = (typeof COLOURS)[number];
export type Background = (typeof BACKGROUNDS)[number];

/** Object colours (0..255). Every channel stays within [12, 243] so the ±12 jitter never clips. */
export const COLOUR_RGB: Readonly<Record<Colour, readonly [number, number, number]>> = {
  red: [220, 36, 36],
  green: [36, 180, 60],
  blue: [40, 80, 225],
  yellow: [235, 210, 30],
  purple: [150, 50, 200],
  orange: [240, 130, 20],
};

/** Background colours (0..255), exact (never jittered). */
export const BACKGROUND_RGB: Readonly<Record<Background, readonly [number, number, number]>> = {
  white: [255, 255, 255],
  black: [0, 0, 0],
  gray: [128, 128, 128],
};

/** All 36 concept names in canonical order (colour-major): class labels for a judge classifier. */
export const CONCEPTS: readonly string[] = COLOURS.flatMap((c) => SHAPES.map((s) => `${c} ${s}`));

/** Canonical index (0..35) of a concept name, or -1. */
export function conceptId(name: string): number {
  return CONCEPTS.indexOf(name);
}

/** Canvas size the geometry is defined in; `render` scales to other sizes. */
export const BASE_SIZE = 32;
/** Largest per-channel colour jitter, in 1/255 units. */
export const MAX_JITTER = 12;
export const MIN_RADIUS = 6;
export const MAX_RADIUS = 11;
/** Largest rotation (radians) of star, triangle, square and cross: small enough to stay recognizable. */
export const MAX_ROTATION = Math.PI / 12;
/** Default seed of the concept ordering (the rank of each concept). */
export const DEFAULT_ORDER_SEED = 0x7e57;

export interface WorldOptions {
  /** Dataset seed: which images (default 0). */
  seed?: number;
  /** Zipf exponent s (default 1.5). */
  exponent?: number;
  /** Concepts with frequency below this are tail (default 0.01). */
  threshold?: number;
  /** Seed of the concept ordering (default DEFAULT_ORDER_SEED); datasets with different `seed` share it. */
  orderSeed?: number;
  /** Image size for `batch` (default 32). */
  size?: number;
}

export interface ConceptRow {
  name: string;
  colour: Colour;
  shape: Shape;
  /** 1 = most frequent. */
  rank: number;
  frequency: number;
  split: 'head' | 'tail';
}

export type SampleKind = 'train' | 'balanced' | 'reference';

export interface SampleSpec {
  kind: SampleKind;
  seed: number;
  /** Index in its stream (for references: the reference number within the concept). */
  index: number;
  concept: string;
  colour: Colour;
  shape: Shape;
  background: Background;
  /** Centre and circumscribing radius in pixels of the 32x32 canvas. */
  cx: number;
  cy: number;
  radius: number;
  /** Radians, counter-clockwise on screen; 0 for circle and ring. */
  rotation: number;
  /** Integer offsets added to the object colour, each in [-12, 12] (1/255 units). */
  colourJitter: [number, number, number];
}

// ---------------------------------------------------------------------------------------------------------
// Counter-based random numbers

/** 32-bit integer hash (lowbias32, Wellons): a bijection on uint32 with good avalanche. */
function mix32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d);
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b);
  return (x ^ (x >>> 16)) >>> 0;
}

/** Hash of a non-negative integer below 2^53 folded into a running key. */
function absorb(h: number, v: number): number {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`tiny world: key ${v} must be a non-negative integer`);
  const lo = v >>> 0;
  const hi = Math.floor(v / 4294967296) >>> 0;
  h = mix32((h ^ lo) + 0x9e3779b9);
  return mix32((h ^ hi) + 0x632be5ab);
}

/** A generator for one key: uniform floats in [0, 1) from hash(key + n * golden), n = 1, 2, ... */
class Stream {
  private state: number;
  constructor(...key: number[]) {
    let h = 0x243f6a88;
    for (const k of key) h = absorb(h, k);
    this.state = h;
  }
  u32(): number {
    this.state = (this.state + 0x9e3779b9) >>> 0;
    return mix32(mix32(this.state) ^ 0x85ebca6b);
  }
  float(): number {
    return this.u32() / 4294967296;
  }
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.float();
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.float() * n);
  }
  shuffle<T>(a: T[]): T[] {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [a[i], a[j]] = [a[j], a[i]];
    }
    return a;
  }
}

const STREAM_ORDER = 1;
const STREAM_TRAIN = 2;
const STREAM_BALANCED = 3;
const STREAM_REFERENCE = 4;

function seedKey(seed: number): number {
  // any safe integer, negative ones included (zigzag onto the non-negative integers)
  if (!Number.isSafeInteger(seed)) throw new RangeError(`tiny world: seed ${seed} must be an integer`);
  return seed < 0 ? 2 * -seed - 1 : 2 * seed;
}

// ---------------------------------------------------------------------------------------------------------
// Concept table

/**
 * The rank order of the 36 concepts for an ordering seed. The 12 head slots are two "diagonals" of the
 * colour x shape grid after shuffling both axes: (P[i], Q[i]) and (P[i], Q[i + k]) with k in 1..5, so
 * each colour and each shape occurs exactly twice among them. Head and tail are each shuffled.
 */
function conceptOrder(orderSeed: number): [Colour, Shape][] {
  const r = new Stream(STREAM_ORDER, seedKey(orderSeed));
  const P = r.shuffle([...COLOURS]);
  const Q = r.shuffle([...SHAPES]);
  const k = 1 + r.int(5);
  const head: [Colour, Shape][] = [];
  for (let i = 0; i < 6; i++) head.push([P[i], Q[i]], [P[i], Q[(i + k) % 6]]);
  const inHead = new Set(head.map(([c, s]) => `${c} ${s}`));
  const tail: [Colour, Shape][] = [];
  for (const c of COLOURS) for (const s of SHAPES) if (!inHead.has(`${c} ${s}`)) tail.push([c, s]);
  return [...r.shuffle(head), ...r.shuffle(tail)];
}

interface Table {
  rows: ConceptRow[];
  cdf: Float64Array;
}
const tables = new Map<string, Table>();

function table(opts: WorldOptions = {}): Table {
  const exponent = opts.exponent ?? 1.5;
  const threshold = opts.threshold ?? 0.01;
  const orderSeed = opts.orderSeed ?? DEFAULT_ORDER_SEED;
  if (!(exponent >= 0)) throw new RangeError(`tiny world: exponent ${exponent} must be >= 0`);
  const key = `${exponent}|${threshold}|${orderSeed}`;
  let t = tables.get(key);
  if (!t) {
    const order = conceptOrder(orderSeed);
    const w = order.map((_, i) => 1 / Math.pow(i + 1, exponent));
    const total = w.reduce((a, b) => a + b, 0);
    const rows: ConceptRow[] = order.map(([colour, shape], i) => {
      const frequency = w[i] / total;
      return { name: `${colour} ${shape}`, colour, shape, rank: i + 1, frequency, split: frequency < threshold ? 'tail' : 'head' };
    });
    const cdf = new Float64Array(rows.length);
    let acc = 0;
    rows.forEach((row, i) => (cdf[i] = acc += row.frequency));
    cdf[cdf.length - 1] = 1;
    t = { rows, cdf };
    tables.set(key, t);
  }
  return t;
}

/** The 36 concepts by rank with their Zipf frequency and head/tail split. */
export function conceptTable(opts: WorldOptions = {}): ConceptRow[] {
  return table(opts).rows.map((r) => ({ ...r }));
}

/** The head/tail split as written next to a trained tiny model. */
export function splitFileJson(opts: WorldOptions = {}): {
  format: 'tiny-world-split';
  version: 1;
  exponent: number;
  threshold: number;
  seed: number;
  head: string[];
  tail: string[];
  concepts: ConceptRow[];
} {
  const concepts = conceptTable(opts);
  return {
    format: 'tiny-world-split',
    version: 1,
    exponent: opts.exponent ?? 1.5,
    threshold: opts.threshold ?? 0.01,
    seed: opts.orderSeed ?? DEFAULT_ORDER_SEED,
    head: concepts.filter((c) => c.split === 'head').map((c) => c.name),
    tail: concepts.filter((c) => c.split === 'tail').map((c) => c.name),
    concepts,
  };
}

// ---------------------------------------------------------------------------------------------------------
// Samples

/** Largest distance from the centre to the shape, in units of its radius. */
function extent(shape: Shape): number {
  switch (shape) {
    case 'square':
      return SQUARE_HALF * Math.SQRT2;
    case 'cross':
      return Math.hypot(1, CROSS_HALF_WIDTH);
    default:
      return 1;
  }
}

function parseConcept(concept: string): [Colour, Shape] {
  const [c, s] = concept.split(' ');
  if (!COLOURS.includes(c as Colour) || !SHAPES.includes(s as Shape)) throw new Error(`tiny world: unknown concept "${concept}"`);
  return [c as Colour, s as Shape];
}

/** Everything but the concept, drawn from `r` in a fixed order. */
function fill(r: Stream, kind: SampleKind, seed: number, index: number, colour: Colour, shape: Shape): SampleSpec {
  const background = BACKGROUNDS[r.int(BACKGROUNDS.length)];
  const radius = r.uniform(MIN_RADIUS, MAX_RADIUS);
  const margin = radius * extent(shape) + 1; // the outermost row and column of pixels stay background
  const cx = r.uniform(margin, BASE_SIZE - margin);
  const cy = r.uniform(margin, BASE_SIZE - margin);
  const rot = r.uniform(-MAX_ROTATION, MAX_ROTATION);
  const rotation = shape === 'circle' || shape === 'ring' ? 0 : rot;
  const colourJitter: [number, number, number] = [0, 0, 0].map(() => r.int(2 * MAX_JITTER + 1) - MAX_JITTER) as [number, number, number];
  return { kind, seed, index, concept: `${colour} ${shape}`, colour, shape, background, cx, cy, radius, rotation, colourJitter };
}

/** Training sample `index`: concept drawn from the Zipf table. */
export function sampleSpec(index: number, opts: WorldOptions = {}): SampleSpec {
  const seed = opts.seed ?? 0;
  const r = new Stream(STREAM_TRAIN, seedKey(seed), index);
  const { rows, cdf } = table(opts);
  const u = r.float();
  let i = 0;
  while (i < cdf.length - 1 && u >= cdf[i]) i++;
  return fill(r, 'train', seed, index, rows[i].colour, rows[i].shape);
}

/** Balanced sample `index`: concept uniform over all 36 (judge training, evaluation). */
export function balancedSpec(index: number, opts: WorldOptions = {}): SampleSpec {
  const seed = opts.seed ?? 0;
  const r = new Stream(STREAM_BALANCED, seedKey(seed), index);
  const [colour, shape] = parseConcept(CONCEPTS[r.int(CONCEPTS.length)]);
  return fill(r, 'balanced', seed, index, colour, shape);
}

/** `k` reference images of one concept for SeedSelect, from a stream disjoint from training and balanced. */
export function referenceSpecs(concept: string, k: number, seed = 0): SampleSpec[] {
  const [colour, shape] = parseConcept(concept);
  const id = conceptId(concept);
  return Array.from({ length: k }, (_, j) => fill(new Stream(STREAM_REFERENCE, seedKey(seed), id, j), 'reference', seed, j, colour, shape));
}

export function caption(spec: Pick<SampleSpec, 'colour' | 'shape' | 'background'>): string {
  return `a ${spec.colour} ${spec.shape} on a ${spec.background} background`;
}

/** The object's colour after jitter, in [0, 1]. */
export function objectRgb(spec: Pick<SampleSpec, 'colour' | 'colourJitter'>): [number, number, number] {
  const base = COLOUR_RGB[spec.colour];
  return [0, 1, 2].map((c) => Math.min(255, Math.max(0, base[c] + spec.colourJitter[c])) / 255) as [number, number, number];
}

// ---------------------------------------------------------------------------------------------------------
// Rendering

/** Square half-side, cross arm half-width, star and ring inner radii, as fractions of the radius. */
const SQUARE_HALF = 0.8;
const CROSS_HALF_WIDTH = 0.2;
const STAR_INNER = 0.45;
const RING_INNER = 0.55;

// star: fold the angle into [0, 36°] between an outer point A = (1, 0) and an inner point B (polar frame)
const STAR_SECTOR = (2 * Math.PI) / 5;
const STAR_BX = STAR_INNER * Math.cos(STAR_SECTOR / 2);
const STAR_BY = STAR_INNER * Math.sin(STAR_SECTOR / 2);
// triangle: outward edge normals for an upward apex (screen y grows downward), inradius 1/2
const TRI_NX = [0, Math.sin((2 * Math.PI) / 3), -Math.sin((2 * Math.PI) / 3)];
const TRI_NY = [1, Math.cos((2 * Math.PI) / 3), Math.cos((2 * Math.PI) / 3)];

/** Whether (u, v), in the shape's own frame and units of its radius (v down), is inside. */
function inside(shape: Shape, u: number, v: number): boolean {
  switch (shape) {
    case 'circle':
      return u * u + v * v <= 1;
    case 'ring': {
      const d2 = u * u + v * v;
      return d2 <= 1 && d2 >= RING_INNER * RING_INNER;
    }
    case 'square':
      return Math.abs(u) <= SQUARE_HALF && Math.abs(v) <= SQUARE_HALF;
    case 'cross': {
      const au = Math.abs(u);
      const av = Math.abs(v);
      return (au <= 1 && av <= CROSS_HALF_WIDTH) || (av <= 1 && au <= CROSS_HALF_WIDTH);
    }
    case 'triangle':
      for (let k = 0; k < 3; k++) if (u * TRI_NX[k] + v * TRI_NY[k] > 0.5) return false;
      return true;
    case 'star': {
      const rho = Math.hypot(u, v);
      if (rho > 1) return false;
      if (rho <= STAR_INNER * Math.cos(STAR_SECTOR / 2)) return true;
      let phi = Math.atan2(u, -v) % STAR_SECTOR; // angle from "up"; an outer point sits there
      if (phi < 0) phi += STAR_SECTOR;
      if (phi > STAR_SECTOR / 2) phi = STAR_SECTOR - phi;
      const px = rho * Math.cos(phi);
      const py = rho * Math.sin(phi);
      // P must lie on the origin's side of the edge A -> B: cross(B - A, P - A) >= 0 (the origin gives > 0)
      return (STAR_BX - 1) * py - STAR_BY * (px - 1) >= 0;
    }
  }
}

const SS = 4; // supersampling per axis

/** The image of a spec: Float32Array [3, size, size] (CHW) in [0, 1]. */
export function render(spec: SampleSpec, size = BASE_SIZE, out?: Float32Array): Float32Array {
  const n = size * size;
  const img = out ?? new Float32Array(3 * n);
  if (img.length !== 3 * n) throw new RangeError(`tiny world: render output has ${img.length} values, expected ${3 * n}`);
  const bg = BACKGROUND_RGB[spec.background].map((v) => v / 255);
  const fg = objectRgb(spec);
  for (let c = 0; c < 3; c++) img.fill(bg[c], c * n, (c + 1) * n);

  const scale = size / BASE_SIZE;
  const cx = spec.cx * scale;
  const cy = spec.cy * scale;
  const R = spec.radius * scale;
  const reach = R * extent(spec.shape) + Math.SQRT1_2; // farther pixel centres cannot be covered
  const cos = Math.cos(spec.rotation);
  const sin = Math.sin(spec.rotation);
  const x0 = Math.max(0, Math.floor(cx - reach));
  const x1 = Math.min(size - 1, Math.ceil(cx + reach));
  const y0 = Math.max(0, Math.floor(cy - reach));
  const y1 = Math.min(size - 1, Math.ceil(cy + reach));
  const inv = 1 / R;
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      if (Math.hypot(x + 0.5 - cx, y + 0.5 - cy) > reach) continue;
      let hits = 0;
      for (let sy = 0; sy < SS; sy++) {
        const dy = y + (sy + 0.5) / SS - cy;
        for (let sx = 0; sx < SS; sx++) {
          const dx = x + (sx + 0.5) / SS - cx;
          // into the shape frame: rotate by -rotation (counter-clockwise on screen, where y points down)
          const u = (cos * dx - sin * dy) * inv;
          const v = (sin * dx + cos * dy) * inv;
          if (inside(spec.shape, u, v)) hits++;
        }
      }
      if (hits === 0) continue;
      const a = hits / (SS * SS);
      const p = y * size + x;
      for (let c = 0; c < 3; c++) img[c * n + p] = a === 1 ? fg[c] : bg[c] + a * (fg[c] - bg[c]);
    }
  }
  return img;
}

/** A batch for training: pixels [B, 3, size, size] in [-1, 1] (the VAE's range), captions and concepts. */
export function batch(
  indices: ArrayLike<number>,
  opts: WorldOptions = {},
  kind: 'train' | 'balanced' = 'train',
): { pixels: Float32Array; captions: string[]; concepts: string[]; specs: SampleSpec[] } {
  const size = opts.size ?? BASE_SIZE;
  const per = 3 * size * size;
  const pixels = new Float32Array(indices.length * per);
  const captions: string[] = [];
  const concepts: string[] = [];
  const specs: SampleSpec[] = [];
  for (let b = 0; b < indices.length; b++) {
    const spec = kind === 'train' ? sampleSpec(indices[b], opts) : balancedSpec(indices[b], opts);
    const img = pixels.subarray(b * per, (b + 1) * per);
    render(spec, size, img);
    for (let i = 0; i < per; i++) img[i] = img[i] * 2 - 1;
    captions.push(caption(spec));
    concepts.push(spec.concept);
    specs.push(spec);
  }
  return { pixels, captions, concepts, specs };
}

/**
 * A CHW float image as 8-bit HWC RGB (for PNG writers). Values are taken in [0, 1], or in [-1, 1] with
 * `signed`; out-of-range values clip.
 */
export function toRgb8(chw: Float32Array, signed = false): Uint8Array {
  const n = chw.length / 3;
  const size = Math.round(Math.sqrt(n));
  if (!Number.isInteger(n) || size * size !== n) throw new RangeError(`tiny world: ${chw.length} values is not a square RGB image`);
  const out = new Uint8Array(3 * n);
  for (let p = 0; p < n; p++) {
    for (let c = 0; c < 3; c++) {
      const v = signed ? (chw[c * n + p] + 1) / 2 : chw[c * n + p];
      out[3 * p + c] = Math.round(Math.min(1, Math.max(0, v)) * 255);
    }
  }
  return out;
}
