// A small static file server for the browser tests: mounts folders under URL prefixes, answers HEAD and GET
// with Content-Length, and single byte ranges (Range: bytes=a-b, a-, -n) with 206 / Content-Range, as the
// model loader's HTTP byte source expects. Logs requests so tests can check that weights were streamed.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { extname, join, normalize, resolve, sep } from 'node:path';
import type { AddressInfo } from 'node:net';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.svg': 'image/svg+xml',
  '.wasm': 'application/wasm',
  '.safetensors': 'application/octet-stream',
};

export interface RequestLog {
  method: string;
  path: string;
  status: number;
  range?: string;
  bytes: number;
}

export interface StaticServer {
  url: string;
  server: Server;
  log: RequestLog[];
  close(): Promise<void>;
}

/** Parse a single-range `Range` header against a file size: [start, end] inclusive, 'unsatisfiable', or null to ignore. */
export function parseRange(header: string | undefined, size: number): [number, number] | 'unsatisfiable' | null {
  if (!header) return null;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return null; // multi-range or malformed: serve the whole file
  let start: number;
  let end: number;
  if (m[1] === '') {
    const n = Number(m[2]);
    if (n === 0) return 'unsatisfiable';
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
    if (start >= size || end < start) return 'unsatisfiable';
  }
  return [start, end];
}

/** Serve `mounts` (URL prefix like '/model/' -> folder) on 127.0.0.1; '/' maps the site root. */
export async function serveStatic(mounts: Record<string, string>, port = 0): Promise<StaticServer> {
  const log: RequestLog[] = [];
  const prefixes = Object.entries(mounts)
    .map(([p, dir]) => [p.endsWith('/') ? p : `${p}/`, resolve(dir)] as const)
    .sort((a, b) => b[0].length - a[0].length);

  async function handle(req: IncomingMessage, res: ServerResponse) {
    const entry: RequestLog = { method: req.method ?? 'GET', path: '', status: 200, range: req.headers.range, bytes: 0 };
    log.push(entry);
    const send = (status: number, body = '', headers: Record<string, string> = {}) => {
      entry.status = status;
      res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': String(Buffer.byteLength(body)), ...headers });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'method not allowed', { Allow: 'GET, HEAD' });
    let path: string;
    try {
      path = decodeURIComponent(new URL(req.url ?? '/', 'http://localhost').pathname);
    } catch {
      return send(400, 'bad url');
    }
    entry.path = path;
    const mount = prefixes.find(([p]) => path.startsWith(p) || `${path}/` === p);
    if (!mount) return send(404, 'not found');
    const [prefix, dir] = mount;
    const rel = normalize(path.slice(prefix.length) || '.');
    let file = join(dir, rel);
    if (file !== dir && !file.startsWith(dir + sep)) return send(403, 'forbidden');
    let st = await stat(file).catch(() => undefined);
    if (st?.isDirectory()) {
      file = join(file, 'index.html');
      st = await stat(file).catch(() => undefined);
    }
    if (!st || !st.isFile()) return send(404, 'not found');
    const type = TYPES[extname(file).toLowerCase()] ?? 'application/octet-stream';
    const common = { 'Content-Type': type, 'Accept-Ranges': 'bytes', 'Cache-Control': 'no-store', 'Last-Modified': st.mtime.toUTCString() };
    const range = parseRange(req.headers.range, st.size);
    if (range === 'unsatisfiable') return send(416, 'range not satisfiable', { 'Content-Range': `bytes */${st.size}` });
    const [start, end] = range ?? [0, st.size - 1];
    const length = st.size === 0 ? 0 : end - start + 1;
    entry.status = range ? 206 : 200;
    entry.bytes = req.method === 'HEAD' ? 0 : length;
    res.writeHead(entry.status, {
      ...common,
      'Content-Length': String(length),
      ...(range ? { 'Content-Range': `bytes ${start}-${end}/${st.size}` } : {}),
    });
    if (req.method === 'HEAD' || length === 0) return res.end();
    const stream = createReadStream(file, { start, end });
    stream.on('error', () => res.destroy());
    stream.pipe(res);
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((e) => {
      if (!res.headersSent) res.writeHead(500, { 'Content-Type': 'text/plain' });
      res.end(String(e));
    });
  });
  await new Promise<void>((res) => server.listen(port, '127.0.0.1', res));
  const { port: p } = server.address() as AddressInfo;
  return {
    url: `http://localhost:${p}`,
    server,
    log,
    close: () =>
      new Promise<void>((res) => {
        server.closeAllConnections?.();
        server.close(() => res());
      }),
  };
}
