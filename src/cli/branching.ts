/**
 * Branching commands: `loom snapshot`, `fork`, `clone`, `op`, `snapshot ls|show|lineage|pin|unpin|rm`
 * and `container ls|show|create|kill|resume|rm`. Mutations print the operation; `--wait` follows it
 * (a progress bar on a terminal, quiet when piped) and exits non-zero when it does not succeed.
 */
import { Command, Option } from 'commander';
import { createReadStream, statSync } from 'node:fs';
import { Readable } from 'node:stream';
import { CliError, type ApiClient } from './client.js';
import type { Container, CreateContainerRequest, ForkRequest, Operation, Snapshot } from '../client/index.js';
import { client, globals } from './context.js';
import { Progress, interactive, printJson, printTable, progressBar } from './output.js';

/** The operation object of the API (src/branching/store.ts) with its status URL. */
export type OperationView = Operation & { status_url?: string };

type ContainerView = Container;

type SnapshotView = Snapshot;

interface LineageView {
  snapshot_id: string;
  lineage: { snapshot_id: string; parent_snapshot_id: string | null; container_id: string; created_at: string; depth: number }[];
  /** Weavers started from the snapshot (weaver snapshots). */
  weavers?: { id: string; status: string; created_at: string }[];
}

const FINAL = new Set(['succeeded', 'failed', 'cancelled', 'timed_out']);
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const collect = (v: string, prev: string[]) => [...prev, v];
const short = (id: string | undefined) => (id ? id.slice(0, 8) : '-');
const enc = encodeURIComponent;

/** A container by id, unique id prefix or name; else a local weaver by id or prefix; else as given. */
async function resolveTarget(api: ApiClient, ref: string, weavers = true): Promise<string> {
  if (UUID_RE.test(ref)) return ref;
  const containers: ContainerView[] = await api.listContainers();
  const byName = containers.filter((c) => c.name === ref);
  if (byName.length === 1) return byName[0]!.id;
  if (byName.length > 1) throw new CliError(`container name "${ref}" is ambiguous; use its id`);
  const hits = containers.filter((c) => c.id.startsWith(ref));
  if (hits.length === 1) return hits[0]!.id;
  if (hits.length > 1) throw new CliError(`container id prefix "${ref}" is ambiguous`);
  if (weavers) {
    const ws = await api.listWeavers().catch(() => [] as { id: string }[]);
    const wh = ws.filter((w) => w.id.startsWith(ref));
    if (wh.length === 1) return wh[0]!.id;
  }
  throw new CliError(`container "${ref}" not found`);
}

async function resolveSnapshot(api: ApiClient, ref: string): Promise<string> {
  if (UUID_RE.test(ref)) return ref;
  const snapshots: SnapshotView[] = await api.listSnapshots();
  const hits = snapshots.filter((s) => s.snapshot_id.startsWith(ref));
  if (hits.length === 1) return hits[0]!.snapshot_id;
  if (hits.length > 1) throw new CliError(`snapshot id prefix "${ref}" is ambiguous`);
  throw new CliError(`snapshot "${ref}" not found`);
}

function parseLabels(items: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of items) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw new CliError(`label ${JSON.stringify(item)} must be KEY=VALUE`);
    out[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return out;
}

function positiveInt(v: string, what: string): number {
  if (!/^[0-9]+$/.test(v) || Number(v) < 1) throw new CliError(`${what} must be a positive whole number of seconds`);
  return Number(v);
}

/** Follows an operation until it is final (long-polling), with a progress bar on a terminal. */
export async function waitOperation(api: ApiClient, id: string, json: boolean): Promise<OperationView> {
  const progress = new Progress(interactive(json));
  let op: OperationView = await api.getOperation(id);
  while (!FINAL.has(op.status)) {
    progress.update(`${op.operation_type} ${short(op.operation_id)} ${op.status.padEnd(8)} ${progressBar(op.progress_pct)}`);
    op = await api.getOperation(id, 0.5);
  }
  progress.done();
  return op;
}

function describe(op: OperationView): string {
  const parts = [`operation ${op.operation_id} ${op.operation_type}: ${op.status}`];
  if (op.snapshot_id) parts.push(`snapshot ${op.snapshot_id}`);
  if (op.result_container_id) parts.push(`container ${op.result_container_id}`);
  else if (op.container_id && op.operation_type.startsWith('container')) parts.push(`container ${op.container_id}`);
  return parts.join('\n  ');
}

/** Prints an accepted or finished operation; with wait, follows it and fails unless it succeeded. */
export async function reportOperation(api: ApiClient, cmd: Command, accepted: OperationView, wait: boolean): Promise<void> {
  return report(api, cmd, accepted, wait);
}

