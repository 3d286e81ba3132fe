// `seedselect verify DIR`: run every golden case in DIR (the ../shared/golden layout) and compare every
// output, activation, loss and gradient with the reference, as max|err| <= tol * max|ref| per tensor.
// Prints one table row per check and a summary; exit code 1 when any check fails.
import type { Command } from 'commander';
import { writeFile } from 'node:fs/promises';
import { stat } from 'node:fs/promises';
import { UserError } from '../errors.js';
import { runGoldenFolder, isSkipped, type CaseCheck } from '../../models/golden.js';

interface VerifyOptions {
  filter?: string;
  json?: string;
  allowMissing?: boolean;
  quiet?: boolean;
}

const COLS = [
  { head: 'case', width: 22 },
  { head: 'tensor', width: 64 },
  { head: 'kind', width: 10 },
  { head: 'err/max|ref|', width: 12 },
  { head: 'tol', width: 8 },
  { head: 'result', width: 6 },
];

function fmtNum(x: number): string {
  if (Number.isNaN(x)) return '-';
  if (!Number.isFinite(x)) return 'inf';
  return x === 0 ? '0' : x.toExponential(2);
}

function row(cells: string[], note?: string): string {
  const line = cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(COLS[i].width))).join('  ');
  return note ? `${line}  ${note}` : line;
}

export function formatCheck(c: CaseCheck): string {
  const status = isSkipped(c) ? (c.ok ? 'SKIP' : 'FAIL') : c.ok ? 'PASS' : 'FAIL';
  return row([c.case, c.tensor, c.kind, fmtNum(c.err), fmtNum(c.tol), status], c.note);
}

export function summarize(checks: CaseCheck[]) {
  const cases = new Set(checks.map((c) => c.case));
  const skipped = checks.filter(isSkipped);
  const failed = checks.filter((c) => !c.ok);
  const passed = checks.filter((c) => c.ok && !isSkipped(c));
  const failedCases = [...new Set(failed.map((c) => c.case))];
  let worst: CaseCheck | null = null;
  for (const c of checks) if (c.ok && !isSkipped(c) && c.tol > 0 && (!worst || c.err / c.tol > worst.err / worst.tol)) worst = c;
  return { checks: checks.length, cases: cases.size, passed: passed.length, failed: failed.length, skipped: skipped.length, failedCases, worst };
}

export function register(program: Command): void {
  program
    .command('verify')
    .description('check the engine against golden reference cases (outputs, activations, losses, gradients)')
    .argument('<dir>', 'a golden folder (case folders with golden.json + golden.safetensors, models/, scheduler/)')
    .option('--filter <regex>', 'only cases whose name or path matches')
    .option('--json <file>', 'also write every check as JSON to this file')
    .option('--allow-missing', 'cases without a runner are skipped instead of failing')
    .option('--quiet', 'print only failed checks and the summary')
    .action(async (dir: string, opts: VerifyOptions) => {
      try {
        if (!(await stat(dir)).isDirectory()) throw new Error();
      } catch {
        throw new UserError(`${dir} is not a folder`);
      }
      let filter: RegExp | undefined;
      if (opts.filter !== undefined) {
        try {
          filter = new RegExp(opts.filter);
        } catch (e) {
          throw new UserError(`--filter: invalid regular expression: ${(e as Error).message}`);
        }
      }
      console.log(row(COLS.map((c) => c.head)));
      console.log(row(COLS.map((c) => '-'.repeat(c.head.length))));
      const t0 = performance.now();
      const checks = await runGoldenFolder(dir, {
        filter,
        allowMissing: !!opts.allowMissing,
        onCase: (_c, list) => {
          for (const c of list) if (!opts.quiet || !c.ok) console.log(formatCheck(c));
        },
      });
      const s = summarize(checks);
      const secs = ((performance.now() - t0) / 1000).toFixed(1);
      if (opts.json) {
        await writeFile(opts.json, JSON.stringify({ dir, filter: opts.filter ?? null, summary: { ...s, worst: s.worst ?? null }, checks }, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v), 2));
      }
      if (s.cases === 0) throw new UserError(`no golden cases found in ${dir}${opts.filter ? ` matching /${opts.filter}/` : ''}`);
      const worst = s.worst ? `; worst err/tol ${(s.worst.err / s.worst.tol).toFixed(3)} (${s.worst.case} ${s.worst.tensor})` : '';
      const plural = (n: number, w: string) => `${n} ${w}${n === 1 ? '' : 's'}`;
      console.log(
        `\nsummary: ${plural(s.cases, 'case')}, ${plural(s.checks, 'check')}: ${s.passed} passed, ${s.failed} failed, ${s.skipped} skipped in ${secs}s${worst}`,
      );
      if (s.failed) {
        const names = checks.filter((c) => !c.ok).slice(0, 5).map((c) => `${c.case}/${c.tensor}`);
        throw new UserError(`${s.failed} check(s) failed in ${s.failedCases.join(', ')}: ${names.join(', ')}${s.failed > 5 ? ', ...' : ''}`);
      }
      console.log(s.skipped ? `no check failed (${plural(s.skipped, 'case')} skipped: no runner)` : 'all checks passed');
    });
}
