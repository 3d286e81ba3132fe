// The SeedSelect page: load a diffusers model (URL or local folder), add reference images, run SeedSelect
// with live progress, cancel and resume, download the images and the optimized seeds. The same library
// code as the Node command line (models/api.ts `seedSelect`).
import { rt } from '../../engine/runtime.js';
import { DeviceLostError, GpuOutOfMemoryError } from '../../engine/runtime.js';
import { Tensor, noGrad, tidy } from '../../engine/tensor.js';
import { StableDiffusionPipeline } from '../../models/pipeline.js';
import { InputError, seedSelect, type ReferenceImage, type SeedSelectProgress } from '../../models/api.js';
import type { IterationInfo, OptimizerState } from '../../models/seedselect.js';
import { httpFolder, type FolderAccess } from '../../weights-tools/model-folder.js';
import { encodeSafetensors } from '../../weights-tools/safetensors.js';
import { WeightsError } from '../../weights-tools/errors.js';
import { startGpu, gpuSummary, GpuSetupError } from './gpu.js';
import { FolderError, fileTreeFolder, findRoot, missingClipFiles, missingPipelineFiles, treeFromDrop, treeFromInput, type FileTree } from './folders.js';
import { clipInput, decodeImage, drawChw, pngBlob, vaeInput } from './images.js';
import { drawLossChart } from './chart.js';

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const input = (id: string) => $<HTMLInputElement>(id);
const button = (id: string) => $<HTMLButtonElement>(id);

// ---------------------------------------------------------------------------------------------
// state

interface Reference {
  name: string;
  bitmap: ImageBitmap;
  url: string;
}

interface Checkpoint {
  key: string;
  /** the image to continue and, when `state` is set, the iteration to continue it from */
  image: number;
  iteration: number;
  z?: Float32Array;
  state?: OptimizerState;
  history: IterationInfo[];
}

interface FinishedImage {
  index: number;
  image: Float32Array;
  seed: Float32Array;
  history: IterationInfo[];
  stopped: string;
  message?: string;
}

interface RunRecord {
  status: 'idle' | 'running' | 'cancelling' | 'cancelled' | 'done' | 'error';
  key?: string;
  options?: RunOptions;
  /** per-iteration losses of every image, in order */
  history: (IterationInfo & { image: number })[];
  images: FinishedImage[];
  baseline?: Float32Array;
  error?: string;
  startedAt?: number;
  seconds?: number;
}

interface RunOptions {
  prompt: string;
  negative: string;
  iterations: number;
  steps: number;
  seed: number;
  guidance: number;
  width: number;
  height: number;
  numImages: number;
}

const app = {
  gpuOk: false,
  deviceLost: false,
  pipe: null as StableDiffusionPipeline | null,
  modelName: '',
  clipFolder: null as FolderAccess | null,
  loading: false,
  refs: [] as Reference[],
  controller: null as AbortController | null,
  checkpoint: null as Checkpoint | null,
  run: { status: 'idle', history: [], images: [] } as RunRecord,
  /** the latest preprocessed references (what the last run used) */
  lastReferences: [] as ReferenceImage[],
  objectUrls: [] as string[],
};

// ---------------------------------------------------------------------------------------------
// messages

function showMessage(text: string, kind: 'error' | 'info' = 'error') {
  const m = $('message');
  m.textContent = text;
  m.className = `message ${kind === 'info' ? 'info' : ''}`;
  m.hidden = false;
  m.dataset.kind = kind;
}
function clearMessage() {
  $('message').hidden = true;
  $('message').textContent = '';
}
function setStatus(id: string, text: string, state: string) {
  const el = $(id);
  el.textContent = text;
  el.dataset.state = state;
}