async function report(api: ApiClient, cmd: Command, accepted: OperationView, wait: boolean): Promise<void> {
  const g = globals(cmd);
  const op = wait ? await waitOperation(api, accepted.operation_id, g.json) : accepted;
  if (g.json) printJson(op);
  else {
    process.stdout.write(describe(op) + '\n');
    for (const w of op.warnings) process.stderr.write(`warning: ${w}\n`);
    if (wait) for (const d of op.capability_downgrades) process.stderr.write(`capability downgrade: ${d}\n`);
    if (!wait) process.stderr.write(`follow with: loom op ${op.operation_id} --wait\n`);
  }
  if (wait && op.status !== 'succeeded') {
    throw new CliError(`${op.operation_type} ${op.status}${op.reason_code ? ` (${op.reason_code})` : ''}: ${op.reason_message ?? 'no reason given'}`, 1, op.reason_code);
  }
}

const resumeOption = () => new Option('--resume <policy>', 'start the new container now or later (loom container resume)').choices(['manual', 'immediate']).default('manual');
const consistencyOption = () => new Option('--consistency <mode>', 'crash-consistent copies while running; app-consistent freezes the processes during the copy').choices(['crash-consistent', 'app-consistent']).default('crash-consistent');

export function registerBranchingCommands(program: Command): void {
  // ---------------------------------------------------------------- snapshot
  interface SnapOpts { consistency: string; ttl?: string; label: string[]; idempotencyKey?: string; wait?: boolean }
  const takeSnapshot = async (target: string, o: SnapOpts, cmd: Command) => {
    const api = client(cmd);
    const id = await resolveTarget(api, target);
    const body: Record<string, unknown> = { consistency_mode: o.consistency };
    if (o.ttl !== undefined) body.ttl_seconds = positiveInt(o.ttl, '--ttl');
    if (o.label.length) body.labels = parseLabels(o.label);
    if (o.idempotencyKey) body.idempotency_key = o.idempotencyKey;
    await report(api, cmd, await api.snapshot(id, body), !!o.wait);
  };
  const snapOptions = (c: Command) =>
    c
      .addOption(consistencyOption())
      .option('--ttl <seconds>', 'expire (garbage-collect) the snapshot after this many seconds unless pinned')
      .option('--label <KEY=VALUE>', 'label (repeatable)', collect, [])
      .option('--idempotency-key <key>', 'repeat-safe: the same key and request give the same operation')
      .option('--wait', 'wait for the snapshot to be ready');

  const snapshot = snapOptions(
    program
      .command('snapshot')
      .description('snapshot a container or local weaver: loom snapshot <target>; manage snapshots: loom snapshot ls|show|lineage|pin|unpin|rm')
      .argument('[target]', 'container (id, prefix or name) or local weaver id')
      .option('--json', 'output JSON'),
  ).action(async (target: string | undefined, o: SnapOpts, cmd: Command) => {
    if (!target) {
      cmd.outputHelp();
      throw new CliError('missing target: loom snapshot <container-or-weaver>', 2);
    }
    await takeSnapshot(target, o, cmd);
  });

  // The options belong to `snapshot` itself (commander hands them to the parent wherever they appear).
  snapshot
    .command('create')
    .description('snapshot a container or local weaver (same as loom snapshot <target>; takes the options of loom snapshot)')
    .argument('<target>', 'container (id, prefix or name) or local weaver id')
    .action(async (target: string, _o: unknown, cmd: Command) => takeSnapshot(target, cmd.parent!.opts<SnapOpts>(), cmd));

  snapshot
    .command('ls')
    .description('list snapshots')
    .option('--container <container>', 'only snapshots of this container')
    .option('--json', 'output JSON')
    .action(async (o: { container?: string }, cmd: Command) => {
      const api = client(cmd);
      const q = o.container ? `?container_id=${enc(await resolveTarget(api, o.container))}` : '';
      const { snapshots } = await api.get<{ snapshots: SnapshotView[] }>(`/api/snapshots${q}`);
      if (globals(cmd).json) return printJson(snapshots);
      printTable(
        ['SNAPSHOT', 'CONTAINER', 'PARENT', 'STATUS', 'MODE', 'PINNED', 'EXPIRES', 'CREATED'],
        snapshots.map((s) => [s.snapshot_id, short(s.container_id), short(s.parent_snapshot_id ?? undefined), s.status, s.consistency_mode, s.pinned ? 'yes' : 'no', s.expires_at ?? '-', s.created_at]),
      );
    });

  snapshot
    .command('show')
    .description('show a snapshot')
    .argument('<snapshot>')
    .option('--json', 'output JSON')
    .action(async (ref: string, _o: unknown, cmd: Command) => {
      const api = client(cmd);
      const s: SnapshotView = await api.getSnapshot(await resolveSnapshot(api, ref));
      if (globals(cmd).json) return printJson(s);
      for (const [k, v] of Object.entries(s)) process.stdout.write(`${k.padEnd(19)} ${typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)}\n`);
    });

  snapshot
    .command('lineage')
    .description('the chain from a snapshot (depth 0) up to its root')
    .argument('<snapshot>')
    .option('--json', 'output JSON')
    .action(async (ref: string, _o: unknown, cmd: Command) => {
      const api = client(cmd);
      const l: LineageView = await api.lineage(await resolveSnapshot(api, ref));
      if (globals(cmd).json) return printJson(l);
      printTable(['DEPTH', 'SNAPSHOT', 'PARENT', 'CONTAINER', 'CREATED'], l.lineage.map((n) => [String(n.depth), n.snapshot_id, n.parent_snapshot_id ?? '-', n.container_id, n.created_at]));
      if (l.weavers?.length) {
        process.stdout.write('\nweavers made from it:\n');
        printTable(['WEAVER', 'STATUS', 'CREATED'], l.weavers.map((w) => [w.id, w.status, w.created_at]));
      }
    });

  for (const [name, pinned] of [['pin', true], ['unpin', false]] as const) {
    snapshot
      .command(name)
      .description(pinned ? 'keep a snapshot: no TTL collection, no deletion' : 'allow TTL collection and deletion again')
      .argument('<snapshot>')
      .option('--json', 'output JSON')
      .action(async (ref: string, _o: unknown, cmd: Command) => {
        const api = client(cmd);
        const s = await api.post<SnapshotView>(`/api/snapshots/${enc(await resolveSnapshot(api, ref))}/${name}`);
        if (globals(cmd).json) return printJson(s);
        process.stdout.write(`snapshot ${s.snapshot_id} ${pinned ? 'pinned' : 'unpinned'}\n`);
      });
  }

  snapshot
    .command('rm')
    .description('delete a snapshot (refused while pinned or in use)')
    .argument('<snapshot>')
    .action(async (ref: string, _o: unknown, cmd: Command) => {
      const api = client(cmd);
      const id = await resolveSnapshot(api, ref);
      await api.deleteSnapshot(id);
      process.stdout.write(`snapshot ${id} deleted\n`);
    });

  // ---------------------------------------------------------------- fork, clone, op
  program
    .command('fork')
    .description('snapshot a container and clone the snapshot into a new container, in one operation')
    .argument('<container>', 'container (id, prefix or name) or local weaver id')
    .addOption(resumeOption())
    .addOption(consistencyOption())
    .option('--name <name>', 'name of the new container')
    .option('--wait', 'wait for the fork to finish')
    .option('--json', 'output JSON')
    .action(async (ref: string, o: { resume: string; consistency: string; name?: string; wait?: boolean }, cmd: Command) => {
      const api = client(cmd);
      const id = await resolveTarget(api, ref);
      const body: Record<string, unknown> = { resume_policy: o.resume, consistency_mode: o.consistency, ...(o.name ? { name: o.name } : {}) };
      await report(api, cmd, await api.fork(id, body), !!o.wait);
    });

  program
    .command('clone')
    .description('make a new container from a snapshot')
    .argument('<snapshot>', 'snapshot id or unique prefix')
    .addOption(resumeOption())
    .option('--name <name>', 'name of the new container')
    .option('--wait', 'wait for the clone to finish')
    .option('--json', 'output JSON')
    .action(async (ref: string, o: { resume: string; name?: string; wait?: boolean }, cmd: Command) => {
      const api = client(cmd);
      const id = await resolveSnapshot(api, ref);
      await report(api, cmd, await api.clone(id, { resume_policy: o.resume as ForkRequest['resume_policy'], ...(o.name ? { name: o.name } : {}) }), !!o.wait);
    });

  program
    .command('op')
    .description('show a branching operation; --wait follows it to the end')
    .argument('<operation>', 'operation id')
    .option('--wait', 'wait until it succeeds, fails, is cancelled or times out')
    .option('--json', 'output JSON')
    .action(async (id: string, o: { wait?: boolean }, cmd: Command) => {
      const api = client(cmd);
      const op: OperationView = await api.getOperation(id);
      if (!o.wait && !globals(cmd).json) {
        process.stdout.write(`${describe(op)}\n  progress ${op.progress_pct}%\n`);
        if (op.reason_code) process.stdout.write(`  reason ${op.reason_code}: ${op.reason_message ?? ''}\n`);
        for (const w of op.warnings) process.stdout.write(`  warning: ${w}\n`);
        for (const d of op.capability_downgrades) process.stdout.write(`  capability downgrade: ${d}\n`);
        return;
      }
      await report(api, cmd, op, !!o.wait);
    });

  // ---------------------------------------------------------------- container
  const container = program.command('container').description('branching containers: ls, show, create, kill, resume, rm');

  container
    .command('ls')
    .description('list containers')
    .option('--json', 'output JSON')
    .action(async (_o: unknown, cmd: Command) => {
      const { containers } = await client(cmd).get<{ containers: ContainerView[] }>('/api/containers');
      if (globals(cmd).json) return printJson(containers);
      printTable(
        ['CONTAINER', 'NAME', 'STATUS', 'FROM', 'COMMAND', 'CREATED'],
        containers.map((c) => [c.id, c.name, c.status + (c.exit_code !== undefined ? ` (${c.exit_code})` : ''), c.source_snapshot_id ? `snapshot ${short(c.source_snapshot_id)}` : (c.source_path ?? '-'), JSON.stringify(c.command), c.created_at]),
      );
    });

  container
    .command('show')
    .description('show a container')
    .argument('<container>')
    .option('--json', 'output JSON')
    .action(async (ref: string, _o: unknown, cmd: Command) => {
      const api = client(cmd);
      const c: ContainerView = await api.getContainer(await resolveTarget(api, ref, false));
      if (globals(cmd).json) return printJson(c);
      for (const [k, v] of Object.entries(c)) process.stdout.write(`${k.padEnd(19)} ${typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)}\n`);
    });

  container
    .command('create')
    .description('register a container from an image, an uploaded tar archive, or (server admins) a host directory under an import root; the command is an argv, never run through a shell')
    .requiredOption('--name <name>', 'container name')
    .option('--image <name>', 'an image of the local image store (loom image ls)')
    .option('--archive <file>', 'a tar or tar.gz of a root filesystem, uploaded')
    .option('--rootfs <path>', 'server admins: a host directory under one of LOOM_BRANCHING_IMPORT_ROOTS')
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', collect, [])
    .option('--start', 'start it at once')
    .option('--org <org>', 'organization UUID (default: your personal org)')
    .option('--wait', 'wait until it is created (and started)')
    .option('--json', 'output JSON')
    .argument('<command...>', 'argv to run (put it after --)')
    .action(async (argv: string[], o: { name: string; rootfs?: string; image?: string; archive?: string; env: string[]; start?: boolean; org?: string; wait?: boolean }, cmd: Command) => {
      const sources = [o.rootfs, o.image, o.archive].filter((x) => x !== undefined).length;
      if (sources !== 1) throw new CliError('give exactly one of --image, --archive and --rootfs');
      const api = client(cmd);
      if (o.archive !== undefined) {
        let size: number;
        try {
          const st = statSync(o.archive);
          if (!st.isFile()) throw new Error('not a file');
          size = st.size;
        } catch {
          throw new CliError(`${o.archive}: not a readable file`);
        }
        const q = new URLSearchParams({ name: o.name, command: JSON.stringify(argv), start_immediately: String(!!o.start) });
        if (o.env.length) q.set('env', JSON.stringify(parseLabels(o.env)));
        if (o.org) q.set('org_id', o.org);
        const progress = new Progress(interactive(globals(cmd).json));
        let sent = 0;
        const src = createReadStream(o.archive);
        src.on('data', (c: Buffer | string) => {
          sent += c.length;
          progress.update(`Uploading ${(sent / 1048576).toFixed(1)} MiB of ${(size / 1048576).toFixed(1)} MiB…`);
        });
        const op = await api.request<OperationView>('POST', `/api/containers/archive?${q.toString()}`, {
          rawBody: Readable.toWeb(src) as unknown as RequestInit['body'],
          headers: { 'content-type': 'application/x-tar' },
        });
        progress.done();
        return report(api, cmd, op, !!o.wait);
      }
      const body: Record<string, unknown> = { name: o.name, command: argv, start_immediately: !!o.start };
      if (o.rootfs !== undefined) body.rootfs_path = o.rootfs;
      if (o.image !== undefined) body.image = o.image;
      if (o.env.length) body.env = parseLabels(o.env);
      if (o.org) body.org_id = o.org;
      await report(api, cmd, await api.createContainer(body as unknown as CreateContainerRequest), !!o.wait);
    });

  for (const [name, what] of [['kill', 'stop the container\'s processes (its rootfs stays)'], ['resume', 'start a created or stopped container'], ['rm', 'stop and delete a container and its rootfs']] as const) {
    container
      .command(name)
      .description(what)
      .argument('<container>')
      .option('--wait', 'wait for the operation to finish')
      .option('--json', 'output JSON')
      .action(async (ref: string, o: { wait?: boolean }, cmd: Command) => {
        const api = client(cmd);
        const id = await resolveTarget(api, ref, false);
        const op: OperationView = await api.containerAction(id, name);
        await report(api, cmd, op, !!o.wait);
      });
  }
}
