// Images in the browser: decoding reference files (createImageBitmap), the two preprocessings SeedSelect
// needs (as cli/images.ts does in Node: CLIP = resize the short side to S and center-crop S x S; VAE =
// resize to the generation size), and drawing / encoding [3, H, W] results.

export class ImageDecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ImageDecodeError';
  }
}

export async function decodeImage(file: Blob, name: string): Promise<ImageBitmap> {
  if (file.size === 0) throw new ImageDecodeError(`"${name}" is empty`);
  try {
    return await createImageBitmap(file, { colorSpaceConversion: 'default', premultiplyAlpha: 'default' });
  } catch (e) {
    const type = file.type ? ` (${file.type})` : '';
    throw new ImageDecodeError(`"${name}"${type} could not be decoded as an image: ${(e as Error).message || 'unsupported or corrupt file'}. Use JPEG, PNG or WebP.`);
  }
}

function canvas2d(w: number, h: number): { ctx: OffscreenCanvasRenderingContext2D | CanvasRenderingContext2D } {
  if (typeof OffscreenCanvas !== 'undefined') {
    const c = new OffscreenCanvas(w, h);
    return { ctx: c.getContext('2d', { willReadFrequently: true })! };
  }
  const c = document.createElement('canvas');
  c.width = w;
  c.height = h;
  return { ctx: c.getContext('2d', { willReadFrequently: true })! };
}

/** Draw the source rectangle (sx, sy, sw, sh) of `img` scaled to W x H on white, as [3, H, W] in [0, 1]. */
function resample(img: ImageBitmap, sx: number, sy: number, sw: number, sh: number, W: number, H: number): Float32Array {
  const { ctx } = canvas2d(W, H);
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, W, H);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(img, sx, sy, sw, sh, 0, 0, W, H);
  const px = ctx.getImageData(0, 0, W, H).data;
  const out = new Float32Array(3 * W * H);
  const n = W * H;
  for (let i = 0; i < n; i++) {
    out[i] = px[4 * i] / 255;
    out[n + i] = px[4 * i + 1] / 255;
    out[2 * n + i] = px[4 * i + 2] / 255;
  }
  return out;
}

/** CLIP input without normalization: short side resized to S, center crop S x S; [3, S, S] in [0, 1]. */
export function clipInput(img: ImageBitmap, S: number): Float32Array {
  const side = Math.min(img.width, img.height);
  return resample(img, (img.width - side) / 2, (img.height - side) / 2, side, side, S, S);
}

/** VAE input: the whole image resized to W x H (no crop); [3, H, W] in [0, 1]. */
export function vaeInput(img: ImageBitmap, W: number, H: number): Float32Array {
  return resample(img, 0, 0, img.width, img.height, W, H);
}

/** [3, H, W] (or [1, 3, H, W]) in [0, 1] -> RGBA ImageData. */
export function toImageData(chw: Float32Array, W: number, H: number): ImageData {
  const n = W * H;
  const rgba = new Uint8ClampedArray(4 * n);
  for (let i = 0; i < n; i++) {
    rgba[4 * i] = Math.round(chw[i] * 255);
    rgba[4 * i + 1] = Math.round(chw[n + i] * 255);
    rgba[4 * i + 2] = Math.round(chw[2 * n + i] * 255);
    rgba[4 * i + 3] = 255;
  }
  return new ImageData(rgba, W, H);
}

/** Draw a [3, H, W] image on a canvas (sized to the image; CSS scales it up without smoothing). */
export function drawChw(canvas: HTMLCanvasElement, chw: Float32Array, W: number, H: number) {
  canvas.width = W;
  canvas.height = H;
  canvas.getContext('2d')!.putImageData(toImageData(chw, W, H), 0, 0);
}

export async function pngBlob(chw: Float32Array, W: number, H: number): Promise<Blob> {
  const c = document.createElement('canvas');
  drawChw(c, chw, W, H);
  return new Promise((res, rej) => c.toBlob((b) => (b ? res(b) : rej(new Error('PNG encoding failed'))), 'image/png'));
}
