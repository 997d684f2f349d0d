import type { Command } from 'commander';
import { ApiClient, CliError } from './client.js';
import { client, globals } from './context.js';
import { Progress, formatDuration, interactive, printJson, printTable } from './output.js';
import { resolveOrg } from './org.js';
import { attachTerminal, DETACH_KEYS } from './attach.js';
import { reportOperation, type OperationView } from './branching.js';
import { registerAuditCommand } from './audit.js';
import type { Weaver } from '../client/index.js';

/** A weaver as the API returns it: the client library's type. */
export type WeaverView = Weaver;

const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
const ENDED = new Set(['succeeded', 'failed', 'terminating']);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const collect = (v: string, prev: string[]) => [...prev, v];

function parseKeyValues(items: string[], what: string, keyRe: RegExp): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of items) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw new CliError(`${what} ${JSON.stringify(item)} must be KEY=VALUE`);
    const k = item.slice(0, eq);
    if (!keyRe.test(k)) throw new CliError(`invalid ${what} key ${JSON.stringify(k)}: letters, digits and _, not starting with a digit`);
    out[k] = item.slice(eq + 1);
  }
  return out;
}

/** Accepts a full id or a unique prefix of one of the user's weavers. */
export async function resolveWeaverId(api: ApiClient, ref: string): Promise<string> {
  if (/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(ref)) return ref;
  const weavers = await api.listWeavers();
  const hits = weavers.filter((w) => w.id.startsWith(ref));
  if (hits.length === 1) return hits[0]!.id;
  if (hits.length > 1) throw new CliError(`weaver id prefix "${ref}" is ambiguous`);
  throw new CliError(`weaver "${ref}" not found`);
}

async function attachAndExit(api: ApiClient, id: string): Promise<void> {
  if (process.stdin.isTTY) process.stderr.write(`Attached to ${id}. Detach with Ctrl+P Ctrl+Q.\r\n`);
  const r = await attachTerminal(api, id);
  if (r.how === 'detach') {
    if (process.stdin.isTTY) process.stderr.write(`\r\nDetached; the weaver keeps running. Reattach with: loom attach ${id}\r\n`);
    return;
  }
  if (r.how === 'exit') {
    process.stderr.write(`\r\n[process exited with code ${r.exitCode ?? 'unknown'}]\r\n`);
    process.exitCode = r.exitCode ?? 1;
  }
}

function parseTtl(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const ttl = Number(v);
  if (!/^\d+(\.\d+)?$/.test(v) || !(ttl > 0)) throw new CliError(`--ttl must be a positive number of hours (got ${v})`);
  return ttl;
}

/** Waits (a spinner on a terminal) until the new weaver runs; then prints it, its id, or attaches. */
async function waitAndAttach(api: ApiClient, first: WeaverView, started: number, json: boolean, detach: boolean): Promise<void> {
  let w = first;
  const progress = new Progress(interactive(json));
  const spin = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
  let i = 0;
  while (w.status === 'pending') {
    progress.update(`${spin[i++ % spin.length]} Starting weaver ${w.id.slice(0, 8)} (${w.image})… ${((Date.now() - started) / 1000).toFixed(1)}s`);
    await sleep(50);
    w = await api.get<WeaverView>(`/api/weaver/${w.id}`);
  }
  if (w.status !== 'running') {
    progress.done();
    if (json) printJson(w);
    throw new CliError(`weaver ${w.id} ${w.status}${w.reason ? `: ${w.reason}` : ''}`);
  }
  progress.done(`✓ Weaver ${w.id} running (${((Date.now() - started) / 1000).toFixed(1)}s)`);
  if (json) return printJson(w);
  if (detach) {
    process.stdout.write(`${w.id}\n`);
    return;
  }
  await attachAndExit(api, w.id);
}

