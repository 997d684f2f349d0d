/**
 * `loom weaver audit <id> [-f] [--type T] [--json]`: what ran in a weaver as a process-tree
 * timeline — each exec under the process that started it, with its exit code, and its file,
 * network, privilege and sandbox lines beneath it; lost ranges shown inline. --json: one event
 * per line.
 */
import type { Command } from 'commander';
import { ApiClient, CliError } from './client.js';
import { client, globals } from './context.js';
import { resolveWeaverId } from './weaver.js';
import type { AuditEventView } from '../client/index.js';

const TYPES = ['process_exec', 'process_fork', 'process_exit', 'file_open', 'file_write', 'file_metadata', 'network_connect', 'network_listen', 'network_accept', 'privilege_change', 'sandbox_escape', 'memory_exec', 'audit_gap'];

function time(ns: string): string {
  const ms = Number(BigInt(ns) / 1_000_000n);
  return new Date(ms).toISOString().slice(11, 23);
}

const result = (ret: number) => (ret < 0 ? `= -${errnoName(-ret)}` : `= ${ret}`);
const ERRNO: Record<number, string> = { 1: 'EPERM', 2: 'ENOENT', 9: 'EBADF', 11: 'EAGAIN', 12: 'ENOMEM', 13: 'EACCES', 17: 'EEXIST', 22: 'EINVAL', 38: 'ENOSYS', 111: 'ECONNREFUSED', 115: 'EINPROGRESS' };
const errnoName = (n: number) => ERRNO[n] ?? `errno ${n}`;
const addr = (a: unknown, p: unknown) => (String(a).includes(':') ? `[${String(a)}]:${String(p)}` : `${String(a)}:${String(p)}`);

/** One line of the timeline for an event (without indentation). */
export function describe(e: AuditEventView): string {
  const d = e.details;
  switch (e.event_type) {
    case 'process_exec':
      return e.ret === 0
        ? `exec ${String(d.filename)} ${JSON.stringify(d.argv ?? [])} cwd=${String(d.cwd ?? '?')} uid=${e.uid} pid=${e.pid}`
        : `exec ${String(d.filename)} failed ${result(e.ret)} pid=${e.pid}`;
    case 'process_fork':
      return `fork → pid ${String(d.child_pid)}`;
    case 'process_exit':
      return Number(d.signal) ? `exit pid=${e.pid} killed by signal ${String(d.signal)}` : `exit pid=${e.pid} code ${String(d.code)}`;
    case 'file_open':
      return `open ${String(d.path)} ${d.write ? 'write' : 'read'}${d.create ? ',create' : ''} ${result(e.ret)}`;
    case 'file_write':
      return `${String(d.syscall)} ${String(d.path)}${d.new_path !== undefined ? ` → ${String(d.new_path)}` : ''} ${result(e.ret)}`;
    case 'file_metadata':
      return `${String(d.syscall)} ${d.path !== undefined ? String(d.path) : `fd ${String(d.fd)}`}${d.mode !== undefined ? ` mode ${Number(d.mode).toString(8)}` : ` owner ${String(d.owner)}:${String(d.group)}`} ${result(e.ret)}`;
    case 'network_connect':
      return `connect ${addr(d.remote_addr, d.remote_port)} from ${addr(d.local_addr, d.local_port)} ${result(e.ret)}`;
    case 'network_listen':
      return `listen ${addr(d.local_addr, d.local_port)} ${result(e.ret)}`;
    case 'network_accept':
      return `accept ${addr(d.remote_addr, d.remote_port)} on ${addr(d.local_addr, d.local_port)} ${result(e.ret)}`;
    case 'privilege_change':
      return `${String(d.syscall)}(${Array.isArray(d.ids) ? d.ids.join(', ') : String(d.header ?? '')}) ${result(e.ret)}`;
    case 'sandbox_escape': {
      const { syscall, ...rest } = d;
      return `! ${String(syscall)} ${JSON.stringify(rest)} ${result(e.ret)}`;
    }
    case 'memory_exec': {
      const { syscall, ...rest } = d;
      return `${String(syscall)} ${JSON.stringify(rest)} ${result(e.ret)}`;
    }
    case 'audit_gap':
      return `!! ${String(d.lost)} events lost (${Object.entries((d.by_type as Record<string, number>) ?? {}).map(([k, v]) => `${k} ${v}`).join(', ')})`;
    default:
      return `${e.event_type} ${JSON.stringify(d)} ${result(e.ret)}`;
  }
}