/** A readable explanation of any error the library can throw. */
function explain(e: unknown): string {
  if (e instanceof DeviceLostError) return `${e.message}\nReload the page to start again; download the current seed first if you need it.`;
  if (e instanceof GpuOutOfMemoryError) return `${e.message}\nTry a smaller image size, fewer DDIM steps, or close other tabs that use the GPU.`;
  if (e instanceof GpuSetupError || e instanceof InputError || e instanceof FolderError) return e.message;
  if (e instanceof WeightsError) {
    const m = e.message.replace(/^[A-Z_]+: /, '');
    if (e.code === 'RANGE_UNSUPPORTED') return `${m}\nThe server must answer HTTP Range requests (206 Partial Content) so that weights can be read tensor by tensor; use another static server, or choose the folder locally.`;
    if (e.code === 'IO' && /failed to fetch|networkerror|load failed/i.test(m))
      return `${m}\nThe server could not be reached, or it is on another origin and does not allow this page (CORS: it must send Access-Control-Allow-Origin and allow the Range header).`;
    return m;
  }
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return String(e);
}

function fmtTime(s: number): string {
  if (!Number.isFinite(s)) return '?';
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}
const fmtBytes = (b: number) => (b > 2 ** 30 ? `${(b / 2 ** 30).toFixed(2)} GiB` : `${(b / 2 ** 20).toFixed(1)} MiB`);

// ---------------------------------------------------------------------------------------------
// GPU

function onDeviceLost(message: string) {
  app.deviceLost = true;
  app.gpuOk = false;
  app.controller?.abort();
  setStatus('gpu-status', `WebGPU device lost: ${message}`, 'error');
  showMessage(
    `The GPU device was lost (${message}). This happens when the GPU driver resets, another program takes the GPU, or the tab used too much GPU memory.\n` +
      'Reload the page to start again.' +
      (app.checkpoint?.z ? ' The seed optimized so far can still be downloaded (link "current seed").' : ''),
  );
  updateButtons();
}

async function startEngine() {
  const params = new URLSearchParams(location.search);
  try {
    await startGpu({ forceCompat: params.get('compat') === '1', onLost: onDeviceLost });
    app.gpuOk = true;
    setStatus('gpu-status', `WebGPU: ${gpuSummary()}`, 'ready');
  } catch (e) {
    setStatus('gpu-status', explain(e), 'error');
    showMessage(explain(e));
  }
  updateButtons();
}

// ---------------------------------------------------------------------------------------------
// model

async function loadModel(folder: FolderAccess, label: string) {
  if (app.loading || isRunning()) return;
  if (!app.gpuOk) {
    showMessage(app.deviceLost ? 'The WebGPU device was lost: reload the page.' : 'WebGPU is not available, so no model can be loaded (see the message at the top).');
    return;
  }
  clearMessage();
  app.loading = true;
  updateButtons();
  setStatus('model-status', `Checking ${label}…`, 'loading');
  const t0 = performance.now();
  try {
    const missing = await missingPipelineFiles(folder, !app.clipFolder);
    if (app.clipFolder) {
      const mc = await missingClipFiles(app.clipFolder);
      if (mc.length) throw new FolderError(`The CLIP folder ${app.clipFolder.name} is incomplete: missing ${mc.join(', ')}.`);
    }
    if (missing.length) {
      const onlyClip = missing.every((m) => m.startsWith('image_encoder/'));
      const text = onlyClip
        ? `The model folder ${label} has no CLIP image tower (missing ${missing.join(', ')}). SeedSelect scores images with CLIP: add image_encoder/ (a CLIPVisionModelWithProjection) to the folder, or give a separate CLIP vision folder under "Separate CLIP vision model".`
        : `The model folder ${label} is incomplete. Missing: ${missing.join(', ')}.\nA diffusers Stable Diffusion folder needs model_index.json, unet/ and vae/ (config.json + diffusion_pytorch_model.safetensors), text_encoder/ (config.json + model.safetensors), tokenizer/ (vocab.json, merges.txt), scheduler/scheduler_config.json${app.clipFolder ? '' : ', and image_encoder/ (or a separate CLIP folder)'}.`;
      throw new FolderError(text);
    }
    if (app.pipe) {
      app.pipe.dispose();
      app.pipe = null;
      rt().releasePool();
    }
    let stage = '';
    const pipe = await StableDiffusionPipeline.load(folder, {
      clip: app.clipFolder ?? undefined,
      onStage: (s) => {
        stage = s;
        setStatus('model-status', `Loading ${label}: ${s}…`, 'loading');
      },
      onProgress: (done, total, name) => setStatus('model-status', `Loading ${label}: ${stage} ${done}/${total} tensors (${name})`, 'loading'),
    });
    if (!pipe.clipVision) {
      pipe.dispose();
      throw new FolderError('The model has no CLIP image tower: add image_encoder/ to the folder or choose a separate CLIP vision folder.');
    }
    app.pipe = pipe;
    app.modelName = label;
    app.checkpoint = null;
    const f = 2 ** (pipe.vae.config.blockOutChannels.length - 1);
    const native = (pipe.unet.config.sampleSize ?? 64) * f;
    input('width').placeholder = String(native);
    input('height').placeholder = String(native);
    const secs = ((performance.now() - t0) / 1000).toFixed(1);
    setStatus(
      'model-status',
      `Loaded ${label} in ${secs} s: native size ${native}x${native}, CLIP input ${pipe.clipVision.config.imageSize}px, GPU memory ${fmtBytes(rt().memory().liveBytes)}.`,
      'ready',
    );
  } catch (e) {
    setStatus('model-status', `Could not load ${label} (see the message at the top).`, 'error');
    showMessage(`Could not load the model ${label}:\n${explain(e)}`);
  } finally {
    app.loading = false;
    updateButtons();
  }
}

