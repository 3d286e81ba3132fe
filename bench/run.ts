// Benchmark runner: `npm run bench [-- --filter REGEX] [--shape REGEX] [--library REGEX] [--json FILE] [--iterations N] [--time MS] [--warmup N] [--list]`.
// Loads every suite in bench/suites/*.ts, times each case with tinybench (every iteration waits for the GPU),
// prints a table and optionally writes the rows as JSON. See bench/README.md.
import { readdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { cpus } from 'node:os';
import { Bench } from 'tinybench';
import { adapterName, init } from '../engine/index.js';
import { peerNotes, type BenchSuite, type Row } from './lib.js';

interface Args {
  filter: RegExp | null;
  shape: RegExp | null;
  library: RegExp | null;
  json: string | null;
  iterations: number;
  time: number;
  list: boolean;
  warmup: number;
  profile: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { filter: null, shape: null, library: null, json: null, iterations: 5, time: 200, list: false, warmup: 1, profile: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = () => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${k} needs a value`);
      return x;
    };
    if (k === '--filter') a.filter = new RegExp(v(), 'i');
    else if (k === '--shape') a.shape = new RegExp(v(), 'i');
    else if (k === '--library') a.library = new RegExp(v(), 'i');
    else if (k === '--json') a.json = v();
    else if (k === '--iterations') a.iterations = Math.max(1, Number(v()));
    else if (k === '--time') a.time = Math.max(0, Number(v()));
    else if (k === '--list') a.list = true;
    else if (k === '--warmup') a.warmup = Math.max(0, Number(v()));
    else if (k === '--profile') a.profile = true;
    else if (k === '--help' || k === '-h') {
      console.log('usage: npm run bench -- [--filter REGEX] [--shape REGEX] [--library REGEX] [--json FILE] [--iterations N] [--time MS] [--warmup N] [--list] [--profile]');
      process.exit(0);
    } else throw new Error(`unknown argument ${k} (try --help)`);
  }
  return a;
}

/** Peers find the GPU through navigator.gpu: share one Dawn instance with the engine and keep it alive. */
async function installNavigatorGpu() {
  const nav = (globalThis as { navigator?: { gpu?: GPU; userAgent?: string } }).navigator;
  if (nav?.gpu) return;
  if (!process.env.XDG_RUNTIME_DIR) process.env.XDG_RUNTIME_DIR = '/tmp';
  const mod = (await import('webgpu')) as unknown as { create: (flags: string[]) => GPU; globals: object };
  Object.assign(globalThis, mod.globals);
  const gpu = mod.create([]);
  // Dawn crashes if its instance is garbage-collected while devices live: keep it for the whole process
  (globalThis as Record<symbol, unknown>)[Symbol.for('bench.dawnGpu')] = gpu;
  Object.defineProperty(globalThis, 'navigator', {
    value: { ...(nav ?? {}), gpu, userAgent: nav?.userAgent ?? `Node.js/${process.versions.node}` },
    configurable: true,
    writable: true,
  });
}

async function loadSuites(): Promise<BenchSuite[]> {
  const dir = join(dirname(fileURLToPath(import.meta.url)), 'suites');
  const files = readdirSync(dir).filter((f) => f.endsWith('.ts')).sort();
  const suites: BenchSuite[] = [];
  for (const f of files) {
    const mod = (await import(pathToFileURL(join(dir, f)).href)) as { default?: BenchSuite; suite?: BenchSuite };
    const s = mod.default ?? mod.suite;
    if (!s) console.warn(`bench/suites/${f}: no default export, skipped`);
    else suites.push(s);
  }
  return suites;
}

const fmt = (x: number | null, d = 1) => (x === null ? '' : x >= 100 ? x.toFixed(0) : x.toFixed(d));

async function main() {
  const args = parseArgs(process.argv.slice(2));
  await installNavigatorGpu();
  const r = await init();
  console.log(`adapter: ${adapterName(r.gpu.adapterInfo)} (${r.gpu.adapterClass}), ${cpus().length} CPU cores`);
  const suites = await loadSuites();
  const rows: Row[] = [];
  const notes: string[] = [];
  for (const suite of suites) {
    for (const c of suite.cases) {
      const id = `${suite.name}/${c.name}`;
      if (args.filter && !args.filter.test(id)) continue;
      if (args.shape && !args.shape.test(c.shape)) continue;
      const library = c.library ?? 'ours';
      if (args.library && !args.library.test(library)) continue;
      if (args.list) {
        console.log(`${id}  [${c.shape}] ${c.pass} ${library}`);
        continue;
      }
      let fn: (() => Promise<void>) | null = null;
      try {
        fn = await c.setup();
      } catch (e) {
        notes.push(`${id} (${library}) setup failed: ${(e as Error).message.split('\n')[0]}`);
      }
      if (!fn) {
        await c.teardown?.();
        continue;
      }
      const f = fn;
      let measuring = false;
      let cpuUs = 0;
      let calls = 0;
      const bench = new Bench({ iterations: args.iterations, time: args.time, warmup: args.warmup > 0, warmupIterations: args.warmup, warmupTime: 0 });
      bench.add(
        id,
        async () => {
          const c0 = process.cpuUsage();
          await f();
          if (measuring) {
            const d = process.cpuUsage(c0);
            cpuUs += d.user + d.system;
            calls++;
          }
        },
        { beforeAll: (mode) => void (measuring = mode === 'run') },
      );
      try {
        await bench.run();
        const res = bench.tasks[0].result;
        if (res.state !== 'completed') throw (res as { error?: Error }).error ?? new Error(`task ${res.state}`);
        const ms = res.latency.p50;
        const row: Row = {
          suite: suite.name,
          name: c.name,
          shape: c.shape,
          library,
          pass: c.pass,
          median_ms: +ms.toFixed(3),
          gflops: c.flops ? +(c.flops / ms / 1e6).toFixed(2) : null,
          gbps: c.bytes ? +(c.bytes / ms / 1e6).toFixed(2) : null,
          cpu_ms: +(cpuUs / 1000 / Math.max(1, calls)).toFixed(3),
        };
        rows.push(row);
        if (args.profile && library === 'ours') {
          // one more call with every dispatch timed on the GPU: where the case's time goes, kernel by kernel
          r.startProfile();
          try {
            await f();
          } finally {
            row.profile = (await r.stopProfile()).map((k) => ({ ...k, ms: +k.ms.toFixed(3) }));
          }
        }
        console.log(
          `  ${id.padEnd(36)} ${library.padEnd(32)} ${c.pass.padEnd(7)} ${fmt(ms, 2).padStart(9)} ms` +
            (row.gflops !== null ? `  ${fmt(row.gflops)} GFLOP/s` : '') +
            (row.gbps !== null ? `  ${fmt(row.gbps)} GB/s` : '') +
            `  cpu ${fmt(row.cpu_ms, 2)} ms`,
        );
        for (const k of row.profile?.slice(0, 8) ?? []) console.log(`      ${k.name.padEnd(34)} ${String(k.calls).padStart(5)} calls ${fmt(k.ms, 2).padStart(9)} ms`);
      } catch (e) {
        notes.push(`${id} (${library}) failed: ${(e as Error).message.split('\n')[0]}`);
      } finally {
        await c.teardown?.();
        r.releasePool();
      }
    }
    if (suite.notes) notes.push(...suite.notes.map((n) => `${suite.name}: ${n}`));
  }
  if (args.list) return;
  const cores = cpus().length;
  console.table(
    rows.map((x) => ({
      case: `${x.suite}/${x.name}`,
      shape: x.shape,
      library: x.library,
      pass: x.pass,
      'median ms': fmt(x.median_ms, 2),
      'GFLOP/s': fmt(x.gflops),
      'GB/s': fmt(x.gbps),
      // throughput if the process had every core to itself (lavapipe's threads run the kernels)
      'GFLOP/s (cpu)': x.gflops !== null && x.cpu_ms > 0 ? fmt((x.gflops * x.median_ms) / (x.cpu_ms / cores)) : '',
      'GB/s (cpu)': x.gbps !== null && x.cpu_ms > 0 ? fmt((x.gbps * x.median_ms) / (x.cpu_ms / cores)) : '',
    })),
  );
  for (const n of [...peerNotes, ...notes]) console.log(`note: ${n}`);
  if (args.json) {
    writeFileSync(args.json, JSON.stringify(rows, null, 2) + '\n');
    console.log(`wrote ${rows.length} rows to ${args.json}`);
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
