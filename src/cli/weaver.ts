import type { Command } from 'commander';
import { ApiClient, CliError } from './client.js';
import { client, globals } from './context.js';
import { Progress, formatDuration, interactive, printJson, printTable } from './output.js';
import { resolveOrg } from './org.js';
import { attachTerminal, DETACH_KEYS } from './attach.js';
import { registerAuditCommand } from './audit.js';

export interface WeaverView {
  id: string;
  org_id: string;
  image: string;
  status: string;
  reason?: string;
  exit_code?: number;
  repo?: string;
  branch?: string;
  created_at: string;
  expires_at: string;
  lifetime_hours: number;
  tags: Record<string, string>;
}

const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
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
  const { weavers } = await api.get<{ weavers: WeaverView[] }>('/api/weavers');
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

export function registerWeaverCommands(program: Command): void {
  program
    .command('new')
    .description('create a weaver and attach to it')
    .option('--image <image>', 'image reference (default: the server\'s default image)')
    .option('--org <org>', 'organization: UUID, slug or name (default: your personal org)')
    .option('--repo <url>', 'https git repository to clone into /workspace/<repo-name>')
    .option('--branch <branch>', 'branch to check out (needs --repo)')
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', collect, [])
    .option('--ttl <hours>', 'lifetime in hours (at most the server maximum, 48 by default)')
    .option('--cpu <quantity>', 'CPU limit, e.g. 500m or 2')
    .option('--memory <quantity>', 'memory limit, e.g. 512Mi or 2Gi')
    .option('--tag <KEY=VALUE>', 'tag (repeatable)', collect, [])
    .option('-d, --detach', 'do not attach; print the id')
    .option('--json', 'output the weaver as JSON (implies --detach)')
    .argument('[command...]', 'argv to run instead of the image\'s default (after --)')
    .action(async (command: string[], opts: { image?: string; org?: string; repo?: string; branch?: string; env: string[]; ttl?: string; cpu?: string; memory?: string; tag: string[]; detach?: boolean }, cmd: Command) => {
      const g = globals(cmd);
      if (opts.branch && !opts.repo) throw new CliError('--branch needs --repo');
      if (opts.repo && !/^https:\/\//i.test(opts.repo)) throw new CliError(`--repo must be an https URL (got ${opts.repo})`);
      let ttl: number | undefined;
      if (opts.ttl !== undefined) {
        ttl = Number(opts.ttl);
        if (!/^\d+(\.\d+)?$/.test(opts.ttl) || !(ttl > 0)) throw new CliError(`--ttl must be a positive number of hours (got ${opts.ttl})`);
      }
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
        ...(Object.keys(env).length ? { env } : {}),
        ...(ttl !== undefined ? { lifetime_hours: ttl } : {}),
        ...(command.length ? { command } : {}),
        ...(opts.cpu || opts.memory ? { resources: { ...(opts.cpu ? { cpu: opts.cpu } : {}), ...(opts.memory ? { memory: opts.memory } : {}) } } : {}),
        ...(Object.keys(tags).length ? { tags } : {}),
      };
      const started = Date.now();
      let w = await api.post<WeaverView>('/api/weaver', body);
      const progress = new Progress(interactive(g.json));
      const spin = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
      let i = 0;
      while (w.status === 'pending') {
        progress.update(`${spin[i++ % spin.length]} Starting weaver ${w.id.slice(0, 8)} (${w.image})… ${((Date.now() - started) / 1000).toFixed(1)}s`);
        await sleep(150);
        w = await api.get<WeaverView>(`/api/weaver/${w.id}`);
      }
      if (w.status !== 'running') {
        progress.done();
        if (g.json) printJson(w);
        throw new CliError(`weaver ${w.id} ${w.status}${w.reason ? `: ${w.reason}` : ''}`);
      }
      progress.done(`✓ Weaver ${w.id} running (${((Date.now() - started) / 1000).toFixed(1)}s)`);
      if (g.json) return printJson(w);
      if (opts.detach) {
        process.stdout.write(`${w.id}\n`);
        return;
      }
      await attachAndExit(api, w.id);
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
    .command('ps')
    .alias('ls')
    .description('list weavers of your orgs')
    .option('--json', 'output JSON')
    .action(async (_o, cmd: Command) => {
      const { weavers } = await client(cmd).get<{ weavers: WeaverView[]; count: number }>('/api/weavers');
      if (globals(cmd).json) return printJson(weavers);
      const now = Date.now();
      printTable(
        ['ID', 'IMAGE', 'STATUS', 'AGE', 'TTL'],
        weavers.map((w) => [w.id, w.image, w.reason && w.status !== 'running' ? `${w.status} (${w.reason})` : w.status, formatDuration(now - Date.parse(w.created_at)), formatDuration(Date.parse(w.expires_at) - now)]),
      );
    });

  weaver
    .command('delete <id>')
    .alias('rm')
    .description('delete a weaver')
    .action(async (ref: string, _o, cmd: Command) => {
      const api = client(cmd);
      const id = await resolveWeaverId(api, ref);
      await api.delete(`/api/weaver/${id}`);
      process.stdout.write(`Deleted ${id}\n`);
    });

  weaver
    .command('logs <id>')
    .description('print a weaver\'s output')
    .option('-f, --follow', 'keep printing new output')
    .option('--tail <lines>', 'only the last N lines')
    .action(async (ref: string, opts: { follow?: boolean; tail?: string }, cmd: Command) => {
      if (opts.tail !== undefined && !/^\d+$/.test(opts.tail)) throw new CliError(`--tail must be a whole number (got ${opts.tail})`);
      const api = client(cmd);
      const id = await resolveWeaverId(api, ref);
      const q = new URLSearchParams({ follow: opts.follow ? 'true' : 'false', ...(opts.tail !== undefined ? { tail: opts.tail } : {}) });
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