export function registerWeaverCommands(program: Command): void {
  program
    .command('new')
    .description('create a weaver and attach to it')
    .option('--image <image>', 'image reference (default: the server\'s default image)')
    .option('--org <org>', 'organization: UUID, slug or name (default: your personal org)')
    .option('--repo <url>', 'https git repository to clone into /workspace/<repo-name>')
    .option('--branch <branch>', 'branch to check out (needs --repo)')
    .option('--git-secret <NAME>', 'clone a private --repo with the token in this secret (default: a GIT_TOKEN set for the repo or the weaver)')
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', collect, [])
    .option('--ttl <hours>', 'lifetime in hours (at most the server maximum, 48 by default)')
    .option('--cpu <quantity>', 'CPU limit, e.g. 500m or 2')
    .option('--memory <quantity>', 'memory limit, e.g. 512Mi or 2Gi')
    .option('--tag <KEY=VALUE>', 'tag (repeatable)', collect, [])
    .option('--from-snapshot <snapshot>', 'start from a weaver snapshot (its image, env, command and files) instead of an image')
    .option('-d, --detach', 'do not attach; print the id')
    .option('--json', 'output the weaver as JSON (implies --detach)')
    .argument('[command...]', 'argv to run instead of the image\'s default (after --)')
    .action(async (command: string[], opts: { image?: string; org?: string; repo?: string; branch?: string; gitSecret?: string; env: string[]; ttl?: string; cpu?: string; memory?: string; tag: string[]; detach?: boolean; fromSnapshot?: string }, cmd: Command) => {
      const g = globals(cmd);
      if (opts.fromSnapshot && opts.image) throw new CliError('give either --image or --from-snapshot, not both');
      if (opts.fromSnapshot && opts.repo) throw new CliError('give either --repo or --from-snapshot, not both');
      if (opts.branch && !opts.repo) throw new CliError('--branch needs --repo');
      if (opts.gitSecret && !opts.repo) throw new CliError('--git-secret needs --repo');
      if (opts.repo && !/^https:\/\//i.test(opts.repo)) throw new CliError(`--repo must be an https URL (got ${opts.repo})`);
      const ttl = parseTtl(opts.ttl);
      const env = parseKeyValues(opts.env, 'env', ENV_KEY_RE);
      const tags = parseKeyValues(opts.tag, 'tag', /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/);
      const api = client(cmd);
      api.requireToken();
      const orgId = opts.org ? (await resolveOrg(cmd, opts.org)).id : undefined;
      const body = {
        ...(opts.image ? { image: opts.image } : {}),
        ...(orgId ? { org_id: orgId } : {}),
        ...(opts.repo ? { repo: opts.repo } : {}),
        ...(opts.branch ? { branch: opts.branch } : {}),
        ...(opts.gitSecret ? { git_secret: opts.gitSecret } : {}),
        ...(Object.keys(env).length ? { env } : {}),
        ...(ttl !== undefined ? { lifetime_hours: ttl } : {}),
        ...(command.length ? { command } : {}),
        ...(opts.cpu || opts.memory ? { resources: { ...(opts.cpu ? { cpu: opts.cpu } : {}), ...(opts.memory ? { memory: opts.memory } : {}) } } : {}),
        ...(Object.keys(tags).length ? { tags } : {}),
        ...(opts.fromSnapshot ? { from_snapshot: opts.fromSnapshot } : {}),
      };
      const started = Date.now();
      const w: WeaverView = await api.createWeaver(body);
      await waitAndAttach(api, w, started, g.json, !!opts.detach);
    });

  program
    .command('attach <id>')
    .description(`attach your terminal to a running weaver (detach: Ctrl+P Ctrl+Q; bytes ${DETACH_KEYS.toString('hex')})`)
    .action(async (ref: string, _o, cmd: Command) => {
      const api = client(cmd);
      await attachAndExit(api, await resolveWeaverId(api, ref));
    });

  const weaver = program.command('weaver').description('manage weavers');
  registerAuditCommand(weaver);

  weaver
    .command('snapshot <id>')
    .description("snapshot what a running weaver changed (a layer over its image); the weaver keeps running")
    .option('--app-consistent', 'freeze the weaver\'s processes while its layer is copied')
    .option('--ttl-seconds <n>', 'collect the snapshot after this many seconds (unless pinned or in use)')
    .option('--label <KEY=VALUE>', 'label (repeatable)', collect, [])
    .option('--no-wait', 'print the operation and return without waiting')
    .option('--json', 'output JSON')
    .action(async (ref: string, opts: { appConsistent?: boolean; ttlSeconds?: string; label: string[]; wait: boolean }, cmd: Command) => {
      const api = client(cmd);
      const id = await resolveWeaverId(api, ref);
      if (opts.ttlSeconds !== undefined && !/^[1-9]\d{0,9}$/.test(opts.ttlSeconds)) throw new CliError(`--ttl-seconds must be a positive whole number (got ${opts.ttlSeconds})`);
      const labels = parseKeyValues(opts.label, 'label', /^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$/);
      const op = await api.post<OperationView>(`/api/weaver/${id}/snapshot`, {
        ...(opts.appConsistent ? { consistency_mode: 'app-consistent' } : {}),
        ...(opts.ttlSeconds ? { ttl_seconds: Number(opts.ttlSeconds) } : {}),
        ...(Object.keys(labels).length ? { labels } : {}),
      });
      await reportOperation(api, cmd, op, opts.wait);
    });

  weaver
    .command('fork <id>')
    .description('fork a running weaver into a new weaver (its files as of now, image, env, command) and attach to it')
    .option('--ttl <hours>', 'lifetime of the fork in hours')
    .option('-e, --env <KEY=VALUE>', 'environment variable for the fork (repeatable; overrides the inherited one)', collect, [])
    .option('--tag <KEY=VALUE>', 'tag (repeatable)', collect, [])
    .option('-d, --detach', 'do not attach; print the id')
    .option('--json', 'output the fork as JSON (implies --detach)')
    .action(async (ref: string, opts: { ttl?: string; env: string[]; tag: string[]; detach?: boolean }, cmd: Command) => {
      const g = globals(cmd);
      const ttl = parseTtl(opts.ttl);
      const env = parseKeyValues(opts.env, 'env', ENV_KEY_RE);
      const tags = parseKeyValues(opts.tag, 'tag', /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/);
      const api = client(cmd);
      api.requireToken();
      const id = await resolveWeaverId(api, ref);
      const started = Date.now();
      const w = await api.post<WeaverView>(`/api/weaver/${id}/fork`, {
        ...(ttl !== undefined ? { lifetime_hours: ttl } : {}),
        ...(Object.keys(env).length ? { env } : {}),
        ...(Object.keys(tags).length ? { tags } : {}),
      });
      await waitAndAttach(api, w, started, g.json, !!opts.detach);
    });

  weaver
    .command('ps')
    .alias('ls')
    .description('list weavers of your orgs')
    .option('--json', 'output JSON')
    .action(async (_o, cmd: Command) => {
      const weavers: WeaverView[] = await client(cmd).listWeavers();
      if (globals(cmd).json) return printJson(weavers);
      const now = Date.now();
      printTable(
        ['ID', 'IMAGE', 'STATUS', 'AGE', 'TTL', 'PARENT'],
        // A weaver that already ended has no lifetime left to count down (its record stays until expiry).
        weavers.map((w) => [
          w.id,
          w.image,
          w.reason && w.status !== 'running' ? `${w.status} (${w.reason})` : w.status,
          formatDuration(now - Date.parse(w.created_at)),
          ENDED.has(w.status) ? '-' : formatDuration(Date.parse(w.expires_at) - now),
          w.parent_weaver_id ?? '-',
        ]),
      );
    });

  weaver
    .command('delete <id>')
    .alias('rm')
    .description('delete a weaver')
    .action(async (ref: string, _o, cmd: Command) => {
      const api = client(cmd);
      const id = await resolveWeaverId(api, ref);
      await api.deleteWeaver(id);
      process.stdout.write(`Deleted ${id}\n`);
    });

  weaver
    .command('logs <id>')
    .description('print a weaver\'s output')
    .option('-f, --follow', 'keep printing new output')
    .option('--tail <lines>', 'only the last N lines')
    .option('--plain', 'strip terminal escape sequences (colours, cursor moves, titles) and control characters')
    .action(async (ref: string, opts: { follow?: boolean; tail?: string; plain?: boolean }, cmd: Command) => {
      if (opts.tail !== undefined && !/^\d+$/.test(opts.tail)) throw new CliError(`--tail must be a whole number (got ${opts.tail})`);
      const api = client(cmd);
      const id = await resolveWeaverId(api, ref);
      const q = new URLSearchParams({ follow: opts.follow ? 'true' : 'false', ...(opts.tail !== undefined ? { tail: opts.tail } : {}), ...(opts.plain ? { plain: '1' } : {}) });
      const res = await api.raw('GET', `/api/weaver/${id}/logs?${q}`, { headers: { accept: 'text/event-stream' } });
      if (!res.ok || !res.body) throw await ApiClient.errorOf(res);
      const decoder = new TextDecoder();
      let buf = '';
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buf += decoder.decode(chunk, { stream: true });
        let sep: number;
        while ((sep = buf.indexOf('\n\n')) >= 0) {
          const event = buf.slice(0, sep);
          buf = buf.slice(sep + 2);
          const type = /^event: (.*)$/m.exec(event)?.[1] ?? 'message';
          const data = event
            .split('\n')
            .filter((l) => l.startsWith('data: '))
            .map((l) => l.slice(6))
            .join('\n');
          if (type === 'message') process.stdout.write(data + '\n');
          else if (type === 'error') throw new CliError((JSON.parse(data) as { message: string }).message);
        }
      }
    });
}