function localFolderFrom(tree: FileTree, what: 'pipeline' | 'clip'): { folder: FolderAccess; label: string } {
  if (!tree.size) throw new FolderError('The chosen folder is empty.');
  const marker = what === 'pipeline' ? 'model_index.json' : 'config.json';
  const root = findRoot(tree, marker);
  if (root === undefined) {
    const top = [...tree.keys()][0].split('/')[0];
    throw new FolderError(
      what === 'pipeline'
        ? `"${top}" is not a diffusers pipeline folder: no model_index.json in it. Choose the folder that holds model_index.json, unet/, vae/, text_encoder/, tokenizer/ and scheduler/.`
        : `"${top}" is not a model folder: no config.json in it.`,
    );
  }
  const label = root || 'dropped folder';
  return { folder: fileTreeFolder(tree, root, label), label };
}

async function loadLocal(tree: FileTree) {
  try {
    const { folder, label } = localFolderFrom(tree, 'pipeline');
    await loadModel(folder, label);
  } catch (e) {
    setStatus('model-status', explain(e), 'error');
    showMessage(explain(e));
  }
}

function normalizeUrl(u: string): string {
  const url = new URL(u.trim(), location.href);
  return url.href.replace(/\/+$/, '');
}

// ---------------------------------------------------------------------------------------------
// references

async function addReferenceFiles(files: File[]) {
  const bad: string[] = [];
  for (const f of files) {
    if (f.type && !f.type.startsWith('image/')) {
      bad.push(`"${f.name}" is not an image (${f.type})`);
      continue;
    }
    try {
      const bitmap = await decodeImage(f, f.name);
      if (bitmap.width < 8 || bitmap.height < 8) {
        bitmap.close();
        bad.push(`"${f.name}" is too small (${bitmap.width}x${bitmap.height})`);
        continue;
      }
      const url = URL.createObjectURL(f);
      app.refs.push({ name: f.name, bitmap, url });
    } catch (e) {
      bad.push((e as Error).message);
    }
  }
  renderRefs();
  if (bad.length) {
    setStatus('ref-status', `Skipped ${bad.length} file(s): ${bad.join('; ')}`, 'error');
    showMessage(`Some reference images could not be used:\n${bad.join('\n')}`);
  } else setStatus('ref-status', app.refs.length ? `${app.refs.length} reference image(s).` : '', app.refs.length ? 'ready' : 'none');
  updateButtons();
}

