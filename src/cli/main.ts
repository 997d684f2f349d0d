#!/usr/bin/env node
import { Command, CommanderError } from 'commander';
import { CliError } from './client.js';
import { DEFAULT_SERVER_URL } from './context.js';
import { registerAuthCommands } from './auth.js';
import { registerOrgCommands } from './org.js';
import { registerWeaverCommands } from './weaver.js';
import { registerImageCommands } from './image.js';
import { registerBranchingCommands } from './branching.js';
import { registerExecCommands } from './exec.js';

// `loom weaver ps | head -1`: the reader went away; there is nobody left to tell, so exit quietly.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    throw e;
  });
}
import { registerSecretCommands } from './secret.js';
import { registerRunCommands } from './run.js';
import { registerWgCommands } from './wg.js';

const program = new Command('loom')
  .description('Loom: disposable development environments (weavers) and near-instant state branching')
  .option('--server-url <url>', `server URL (env LOOM_SERVER_URL, default ${DEFAULT_SERVER_URL})`)
  .option('--json', 'machine-readable output')
  .exitOverride()
  .configureOutput({ writeErr: (s) => process.stderr.write(s) });

registerAuthCommands(program);
registerOrgCommands(program);
registerWeaverCommands(program);
registerImageCommands(program);
registerBranchingCommands(program);
registerExecCommands(program);
registerSecretCommands(program);
registerRunCommands(program);
registerWgCommands(program);

function fail(message: string, code = 1): never {
  process.stderr.write(`loom: ${message}\n`);
  process.exit(code);
}

program.parseAsync(process.argv).catch((e: unknown) => {
  if (e instanceof CommanderError) process.exit(e.exitCode === 0 ? 0 : 2);
  if (e instanceof CliError) fail(e.message, e.exitCode);
  if (process.env['LOOM_DEBUG']) console.error(e);
  fail(e instanceof Error ? e.message : String(e));
});
