#!/usr/bin/env node
// Makes a fresh machine ready: installs the Node dependencies when they are missing, and Mesa's lavapipe
// (a CPU Vulkan driver, from Debian bookworm-backports) when no WebGPU adapter is found. Without root it
// prints the exact commands and exits non-zero. Runs before `npm test`, `npm run demo` and `npm run bench`.
import { existsSync, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
process.env.XDG_RUNTIME_DIR ||= '/tmp';
const log = (m) => process.stderr.write(`[setup] ${m}\n`);

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: process.env, ...opts });
  return r.status ?? 1;
}

// 1. Node dependencies
const marker = join(root, 'node_modules', '.package-lock.json');
const lock = join(root, 'package-lock.json');
if (!existsSync(marker) || (existsSync(lock) && statSync(lock).mtimeMs > statSync(marker).mtimeMs + 1000)) {
  log('installing Node dependencies (npm ci)');
  if (run('npm', ['ci', '--no-audit', '--no-fund']) !== 0) {
    log('npm ci failed');
    process.exit(1);
  }
}

// 2. A WebGPU adapter (checked in a child process: a missing driver can abort the process)
const probe = `import('webgpu').then(async ({ create, globals }) => {
  Object.assign(globalThis, globals);
  const gpu = create([]);
  const a = await gpu.requestAdapter();
  process.stdout.write(a ? 'ok' : 'none');
  process.exit(0);
}).catch((e) => { process.stdout.write('error ' + e.message); process.exit(0); });`;
function hasAdapter() {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', probe], { cwd: root, encoding: 'utf8', env: process.env, timeout: 60000 });
  return (r.stdout ?? '').startsWith('ok');
}
if (!hasAdapter()) {
  log('no WebGPU adapter found; installing Mesa lavapipe (CPU Vulkan) from bookworm-backports');
  if (run('bash', [join(root, 'scripts', 'setup-lavapipe.sh')]) !== 0) process.exit(1);
  if (!hasAdapter()) {
    log('still no WebGPU adapter after installing lavapipe; check `vulkaninfo --summary` (package vulkan-tools)');
    process.exit(1);
  }
}
