// `seedselect inspect PATH`: list a weight file's or model folder's tensors and check them against
// the config. Exit code 1 when the path is unusable or anything disagrees with the config.
import type { Command } from 'commander';
import { UserError } from '../errors.js';
import { WeightsError } from '../../weights-tools/errors.js';
import { inspectPath, formatInspectReport } from '../../weights-tools/inspect.js';

export function register(program: Command): void {
  program
    .command('inspect')
    .description('show the tensors of a safetensors file or model/pipeline folder and check them against its config')
    .argument('<path>', 'a .safetensors file, a model folder (config.json + weights) or a diffusers pipeline folder')
    .option('--summary', 'totals and checks only, no per-tensor lines')
    .option('--json', 'print the report as JSON')
    .action(async (path: string, opts: { summary?: boolean; json?: boolean }) => {
      let report;
      try {
        report = await inspectPath(path);
      } catch (e) {
        if (e instanceof WeightsError) throw new UserError(e.message);
        throw e;
      }
      console.log(opts.json ? JSON.stringify(report, null, 2) : formatInspectReport(report, { tensors: !opts.summary }));
      if (report.problems.length) throw new UserError(`${path}: ${report.problems.length} problem(s) found`);
    });
}