function renderRefs() {
  const list = $('ref-list');
  list.replaceChildren(
    ...app.refs.map((r, i) => {
      const d = document.createElement('div');
      d.className = 'thumb';
      const img = document.createElement('img');
      img.src = r.url;
      img.alt = r.name;
      const rm = document.createElement('button');
      rm.textContent = '×';
      rm.title = 'remove';
      rm.onclick = () => {
        URL.revokeObjectURL(r.url);
        r.bitmap.close();
        app.refs.splice(i, 1);
        renderRefs();
        setStatus('ref-status', app.refs.length ? `${app.refs.length} reference image(s).` : '', app.refs.length ? 'ready' : 'none');
        updateButtons();
      };
      const cap = document.createElement('div');
      cap.textContent = `${r.name} (${r.bitmap.width}x${r.bitmap.height})`;
      d.append(img, rm, cap);
      return d;
    }),
  );
}

function preprocess(S: number, width: number, height: number): ReferenceImage[] {
  return app.refs.map((r) => ({ name: r.name, clip: clipInput(r.bitmap, S), vae: vaeInput(r.bitmap, width, height) }));
}

// ---------------------------------------------------------------------------------------------
// options

function readOptions(): RunOptions {
  const pipe = app.pipe!;
  const int = (id: string, name: string, min: number) => {
    const v = Number(input(id).value);
    if (!Number.isInteger(v) || v < min) throw new InputError(`${name} must be an integer >= ${min}, got "${input(id).value}"`);
    return v;
  };
  const f = 2 ** (pipe.vae.config.blockOutChannels.length - 1);
  const native = (pipe.unet.config.sampleSize ?? 64) * f;
  const size = (id: string, name: string) => (input(id).value.trim() === '' ? native : int(id, name, 8));
  const guidance = Number(input('guidance').value);
  if (!Number.isFinite(guidance)) throw new InputError(`guidance must be a number, got "${input('guidance').value}"`);
  const o: RunOptions = {
    prompt: input('prompt').value,
    negative: input('negative').value,
    iterations: int('iterations', 'iterations', 1),
    steps: int('steps', 'DDIM steps', 3),
    seed: int('seed', 'seed', 0),
    guidance,
    width: size('width', 'width'),
    height: size('height', 'height'),
    numImages: int('num-images', 'images', 1),
  };
  try {
    pipe.latentShape(o.height, o.width);
  } catch (e) {
    throw new InputError(`width/height: ${(e as Error).message}`);
  }
  return o;
}

function runKey(o: RunOptions): string {
  return JSON.stringify({ model: app.modelName, clip: app.clipFolder?.name ?? null, refs: app.refs.map((r) => [r.name, r.bitmap.width, r.bitmap.height]), o });
}

// ---------------------------------------------------------------------------------------------
// running

function isRunning() {
  return app.run.status === 'running' || app.run.status === 'cancelling';
}

function updateButtons() {
  const running = isRunning();
  const ready = app.gpuOk && !!app.pipe && app.refs.length > 0 && !app.loading;
  button('run').disabled = !ready || running;
  button('cancel').disabled = !running || app.run.status === 'cancelling';
  let resumable = false;
  if (ready && !running && app.checkpoint && app.run.status === 'cancelled') {
    try {
      resumable = runKey(readOptions()) === app.checkpoint.key;
    } catch {
      resumable = false;
    }
  }
  button('resume').disabled = !resumable;
  button('resume').title = app.checkpoint && !resumable && app.run.status === 'cancelled' ? 'the model, references or options changed since the run was cancelled' : '';
  button('load-url').disabled = app.loading || running || !app.gpuOk;
  input('model-dir').disabled = app.loading || running || !app.gpuOk;
}

