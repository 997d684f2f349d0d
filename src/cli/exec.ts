/**
 * `loom exec` (run argv in a weaver: its exit code, stdout to stdout, stderr to stderr, stdin with
 * -i, a terminal with -t) and `loom cp` (files and directories both ways, progress on a terminal).
 * Both go through the package's LoomClient (src/client).
 */
import { spawn } from 'node:child_process';
import { createReadStream, createWriteStream, promises as fsp } from 'node:fs';
import { basename, join } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import { LoomApiError, NotFoundError } from '../client/index.js';
import { CliError, type ApiClient } from './client.js';
import { client, globals } from './context.js';
import { Progress, interactive } from './output.js';
import { resolveWeaverId } from './weaver.js';

const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
const collect = (v: string, prev: string[]) => [...prev, v];

function parseEnv(items: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of items) {
    const eq = item.indexOf('=');
    if (eq <= 0 || !ENV_KEY_RE.test(item.slice(0, eq))) throw new CliError(`-e ${JSON.stringify(item)} must be KEY=VALUE with a KEY of letters, digits and _`, 2);
    out[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return out;
}

/** Turns the library's error for a command that could not start into the CLI's (docker's codes: 127 not found, 126 otherwise). */
function execError(e: unknown): never {
  if (e instanceof LoomApiError && e.details && typeof e.details['exit_code'] === 'number') throw new CliError(e.message, e.details['exit_code']);
  throw e;
}

async function runExec(api: ApiClient, id: string, argv: string[], o: { interactive?: boolean; tty?: boolean; env: string[]; workdir?: string }): Promise<number> {
  const env = parseEnv(o.env);
  if (o.workdir !== undefined && !o.workdir.startsWith('/')) throw new CliError('-w must be an absolute path inside the weaver', 2);
  const out = process.stdout;
  const tty = !!o.tty;
  const session = await api.execStream(id, argv, {
    tty,
    stdin: !!o.interactive,
    ...(Object.keys(env).length ? { env } : {}),
    ...(o.workdir ? { cwd: o.workdir } : {}),
    ...(tty && out.isTTY ? { cols: out.columns, rows: out.rows } : {}),
  });
  const stdin = process.stdin;
  const raw = tty && stdin.isTTY;
  const onResize = () => session.resize(out.columns, out.rows);
  const onSigint = () => session.close();
  if (raw) stdin.setRawMode(true);
  if (tty && out.isTTY) out.on('resize', onResize);
  if (!raw) process.on('SIGINT', onSigint);
  if (o.interactive) {
    stdin.on('data', (b: Buffer) => {
      if (!session.write(b)) {
        stdin.pause();
        void session.drained().then(() => stdin.resume());
      }
    });
    stdin.on('end', () => session.end());
  }
  const outDone = pipeline(session.stdout, out, { end: false }).catch(() => undefined);
  const errDone = pipeline(session.stderr, process.stderr, { end: false }).catch(() => undefined);
  try {
    const code = await session.exit.catch(execError);
    await Promise.all([outDone, errDone]);
    return code;
  } finally {
    if (raw) stdin.setRawMode(false);
    out.off('resize', onResize);
    process.off('SIGINT', onSigint);
    stdin.pause();
    stdin.destroy();
  }
}

// ------------------------------------------------------------------ cp

interface Remote {
  weaver: string;
  path: string;
}

/** `<weaver>:/abs/path` (a weaver id or id prefix); anything else is a local path. */
export function parseRemote(s: string): Remote | null {
  const m = /^([A-Za-z0-9][A-Za-z0-9-]*):(\/.*)$/.exec(s);
  return m ? { weaver: m[1]!, path: m[2]! } : null;
}

const human = (n: number) => (n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(1)} GiB` : n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);

/** Counts bytes through a stream and draws a progress line (only on a terminal). */
function meter(label: string, total: number | undefined, enabled: boolean): { through: Transform; done(): number } {
  const progress = new Progress(enabled);
  const started = Date.now();
  let n = 0;
  let lastDraw = 0;
  const draw = () => {
    const secs = Math.max(0.001, (Date.now() - started) / 1000);
    const pct = total ? ` ${((n / total) * 100).toFixed(0).padStart(3)}%` : '';
    progress.update(`${label}${pct} ${human(n)}${total ? ` / ${human(total)}` : ''}  ${human(n / secs)}/s`);
  };
  const through = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      n += chunk.length;
      if (Date.now() - lastDraw > 100) {
        lastDraw = Date.now();
        draw();
      }
      cb(null, chunk);
    },
  });
  return {
    through,
    done() {
      draw();
      progress.done(`${label} ${human(n)} in ${((Date.now() - started) / 1000).toFixed(1)}s`);
      return n;
    },
  };
}

/** Runs the local `tar` with `args`; the returned stream is its stdin or stdout. */
function localTar(args: string[], mode: 'read' | 'write'): { stream: Readable | NodeJS.WritableStream; done: Promise<void> } {
  const child = spawn('tar', args, { stdio: mode === 'read' ? ['ignore', 'pipe', 'pipe'] : ['pipe', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString('utf8')));
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', (e) => reject(new CliError(`cannot run tar: ${e.message}`)));
    child.on('close', (code) => (code === 0 ? resolve() : reject(new CliError(`tar failed: ${err.trim() || `exit ${code}`}`))));
  });
  return { stream: mode === 'read' ? child.stdout! : child.stdin!, done };
}

async function localStat(p: string) {
  return fsp.stat(p).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw new CliError(`${p}: ${e.message}`);
  });
}

async function download(api: ApiClient, from: Remote, to: string, showProgress: boolean): Promise<void> {
  const id = await resolveWeaverId(api, from.weaver);
  const d = await api.download(id, from.path);
  const m = meter(`${from.path} →`, d.size, showProgress);
  const existing = await localStat(to);
  if (d.type === 'file') {
    const target = existing?.isDirectory() ? join(to, basename(from.path)) : to;
    await pipeline(d.body, m.through, createWriteStream(target, { mode: d.mode ? parseInt(d.mode, 8) & 0o777 : 0o644 }));
  } else {
    // docker cp: into an existing directory as <dir>/<name>, else as the new directory itself.
    const target = existing?.isDirectory() ? join(to, basename(from.path) || 'root') : to;
    if (existing && !existing.isDirectory()) throw new CliError(`${to} exists and is not a directory`);
    await fsp.mkdir(target, { recursive: true });
    const tar = localTar(['-x', '-f', '-', '-C', target, '--no-same-owner'], 'write');
    await Promise.all([pipeline(d.body, m.through, tar.stream as NodeJS.WritableStream), tar.done]);
  }
  m.done();
}

async function upload(api: ApiClient, from: string, to: Remote, showProgress: boolean): Promise<void> {
  const id = await resolveWeaverId(api, to.weaver);
  const st = await localStat(from);
  if (!st) throw new CliError(`${from}: no such file or directory`);
  let remote: { type: string } | null = null;
  try {
    remote = await api.stat(id, to.path);
  } catch (e) {
    if (!(e instanceof NotFoundError || (e instanceof CliError && e.status === 404))) throw e;
  }
  const target = remote?.type === 'directory' ? `${to.path.replace(/\/+$/, '')}/${basename(from)}` : to.path;
  if (st.isDirectory()) {
    const tar = localTar(['-c', '-f', '-', '-C', from, '.'], 'read');
    const m = meter(`→ ${target}`, undefined, showProgress);
    const body = (tar.stream as Readable).pipe(m.through);
    await Promise.all([api.uploadTar(id, target, body), tar.done]);
    m.done();
  } else if (st.isFile()) {
    const m = meter(`→ ${target}`, st.size, showProgress);
    await api.writeFile(id, target, createReadStream(from).pipe(m.through), { mode: (st.mode & 0o777).toString(8).padStart(3, '0') });
    m.done();
  } else throw new CliError(`${from} is not a regular file or directory`);
}

export function registerExecCommands(program: Command): void {
  program
    .command('exec')
    .description('run a command in a running weaver and exit with its exit code (argv after --, never a shell string)')
    .option('-i, --interactive', 'forward stdin to the command')
    .option('-t, --tty', 'give the command a terminal (raw mode, resize follows yours)')
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', collect, [])
    .option('-w, --workdir <dir>', 'working directory inside the weaver (absolute)')
    .argument('<weaver>', 'weaver id or unique id prefix')
    .argument('<command...>', 'argv to run (after --)')
    .action(async (ref: string, argv: string[], o: { interactive?: boolean; tty?: boolean; env: string[]; workdir?: string }, cmd: Command) => {
      const api = client(cmd);
      api.requireToken();
      const code = await runExec(api, await resolveWeaverId(api, ref), argv, o);
      process.exitCode = code;
    });

  program
    .command('cp')
    .description('copy files or directories between this machine and a weaver: loom cp <weaver>:PATH LOCAL | loom cp LOCAL <weaver>:PATH')
    .argument('<src>')
    .argument('<dst>')
    .action(async (src: string, dst: string, _o, cmd: Command) => {
      const api = client(cmd);
      api.requireToken();
      const rs = parseRemote(src);
      const rd = parseRemote(dst);
      if ((rs && rd) || (!rs && !rd)) throw new CliError('exactly one of <src> and <dst> must be <weaver>:/absolute/path', 2);
      const show = interactive(globals(cmd).json);
      if (rs) await download(api, rs, dst, show);
      else await upload(api, src, rd!, show);
    });
}
