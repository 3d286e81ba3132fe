// The live loss curve: total, 10 x semantic and appearance per iteration, on a canvas.

export interface LossPoint {
  iteration: number;
  total: number;
  semantic: number;
  appearance: number;
}

const SERIES: [string, string, (p: LossPoint) => number][] = [
  ['total', '#d62728', (p) => p.total],
  ['10 x semantic', '#1f77b4', (p) => 10 * p.semantic],
  ['appearance', '#2ca02c', (p) => p.appearance],
];

export function drawLossChart(canvas: HTMLCanvasElement, points: LossPoint[], iterations: number) {
  const dpr = window.devicePixelRatio || 1;
  const W = canvas.clientWidth || 480;
  const H = canvas.clientHeight || 240;
  canvas.width = Math.round(W * dpr);
  canvas.height = Math.round(H * dpr);
  const ctx = canvas.getContext('2d')!;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  ctx.font = '11px system-ui, sans-serif';
  const m = { l: 52, r: 12, t: 12, b: 26 };
  const vals = points.flatMap((p) => SERIES.map(([, , f]) => f(p))).filter(Number.isFinite);
  const lo = Math.min(0, ...vals);
  const hi = Math.max(1e-9, ...vals);
  const n = Math.max(1, iterations - 1);
  const x = (i: number) => m.l + ((W - m.l - m.r) * i) / n;
  const y = (v: number) => H - m.b - ((H - m.t - m.b) * (v - lo)) / (hi - lo || 1);
  ctx.strokeStyle = '#e3e3e3';
  ctx.fillStyle = '#666';
  for (const f of [0, 0.25, 0.5, 0.75, 1]) {
    const v = lo + f * (hi - lo);
    ctx.beginPath();
    ctx.moveTo(m.l, y(v));
    ctx.lineTo(W - m.r, y(v));
    ctx.stroke();
    ctx.fillText(v.toPrecision(3), 4, y(v) + 4);
  }
  ctx.fillText('iteration', W / 2 - 20, H - 6);
  SERIES.forEach(([name, color, f], k) => {
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo(x(p.iteration), y(f(p))) : ctx.moveTo(x(p.iteration), y(f(p)))));
    ctx.stroke();
    for (const p of points) ctx.fillRect(x(p.iteration) - 2, y(f(p)) - 2, 4, 4);
    ctx.fillText(name, W - m.r - 90, m.t + 12 * (k + 1));
  });
}