function lossRow(p: IterationInfo & { image: number }) {
  const tr = document.createElement('tr');
  for (const v of [p.image + 1, p.iteration + 1, p.total.toFixed(5), p.semantic.toFixed(5), p.appearance.toFixed(5), p.lr, `${(p.ms / 1000).toFixed(1)} s`]) {
    const td = document.createElement('td');
    td.textContent = String(v);
    tr.append(td);
  }
  return tr;
}

function redrawChart(image: number, iterations: number) {
  drawLossChart($<HTMLCanvasElement>('loss-chart'), app.run.history.filter((h) => h.image === image), iterations);
}

function seedFile(z: Float32Array, shape: number[], meta: Record<string, string>): Blob {
  const bytes = encodeSafetensors([{ name: 'z_T', dtype: 'F32', shape, data: z }], meta);
  return new Blob([bytes], { type: 'application/octet-stream' });
}

function objectUrl(b: Blob) {
  const u = URL.createObjectURL(b);
  app.objectUrls.push(u);
  return u;
}

function setSeedNowLink(z: Float32Array, shape: number[], o: RunOptions, image: number, iteration: number) {
  const a = $<HTMLAnchorElement>('seed-now');
  if (a.href) URL.revokeObjectURL(a.href);
  a.href = URL.createObjectURL(seedFile(z, shape, { prompt: o.prompt, seed: String(o.seed), image: String(image), iteration: String(iteration) }));
  a.download = `seed-${String(image).padStart(2, '0')}-it${iteration}.safetensors`;
  a.textContent = `current seed (image ${image + 1}, after iteration ${iteration}) .safetensors`;
  a.hidden = false;
}

async function renderSeed(z: Float32Array, shape: number[], o: RunOptions): Promise<Float32Array> {
  const pipe = app.pipe!;
  const t = noGrad(() => tidy(() => pipe.txt2img(Tensor.from(z, shape), o.prompt, { negative: o.negative, steps: o.steps, guidance: o.guidance })));
  try {
    return (await t.data()) as Float32Array;
  } finally {
    t.dispose();
  }
}

async function addResultCard(img: FinishedImage, o: RunOptions, shape: number[]) {
  const card = document.createElement('div');
  card.className = 'card';
  card.dataset.index = String(img.index);
  card.dataset.stopped = img.stopped;
  const c = document.createElement('canvas');
  drawChw(c, img.image, o.width, o.height);
  const last = img.history[img.history.length - 1];
  const cap = document.createElement('div');
  const partial = img.stopped === 'cancelled' ? ' (cancelled: partial)' : img.stopped === 'done' ? '' : ` (${img.stopped})`;
  cap.textContent = `image ${img.index + 1}${partial}: ${img.history.length} iteration(s)${last ? `, loss ${last.total.toFixed(4)}` : ''}`;
  const base = `seedselect-${String(img.index).padStart(2, '0')}${img.stopped === 'cancelled' ? '-partial' : ''}`;
  const png = document.createElement('a');
  png.className = 'download png';
  png.href = objectUrl(await pngBlob(img.image, o.width, o.height));
  png.download = `${base}.png`;
  png.textContent = 'PNG';
  const seed = document.createElement('a');
  seed.className = 'download seed';
  seed.href = objectUrl(seedFile(img.seed, shape, { prompt: o.prompt, negative: o.negative, seed: String(o.seed), image: String(img.index), steps: String(o.steps), guidance: String(o.guidance) }));
  seed.download = `${base}-seed.safetensors`;
  seed.textContent = 'optimized seed (.safetensors)';
  const links = document.createElement('div');
  links.append(png, document.createTextNode(' · '), seed);
  card.append(c, cap, links);
  if (img.message) {
    const m = document.createElement('div');
    m.textContent = img.message;
    card.append(m);
  }
  $('results').append(card);
}