/** Indents each event under the exec that started its process (depth through parent_exec_id). */
export class Timeline {
  private readonly depth = new Map<string, number>();
  private readonly exitCodes = new Map<string, string>();

  line(e: AuditEventView): string {
    if (e.event_type === 'audit_gap') return `${time(e.timestamp_ns)}  ${describe(e)}`;
    let d = this.depth.get(e.exec_id);
    if (d === undefined) {
      const parent = this.depth.get(e.parent_exec_id);
      d = parent === undefined ? 0 : parent + 1;
      this.depth.set(e.exec_id, d);
    }
    if (e.event_type === 'process_fork') this.depth.set(String(e.details.child_exec_id), d + 1);
    if (e.event_type === 'process_exec' && e.ret === 0) {
      // a new image: children of this exec nest under it
      const parent = this.depth.get(e.parent_exec_id);
      d = parent === undefined ? d : parent + 1;
      this.depth.set(e.exec_id, d);
    }
    const body = e.event_type === 'process_exec' || e.event_type === 'process_exit' ? describe(e) : `  ${describe(e)}`;
    if (e.event_type === 'process_exit') this.exitCodes.set(e.exec_id, String(e.ret));
    return `${time(e.timestamp_ns)}  ${'  '.repeat(Math.min(d, 20))}${body}`;
  }
}

function parseSse(onEvent: (type: string, data: string) => void) {
  let buf = '';
  return (chunk: string) => {
    buf += chunk;
    let sep: number;
    while ((sep = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, sep);
      buf = buf.slice(sep + 2);
      const type = /^event: (.*)$/m.exec(ev)?.[1] ?? 'message';
      const data = ev.split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\n');
      if (data) onEvent(type, data);
    }
  };
}

export function registerAuditCommand(weaver: Command): void {
  weaver
    .command('audit <id>')
    .description('what ran in a weaver: a process-tree timeline of execs, exits, files, network and privilege events')
    .option('-f, --follow', 'keep printing new events')
    .option('--type <types>', `only these event types (comma-separated: ${TYPES.join(', ')})`)
    .option('--since <time>', 'only events at or after this RFC 3339 time')
    .option('--limit <n>', 'at most this many events per page', '1000')
    .option('--json', 'one JSON event per line')
    .action(async (ref: string, opts: { follow?: boolean; type?: string; since?: string; limit: string; json?: boolean }, cmd: Command) => {
      for (const t of opts.type?.split(',') ?? []) if (!TYPES.includes(t.trim())) throw new CliError(`--type ${t} is not one of ${TYPES.join(', ')}`);
      if (!/^\d{1,4}$/.test(opts.limit) || Number(opts.limit) < 1) throw new CliError('--limit must be a whole number from 1 to 5000');
      if (opts.since !== undefined && Number.isNaN(Date.parse(opts.since))) throw new CliError('--since must be an RFC 3339 time, e.g. 2026-01-02T03:04:05Z');
      const json = opts.json || globals(cmd).json;
      const api = client(cmd);
      const id = await resolveWeaverId(api, ref);
      const tl = new Timeline();
      const print = (e: AuditEventView) => process.stdout.write(json ? JSON.stringify(e) + '\n' : tl.line(e) + '\n');
      const base = new URLSearchParams({ limit: opts.limit, ...(opts.type ? { type: opts.type } : {}), ...(opts.since ? { since: new Date(opts.since).toISOString() } : {}) });
      if (opts.follow) {
        const res = await api.raw('GET', `/api/weaver/${id}/audit?${base}&follow=true`, { headers: { accept: 'text/event-stream' } });
        if (!res.ok || !res.body) throw await ApiClient.errorOf(res);
        const decoder = new TextDecoder();
        const feed = parseSse((type, data) => {
          if (type === 'event' || type === 'gap') print(JSON.parse(data) as AuditEventView);
        });
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) feed(decoder.decode(chunk, { stream: true }));
        return;
      }
      let cursor: string | null = null;
      do {
        const q = new URLSearchParams(base);
        if (cursor) q.set('cursor', cursor);
        const page: { events: AuditEventView[]; next_cursor: string | null } = await api.get(`/api/weaver/${id}/audit?${q}`);
        for (const e of page.events) print(e);
        cursor = page.next_cursor;
      } while (cursor);
    });
}
