#!/usr/bin/env -S npx tsx
// The `seedselect` command: a thin shell over the library. Each subcommand lives in cli/commands/<name>.ts
// and exports `register(program)`. Exit codes: 0 done, 1 user error, 2 internal error.
import { Command } from 'commander';
import { UserError } from './errors.js';

const program = new Command();
program.name('seedselect').description('SeedSelect on WebGPU: rare-concept images from a few references').showHelpAfterError();

const commands = ['demo', 'inspect', 'make-model', 'verify', 'generate', 'txt2img', 'augment', 'train-tiny', 'experiment'];
for (const name of commands) {
  let mod: { register?: (p: Command) => void };
  try {
    mod = await import(`./commands/${name}.js`);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ERR_MODULE_NOT_FOUND' && String((e as Error).message).includes(`commands/${name}`)) continue;
    throw e;
  }
  mod.register?.(program);
}

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof UserError || (e as { userError?: boolean }).userError) {
    console.error(`error: ${(e as Error).message}`);
    process.exit(1);
  }
  console.error(e);
  process.exit(2);
}