async function runSeedSelect(resume: boolean) {
  if (!app.pipe || isRunning()) return;
  clearMessage();
  let o: RunOptions;
  try {
    o = readOptions();
  } catch (e) {
    showMessage(explain(e));
    return;
  }
  const pipe = app.pipe;
  const key = runKey(o);
  const ck = resume && app.checkpoint?.key === key ? app.checkpoint : null;
  const latShape = pipe.latentShape(o.height, o.width);
  let references: ReferenceImage[];
  try {
    references = preprocess(pipe.clipVision!.config.imageSize, o.width, o.height);
  } catch (e) {
    showMessage(`The reference images could not be prepared: ${explain(e)}`);
    return;
  }
  app.lastReferences = references;
  if (!ck) {
    app.run = { status: 'running', key, options: o, history: [], images: [], startedAt: performance.now() };
    app.checkpoint = null;
    $('loss-table').querySelector('tbody')!.replaceChildren();
    $('results').replaceChildren();
    for (const u of app.objectUrls.splice(0)) URL.revokeObjectURL(u);
    const cur = $<HTMLCanvasElement>('current-image');
    cur.getContext('2d')?.clearRect(0, 0, cur.width, cur.height);
  } else {
    app.run.status = 'running';
    app.run.error = undefined;
    // drop iterations after the checkpoint (the cancelled image restarts from it) and its partial card
    app.run.history = app.run.history.filter((h) => h.image < ck.image || (h.image === ck.image && h.iteration < ck.iteration));
    app.run.images = app.run.images.filter((im) => im.index < ck.image);
    $('results').querySelectorAll(`.card`).forEach((c) => Number((c as HTMLElement).dataset.index) >= ck.image && c.remove());
    const tbody = $('loss-table').querySelector('tbody')!;
    tbody.replaceChildren(...app.run.history.map(lossRow));
  }
  const controller = new AbortController();
  app.controller = controller;
  updateButtons();
  const t0 = performance.now();
  const total = o.iterations + (o.numImages - 1) * Math.max(1, Math.ceil(o.iterations / 3));
  const done0 = app.run.history.length;
  setStatus('run-status', ck ? `Resuming image ${ck.image + 1} at iteration ${ck.iteration + 1}…` : 'Encoding the prompt and rendering the starting seed…', 'running');
  redrawChart(ck?.image ?? 0, o.iterations);
  try {
    const result = await seedSelect({
      pipeline: pipe,
      prompt: o.prompt,
      negativePrompt: o.negative,
      references,
      width: o.width,
      height: o.height,
      seed: o.seed,
      steps: o.steps,
      guidance: o.guidance,
      iterations: o.iterations,
      numImages: o.numImages,
      signal: controller.signal,
      startImage: ck?.image ?? 0,
      resume: ck?.z && ck.state ? { image: ck.image, iteration: ck.iteration, z: ck.z, optimizer: ck.state, history: ck.history } : undefined,
      onProgress: (p: SeedSelectProgress) => {
        const entry = { ...p, image: p.image };
        app.run.history.push(entry);
        $('loss-table').querySelector('tbody')!.append(lossRow(entry));
        redrawChart(p.image, p.iterations);
        const doneIts = app.run.history.length;
        const prog = $<HTMLProgressElement>('run-progress');
        prog.max = total;
        prog.value = doneIts;
        const elapsed = (performance.now() - t0) / 1000;
        const eta = doneIts > done0 ? (elapsed / (doneIts - done0)) * (total - doneIts) : p.etaSeconds;
        setStatus(
          'run-status',
          `Image ${p.image + 1}/${p.numImages}, iteration ${p.iteration + 1}/${p.iterations}: loss ${p.total.toFixed(4)} (semantic ${p.semantic.toFixed(4)}, appearance ${p.appearance.toFixed(4)}), ${(p.ms / 1000).toFixed(1)} s/iteration, peak GPU ${fmtBytes(p.peakBytes)}, ETA ${fmtTime(eta)}` +
            (controller.signal.aborted ? ' — cancelling after this iteration' : ''),
          controller.signal.aborted ? 'cancelling' : 'running',
        );
      },
      onCheckpoint: async (c) => {
        app.checkpoint = { key, image: c.image, iteration: c.iteration, z: c.z, state: c.state, history: [...c.history] };
        setSeedNowLink(c.z, latShape, o, c.image, c.iteration);
        if (input('preview').checked && !controller.signal.aborted) {
          const img = await renderSeed(c.z, latShape, o);
          drawChw($<HTMLCanvasElement>('current-image'), img, o.width, o.height);
          $('current-caption').textContent = `image ${c.image + 1} after iteration ${c.iteration}`;
        }
      },
      onImage: async (i, img) => {
        const fin: FinishedImage = { index: i, image: img.image, seed: img.seed, history: img.result.history, stopped: img.result.stopped, message: img.result.message };
        app.run.images.push(fin);
        drawChw($<HTMLCanvasElement>('current-image'), img.image, o.width, o.height);
        $('current-caption').textContent = `image ${i + 1} (${img.result.stopped === 'cancelled' ? 'partial' : 'final'})`;
        if (img.result.stopped !== 'cancelled') app.checkpoint = { key, image: i + 1, iteration: 0, history: [] };
        await addResultCard(fin, o, latShape);
      },
    });
    app.run.baseline = result.baseline;
    drawChw($<HTMLCanvasElement>('baseline-image'), result.baseline, o.width, o.height);
    const secs = (performance.now() - t0) / 1000;
    app.run.seconds = (app.run.seconds ?? 0) + secs;
    if (controller.signal.aborted) {
      app.run.status = 'cancelled';
      const ckp = app.checkpoint as Checkpoint | null;
      setStatus(
        'run-status',
        `Cancelled${ckp ? ` at image ${ckp.image + 1}, iteration ${ckp.iteration}` : ''}. Press Resume to continue (keep the same options).`,
        'cancelled',
      );
    } else {
      app.run.status = 'done';
      app.checkpoint = null;
      const stops = result.images.map((i) => i.stopped).filter((s) => s !== 'done');
      setStatus('run-status', `Done: ${result.images.length} image(s) in ${fmtTime(app.run.seconds)}, peak GPU memory ${fmtBytes(result.peakBytes)}${stops.length ? ` (${stops.join(', ')})` : ''}.`, 'done');
      const msgs = result.images.map((i) => i.message).filter(Boolean);
      if (msgs.length) showMessage(msgs.join('\n'), 'info');
    }
  } catch (e) {
    app.run.status = app.deviceLost || e instanceof DeviceLostError ? 'error' : app.checkpoint ? 'cancelled' : 'error';
    app.run.error = explain(e);
    setStatus('run-status', `Stopped: ${explain(e)}`, 'error');
    showMessage(`SeedSelect stopped: ${explain(e)}`);
    if (e instanceof DeviceLostError && !app.deviceLost) onDeviceLost(e.message);
  } finally {
    app.controller = null;
    updateButtons();
  }
}

