// Image files in Node (decode/encode JPEG, PNG, WebP with sharp) and the two reference preprocessings
// SeedSelect needs: CLIP (bicubic resize of the short side to S, center crop S x S) and VAE (resize to
// the generation size without crop). sharp resamples with antialiasing, like PIL in the official code.
import sharp from 'sharp';
import { UserError } from './errors.js';

export interface RgbImage {
  width: number;
  height: number;
  /** RGB, 8 bits, row-major */
  data: Uint8Array;
  source: string;
}

export async function loadImage(path: string): Promise<RgbImage> {
  try {
    const { data, info } = await sharp(path).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`expected 3 channels, got ${info.channels}`);
    return { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), source: path };
  } catch (e) {
    const msg = (e as Error).message;
    if (/no such file|ENOENT|missing/i.test(msg)) throw new UserError(`reference image "${path}" does not exist`);
    throw new UserError(`reference image "${path}" could not be read as JPEG, PNG or WebP (${msg})`);
  }
}

function toChw01(data: Uint8Array, w: number, h: number): Float32Array {
  const out = new Float32Array(3 * w * h);
  for (let i = 0; i < w * h; i++) for (let c = 0; c < 3; c++) out[c * w * h + i] = data[i * 3 + c] / 255;
  return out;
}

async function resized(img: RgbImage, w: number, h: number, fit: 'cover' | 'fill'): Promise<Float32Array> {
  const buf = await sharp(Buffer.from(img.data), { raw: { width: img.width, height: img.height, channels: 3 } })
    .resize(w, h, { fit, position: 'centre', kernel: 'cubic' })
    .raw()
    .toBuffer();
  return toChw01(new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength), w, h);
}

/** CLIP preprocessing without normalization: [3, S, S] in [0, 1]. */
export const clipInput = (img: RgbImage, size: number) => resized(img, size, size, 'cover');
/** VAE input: [3, H, W] in [0, 1] (map to [-1, 1] before encoding). */
export const vaeInput = (img: RgbImage, width: number, height: number) => resized(img, width, height, 'fill');

/** Write a [3, H, W] (or [1, 3, H, W]) image in [0, 1] as PNG. */
export async function savePng(chw: Float32Array, width: number, height: number, path: string): Promise<void> {
  const px = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++)
    for (let c = 0; c < 3; c++) px[i * 3 + c] = Math.round(Math.min(1, Math.max(0, chw[c * width * height + i])) * 255);
  await sharp(Buffer.from(px), { raw: { width, height, channels: 3 } }).png().toFile(path);
}

/** A grid of equally sized [3,H,W] images in rows, with optional row labels. */
export async function saveGrid(rows: Float32Array[][], width: number, height: number, path: string, labels: string[] = []): Promise<void> {
  const pad = 4;
  const labelW = labels.length ? 110 : 0;
  const cols = Math.max(...rows.map((r) => r.length));
  const W = labelW + cols * (width + pad) + pad;
  const H = rows.length * (height + pad) + pad;
  const composites = await Promise.all(
    rows.flatMap((row, r) =>
      row.map(async (chw, c) => {
        const px = new Uint8Array(width * height * 3);
        for (let i = 0; i < width * height; i++) for (let k = 0; k < 3; k++) px[i * 3 + k] = Math.round(Math.min(1, Math.max(0, chw[k * width * height + i])) * 255);
        const input = await sharp(Buffer.from(px), { raw: { width, height, channels: 3 } }).png().toBuffer();
        return { input, left: labelW + pad + c * (width + pad), top: pad + r * (height + pad) };
      }),
    ),
  );
  const svgLabels = labels
    .map((l, r) => `<text x="4" y="${pad + r * (height + pad) + height / 2 + 4}" font-family="sans-serif" font-size="12">${escapeXml(l)}</text>`)
    .join('');
  const bg = Buffer.from(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}"><rect width="100%" height="100%" fill="white"/>${svgLabels}</svg>`);
  await sharp(bg).composite(composites).png().toFile(path);
}

function escapeXml(s: string) {
  return s.replace(/[<>&"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' })[c]!);
}

/** The loss curve (total, semantic, appearance per iteration) as a PNG line chart. */
export async function saveLossCurve(history: { iteration: number; total: number; semantic: number; appearance: number }[], path: string): Promise<void> {
  const W = 640;
  const H = 360;
  const m = { l: 60, r: 20, t: 30, b: 40 };
  const series: [string, string, number[]][] = [
    ['total', '#d62728', history.map((h) => h.total)],
    ['10 x semantic', '#1f77b4', history.map((h) => 10 * h.semantic)],
    ['appearance', '#2ca02c', history.map((h) => h.appearance)],
  ];
  const all = series.flatMap((s) => s[2]).filter(Number.isFinite);
  const lo = Math.min(0, ...all);
  const hi = Math.max(1e-9, ...all);
  const n = Math.max(1, history.length - 1);
  const x = (i: number) => m.l + ((W - m.l - m.r) * i) / n;
  const y = (v: number) => H - m.b - ((H - m.t - m.b) * (v - lo)) / (hi - lo || 1);
  const lines = series
    .map(([name, color, v], k) => {
      const pts = v.map((val, i) => `${x(i).toFixed(1)},${y(val).toFixed(1)}`).join(' ');
      return `<polyline points="${pts}" fill="none" stroke="${color}" stroke-width="2"/><text x="${W - 150}" y="${m.t + 14 * k}" fill="${color}" font-family="sans-serif" font-size="12">${name}</text>`;
    })
    .join('');
  const ticks = [0, 0.25, 0.5, 0.75, 1]
    .map((f) => {
      const v = lo + f * (hi - lo);
      return `<text x="4" y="${y(v) + 4}" font-family="sans-serif" font-size="11">${v.toPrecision(3)}</text><line x1="${m.l}" x2="${W - m.r}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`;
    })
    .join('');
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}"><rect width="100%" height="100%" fill="white"/>${ticks}${lines}
<text x="${W / 2}" y="${H - 8}" font-family="sans-serif" font-size="12" text-anchor="middle">iteration</text>
<text x="${W / 2}" y="16" font-family="sans-serif" font-size="13" text-anchor="middle">SeedSelect loss</text></svg>`;
  await sharp(Buffer.from(svg)).png().toFile(path);
}
