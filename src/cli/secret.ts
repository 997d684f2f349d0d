/**
 * `loom secret …`: values go in (stdin or --from-file) and never come back out. A value is
 * never taken from argv: arguments are visible to every user in `ps` and stay in shell history.
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { CliError, type ApiClient } from './client.js';
import { client, globals } from './context.js';
import { printJson, printTable } from './output.js';
import { resolveOrg } from './org.js';
import { resolveWeaverId } from './weaver.js';

interface SecretView {
  id: string;
  org_id: string;
  scope: 'org' | 'repo' | 'weaver';
  name: string;
  repo?: string;
  weaver_id?: string;
  current_version: number;
  created_at: string;
  updated_at: string;
}

interface ScopeOpts {
  org?: string;
  repo?: string;
  weaver?: string;
}

const NAME_RE = /^[A-Z][A-Z0-9_]{0,127}$/;
const VALUE_HINT =
  'a secret value is never taken as an argument (it would show in `ps` and your shell history): pipe it on stdin, e.g. `printf %s "$TOKEN" | loom secret set NAME --org O`, or use --from-file PATH';

function checkName(name: string): void {
  if (name.includes('=')) throw new CliError(`give the name alone, not NAME=VALUE: ${VALUE_HINT}`);
  if (!NAME_RE.test(name)) throw new CliError(`invalid secret name ${JSON.stringify(name.slice(0, 140))}: upper-case letters, digits and _, starting with a letter, at most 128 characters`);
}

function scopeOptions(c: Command): Command {
  return c
    .option('--org <org>', 'org scope (UUID, slug or name); with --repo, the repo\'s org (default: your personal org)')
    .option('--repo <url>', 'repo scope: an https repository URL')
    .option('--weaver <id>', 'weaver scope: a weaver id (or unique prefix)');
}

/** The scope the flags name, as the API's target fields. */
async function target(cmd: Command, api: ApiClient, o: ScopeOpts, required: boolean): Promise<Record<string, string>> {
  if (o.weaver && (o.org || o.repo)) throw new CliError('--weaver takes no --org or --repo');
  if (o.weaver) return { scope: 'weaver', weaver_id: await resolveWeaverId(api, o.weaver) };
  if (o.repo) {
    if (!/^https:\/\//i.test(o.repo)) throw new CliError(`--repo must be an https URL (got ${o.repo})`);
    const org = o.org ? await resolveOrg(cmd, o.org) : (await api.get<{ orgs: { id: string; is_personal: boolean; role: string }[] }>('/api/orgs')).orgs.find((x) => x.is_personal && x.role === 'owner');
    if (!org) throw new CliError('no personal org: give --org');
    return { scope: 'repo', org_id: org.id, repo: o.repo };
  }
  if (o.org) return { scope: 'org', org_id: (await resolveOrg(cmd, o.org)).id };
  if (required) throw new CliError('give the scope: --org ORG, --repo URL [--org ORG] or --weaver ID');
  return {};
}

/** The value: --from-file as is, or stdin (one trailing newline dropped, as `echo` adds it). */
function readValue(fromFile: string | undefined): string {
  let buf: Buffer;
  if (fromFile) {
    try {
      buf = readFileSync(fromFile);
    } catch (e) {
      throw new CliError(`cannot read ${fromFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  } else {
    if (process.stdin.isTTY) throw new CliError(`no value on stdin: ${VALUE_HINT}`);
    buf = readFileSync(0);
    if (buf.at(-1) === 0x0a) buf = buf.subarray(0, buf.at(-2) === 0x0d ? -2 : -1);
  }
  if (buf.length === 0) throw new CliError('the secret value is empty');
  if (buf.length > 64 * 1024) throw new CliError(`the secret value is ${buf.length} bytes; at most 65536 (64 KiB)`);
  return buf.toString('base64');
}

async function findSecret(cmd: Command, api: ApiClient, name: string, o: ScopeOpts): Promise<SecretView> {
  checkName(name);
  const t = await target(cmd, api, o, true);
  const q = new URLSearchParams(t);
  const { secrets } = await api.get<{ secrets: SecretView[] }>(`/api/secrets?${q}`);
  const hit = secrets.find((s) => s.name === name && s.scope === t['scope']);
  if (!hit) throw new CliError(`secret ${name} not found at that scope (see \`loom secret ls\`)`);
  return hit;
}

const where = (s: SecretView): string => (s.scope === 'repo' ? s.repo! : s.scope === 'weaver' ? s.weaver_id! : s.org_id);

export function registerSecretCommands(program: Command): void {
  const secret = program.command('secret').description('secrets injected into weavers as files (values are write-only)');

  scopeOptions(
    secret
      .command('set')
      .description('store a secret (a new version when it exists); the value comes from stdin or --from-file')
      .argument('<NAME>', 'secret name: upper-case letters, digits and _')
      .argument('[value]', 'refused: never pass a value as an argument')
      .option('--from-file <path>', 'read the value from this file (exact bytes)')
      .option('--create', 'fail if the secret already exists'),
  ).action(async (name: string, value: string | undefined, opts: ScopeOpts & { fromFile?: string; create?: boolean }, cmd: Command) => {
    if (value !== undefined) throw new CliError(VALUE_HINT);
    checkName(name);
    const api = client(cmd);
    api.requireToken();
    const t = await target(cmd, api, opts, true);
    const s = await api.post<SecretView>('/api/secrets', { name, ...t, value_b64: readValue(opts.fromFile), ...(opts.create ? { create_only: true } : {}) });
    if (globals(cmd).json) return printJson(s);
    process.stdout.write(`${s.name} (${s.scope} ${where(s)}) version ${s.current_version}\n`);
  });

  scopeOptions(
    secret
      .command('rotate')
      .description('add a new version to an existing secret and make it current (running weavers see it at once)')
      .argument('<NAME>')
      .argument('[value]', 'refused: never pass a value as an argument')
      .option('--from-file <path>', 'read the value from this file (exact bytes)'),
  ).action(async (name: string, value: string | undefined, opts: ScopeOpts & { fromFile?: string }, cmd: Command) => {
    if (value !== undefined) throw new CliError(VALUE_HINT);
    const api = client(cmd);
    const s0 = await findSecret(cmd, api, name, opts);
    const s = await api.post<SecretView>(`/api/secrets/${s0.id}/rotate`, { value_b64: readValue(opts.fromFile) });
    if (globals(cmd).json) return printJson(s);
    process.stdout.write(`${s.name} (${s.scope} ${where(s)}) version ${s.current_version}\n`);
  });

  scopeOptions(secret.command('ls').alias('list').description('list secrets you can see (names and versions, never values)').option('--json', 'JSON output')).action(
    async (opts: ScopeOpts, cmd: Command) => {
      const api = client(cmd);
      const t = await target(cmd, api, opts, false);
      const q = new URLSearchParams(t);
      if (t['scope'] === 'org') q.delete('scope'); // --org alone: everything in the org
      const { secrets } = await api.get<{ secrets: SecretView[] }>(`/api/secrets${q.size ? `?${q}` : ''}`);
      if (globals(cmd).json) return printJson(secrets);
      printTable(['NAME', 'SCOPE', 'TARGET', 'VERSION', 'UPDATED'], secrets.map((s) => [s.name, s.scope, where(s), String(s.current_version), s.updated_at]));
    },
  );

  scopeOptions(secret.command('rm').alias('delete').description('delete a secret and all its versions').argument('<NAME>')).action(
    async (name: string, opts: ScopeOpts, cmd: Command) => {
      const api = client(cmd);
      const s = await findSecret(cmd, api, name, opts);
      await api.delete(`/api/secrets/${s.id}`);
      if (!globals(cmd).json) process.stdout.write(`deleted ${s.name} (${s.scope} ${where(s)})\n`);
    },
  );

  scopeOptions(secret.command('versions').description('list a secret\'s versions (never values)').argument('<NAME>').option('--json', 'JSON output')).action(
    async (name: string, opts: ScopeOpts, cmd: Command) => {
      const api = client(cmd);
      const s = await findSecret(cmd, api, name, opts);
      const { versions } = await api.get<{ versions: { version: number; current: boolean; size: number; created_by: string; created_at: string }[] }>(`/api/secrets/${s.id}/versions`);
      if (globals(cmd).json) return printJson(versions);
      printTable(['VERSION', 'CURRENT', 'BYTES', 'CREATED'], versions.map((v) => [String(v.version), v.current ? '*' : '', String(v.size), v.created_at]));
    },
  );

  secret
    .command('log')
    .description('who read which secret, and every refusal (org owners and admins)')
    .option('--org <org>', 'the org (UUID, slug or name); server admins may omit it for every org')
    .option('--limit <n>', 'newest entries to show', '200')
    .option('--json', 'JSON output')
    .action(async (opts: { org?: string; limit: string }, cmd: Command) => {
      if (!/^\d{1,5}$/.test(opts.limit)) throw new CliError(`--limit must be a whole number (got ${opts.limit})`);
      const api = client(cmd);
      const q = new URLSearchParams({ limit: opts.limit });
      if (opts.org) q.set('org_id', (await resolveOrg(cmd, opts.org)).id);
      const { entries } = await api.get<{ entries: { at: string; weaver_id: string | null; name: string | null; scope: string | null; version: number | null; outcome: string; purpose: string; reason: string | null }[] }>(`/api/secrets/log?${q}`);
      if (globals(cmd).json) return printJson(entries);
      printTable(
        ['AT', 'OUTCOME', 'WEAVER', 'NAME', 'SCOPE', 'VERSION', 'PURPOSE', 'REASON'],
        entries.map((e) => [e.at, e.outcome, e.weaver_id ?? '-', e.name ?? '-', e.scope ?? '-', e.version === null ? '-' : String(e.version), e.purpose, e.reason ?? '']),
      );
    });
}