function cancelRun() {
  if (!app.controller) return;
  app.controller.abort();
  app.run.status = 'cancelling';
  setStatus('run-status', 'Cancelling: the current iteration finishes first…', 'cancelling');
  updateButtons();
}

// ---------------------------------------------------------------------------------------------
// wiring

function dropZone(el: HTMLElement, onDrop: (dt: DataTransfer) => void) {
  el.addEventListener('dragover', (e) => {
    e.preventDefault();
    el.classList.add('over');
  });
  el.addEventListener('dragleave', () => el.classList.remove('over'));
  el.addEventListener('drop', (e) => {
    e.preventDefault();
    el.classList.remove('over');
    if (e.dataTransfer) onDrop(e.dataTransfer);
  });
}

function wire() {
  button('load-url').onclick = () => {
    const raw = input('model-url').value;
    if (!raw.trim()) {
      showMessage('Enter the URL of a diffusers model folder (the folder that holds model_index.json).');
      return;
    }
    let url: string;
    try {
      url = normalizeUrl(raw);
      const clipRaw = input('clip-url').value.trim();
      if (clipRaw) app.clipFolder = httpFolder(normalizeUrl(clipRaw));
      else if (app.clipFolder && /^https?:/.test(app.clipFolder.name)) app.clipFolder = null;
    } catch (e) {
      showMessage(`Not a valid URL: ${(e as Error).message}`);
      return;
    }
    void loadModel(httpFolder(url), url);
  };
  input('model-dir').onchange = () => {
    const files = input('model-dir').files;
    if (files?.length) void loadLocal(treeFromInput(files));
    input('model-dir').value = '';
  };
  dropZone($('model-drop'), (dt) => {
    void treeFromDrop(dt).then(loadLocal, (e) => showMessage(`Could not read the dropped folder: ${explain(e)}`));
  });
  input('clip-dir').onchange = () => {
    const files = input('clip-dir').files;
    if (!files?.length) return;
    try {
      const { folder, label } = localFolderFrom(treeFromInput(files), 'clip');
      app.clipFolder = folder;
      input('clip-url').value = '';
      $('clip-status').textContent = `CLIP folder: ${label} (used when the model is loaded)`;
    } catch (e) {
      showMessage(explain(e));
    }
  };
  input('ref-files').onchange = () => {
    const files = input('ref-files').files;
    if (files?.length) void addReferenceFiles(Array.from(files));
    input('ref-files').value = '';
  };
  dropZone($('ref-drop'), (dt) => {
    void treeFromDrop(dt).then((tree) => addReferenceFiles([...tree.values()]));
  });
  button('ref-clear').onclick = () => {
    for (const r of app.refs) {
      URL.revokeObjectURL(r.url);
      r.bitmap.close();
    }
    app.refs = [];
    renderRefs();
    setStatus('ref-status', '', 'none');
    updateButtons();
  };
  button('run').onclick = () => void runSeedSelect(false);
  button('resume').onclick = () => void runSeedSelect(true);
  button('cancel').onclick = cancelRun;
  for (const el of document.querySelectorAll('#options-section input')) el.addEventListener('input', updateButtons);
  // a whole page is a drop target for reference images too, without navigating away on a missed drop
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => e.preventDefault());
}

