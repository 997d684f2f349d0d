#!/usr/bin/env node
import { Command, CommanderError } from 'commander';
import { readFileSync } from 'node:fs';
import { ConfigError, loadConfig } from './config/load.js';
import { createLogger } from '../common/log.js';
import { isLoomError, errorMessage } from '../common/errors.js';
import { openCore, startServer } from './server.js';

function fail(message: string): never {
  process.stderr.write(`loom-server: ${message}\n`);
  process.exit(1);
}

function config() {
  try {
    return loadConfig();
  } catch (e) {
    if (e instanceof ConfigError) fail(e.message);
    throw e;
  }
}

async function serve(): Promise<void> {
  const cfg = config();
  const log = createLogger(cfg.logLevel);
  const server = await startServer(cfg, log);
  const shutdown = (sig: string) => {
    log.info({ signal: sig }, 'signal received');
    server.stop().then(
      () => process.exit(0),
      (e) => {
        log.error({ err: e }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
}

/** Headless administration on the data dir itself: works without a running server. */
async function withCore<T>(fn: (core: ReturnType<typeof openCore>) => Promise<T>): Promise<T> {
  const cfg = config();
  // Admin commands print only their result on stdout; logs go to stderr.
  const core = openCore(cfg, createLogger('warn', process.stderr));
  try {
    return await fn(core);
  } finally {
    core.close();
  }
}

const program = new Command('loom-server')
  .description('Loom server: weavers, branching, users and orgs over HTTP + WebSocket. Configured by LOOM_* environment variables.')
  .showHelpAfterError(false)
  .exitOverride();

program
  .command('serve', { isDefault: true })
  .description('run the server (the default)')
  .action(serve);

const admin = program.command('admin').description('administer the data dir (LOOM_DATA_DIR) directly');

admin
  .command('token')
  .description('print a new API token for a user, creating the user if needed')
  .requiredOption('--user <name>', 'username')
  .option('--admin', 'make the user a server admin')
  .option('--name <label>', 'label for the token', 'admin token')
  .action(async (opts: { user: string; admin?: boolean; name: string }) => {
    await withCore(async ({ ctx }) => {
      let user = ctx.users.byUsername(opts.user);
      if (!user) {
        user = await ctx.users.create(opts.user, { isAdmin: !!opts.admin });
        process.stderr.write(`created user ${user.username}${opts.admin ? ' (admin)' : ''} with personal org\n`);
      } else if (opts.admin && !user.is_admin) {
        ctx.users.setAdmin(user.id, true);
      }
      const { token } = ctx.tokens.issue(user.id, 'api', opts.name);
      process.stdout.write(`${token}\n`);
    });
  });

admin
  .command('passwd')
  .description('set a user\'s password (read from stdin), creating the user if needed')
  .requiredOption('--user <name>', 'username')
  .option('--admin', 'make the user a server admin')
  .action(async (opts: { user: string; admin?: boolean }) => {
    const password = readFileSync(0, 'utf8').replace(/\r?\n$/, '');
    await withCore(async ({ ctx }) => {
      let user = ctx.users.byUsername(opts.user);
      if (!user) user = await ctx.users.create(opts.user, { password, isAdmin: !!opts.admin });
      else await ctx.users.setPassword(user.id, password);
      if (opts.admin) ctx.users.setAdmin(user.id, true);
      process.stderr.write(`password set for ${user.username}\n`);
    });
  });

admin
  .command('rotate-master-key')
  .description('re-wrap every secret\'s data key under a new master key (LOOM_SECRETS_MASTER_KEY_FILE); stop loom-server first')
  .action(async () => {
    const cfg = config();
    const log = createLogger('warn', process.stderr);
    const { secretsMigrations } = await import('../secrets/migrations.js');
    const { Keyring } = await import('../secrets/keyring.js');
    const core = openCore(cfg, log, [{ name: 'secrets', migrations: secretsMigrations }]);
    try {
      const r = Keyring.rotate(core.ctx.db, cfg.secrets.masterKeyFile, log);
      process.stderr.write(`master key rotated to version ${r.version}; ${r.rewrapped} data key(s) re-wrapped. Back up ${cfg.secrets.masterKeyFile} now: the previous key no longer opens anything\n`);
    } finally {
      core.close();
    }
  });

admin
  .command('build-image')
  .description('build an image from Debian packages into the local image store (default: the dev image loom/dev:bookworm); skipped when the store has it')
  .option('--name <ref>', 'image name')
  .option('--packages <list>', 'comma-separated Debian packages (with --name)')
  .option('--suite <suite>', 'Debian suite', 'bookworm')
  .option('--force', 'build even when the store has the image')
  .action(async (opts: { name?: string; packages?: string; suite: string; force?: boolean }) => {
    const cfg = config();
    const log = createLogger('warn', process.stderr);
    const { sharedImageStore } = await import('../provisioners/local/images.js');
    const { ImageBuilder, DEV_IMAGE_REQUEST } = await import('../images/builder.js');
    const { join } = await import('node:path');
    if (opts.name && !opts.packages) fail('--name needs --packages');
    const req = opts.name ? { name: opts.name, suite: opts.suite, packages: opts.packages!.split(',').map((p) => p.trim()).filter(Boolean) } : DEV_IMAGE_REQUEST;
    const store = sharedImageStore(cfg.dataDir, log);
    const builder = new ImageBuilder(store, join(cfg.dataDir, 'local', 'tmp'), cfg.images);
    const checked = builder.check(req);
    const have = await store.get(checked.name);
    if (have && !opts.force) {
      process.stderr.write(`image ${checked.name} is already in the store (${have.digest}); not rebuilt\n`);
      process.stdout.write(`${have.digest}\n`);
      return;
    }
    const t0 = Date.now();
    const tty = process.stderr.isTTY === true;
    let lastPhase = '';
    const img = await builder.build(checked, (p) => {
      if (tty) process.stderr.write(`\r\x1b[2K${checked.name} (${Math.round((Date.now() - t0) / 1000)} s): ${(p.line ?? p.phase).slice(0, 100)}`);
      else if (!p.line && p.phase !== lastPhase) process.stderr.write(`${p.phase}\n`);
      if (!p.line) lastPhase = p.phase;
    });
    if (tty) process.stderr.write('\r\x1b[2K');
    process.stderr.write(`built ${img.name} in ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
    process.stdout.write(`${img.digest}\n`);
  });

program.parseAsync(process.argv).catch((e: unknown) => {
  if (e instanceof CommanderError) process.exit(e.exitCode);
  if (e instanceof ConfigError) fail(e.message);
  if (isLoomError(e)) fail(e.message);
  fail(errorMessage(e));
});