/** A small inspection surface (used by the end-to-end test, handy in the console). */
const inspect = {
  status: () => ({ gpu: $('gpu-status').dataset.state, model: $('model-status').dataset.state, run: app.run.status, deviceLost: app.deviceLost }),
  /** the preprocessed references the last run used, as plain arrays */
  references: () => app.lastReferences.map((r) => ({ name: r.name, clip: Array.from(r.clip), vae: Array.from(r.vae) })),
  /** preprocess the current references for a CLIP size and a generation size */
  preprocess: (S: number, width: number, height: number) => preprocess(S, width, height).map((r) => ({ name: r.name, clip: Array.from(r.clip), vae: Array.from(r.vae) })),
  run: () => ({
    status: app.run.status,
    error: app.run.error,
    options: app.run.options,
    history: app.run.history.map((h) => ({ image: h.image, iteration: h.iteration, total: h.total, semantic: h.semantic, appearance: h.appearance, lr: h.lr, ms: h.ms })),
    images: app.run.images.map((i) => ({ index: i.index, stopped: i.stopped, image: Array.from(i.image), seed: Array.from(i.seed) })),
    baseline: app.run.baseline ? Array.from(app.run.baseline) : null,
    checkpoint: app.checkpoint ? { image: app.checkpoint.image, iteration: app.checkpoint.iteration } : null,
  }),
  gpu: () => (app.gpuOk ? { ...rt().gpu.adapterInfo, adapterClass: rt().gpu.adapterClass, compat: rt().gpu.compat } : null),
};
(window as unknown as { seedselect: typeof inspect }).seedselect = inspect;

wire();
updateButtons();
void startEngine().then(() => {
  const model = new URLSearchParams(location.search).get('model');
  if (model && app.gpuOk) {
    input('model-url').value = model;
    button('load-url').click();
  }
});
