import { api, ApiError } from './api.js';
import { clear, h, short } from './dom.js';
import type { Page, Session } from './main.js';

interface AuditEvent {
  seq: number;
  boot_id: string;
  timestamp_ns: string;
  pid: number;
  ppid: number;
  comm: string;
  exec_id: string;
  parent_exec_id: string;
  event_type: string;
  ret: number;
  details: Record<string, unknown>;
}

const PAGE = 5000;
const MAX_PAGES = 4;

const result = (ret: number) => (ret < 0 ? `→ error ${-ret}` : '');
const addr = (a: unknown, p: unknown) => (String(a).includes(':') ? `[${String(a)}]:${String(p)}` : `${String(a)}:${String(p)}`);
const time = (ns: string) => {
  const ms = Number(BigInt(ns) / 1_000_000n);
  return new Date(ms).toISOString().slice(11, 23);
};

function describe(e: AuditEvent): { kind: string; text: string } {
  const d = e.details;
  switch (e.event_type) {
    case 'process_exec':
      return { kind: 'exec', text: `${String(d.filename ?? e.comm)} ${Array.isArray(d.argv) ? d.argv.slice(1).join(' ') : ''} ${result(e.ret)}`.trim() };
    case 'process_fork':
      return { kind: 'proc', text: `fork → pid ${String(d.child_pid ?? '?')}` };
    case 'process_exit':
      return { kind: 'exit', text: `exit ${String(d.exit_code ?? e.ret)}` };
    case 'file_open':
    case 'file_write':
    case 'file_metadata':
      return { kind: 'file', text: `${e.event_type.slice(5)} ${String(d.path ?? d.filename ?? '')} ${d.flags !== undefined ? `(${String(d.flags)})` : ''} ${result(e.ret)}`.trim() };
    case 'network_connect':
      return { kind: 'net', text: `connect ${addr(d.remote_addr, d.remote_port)} ${result(e.ret)}`.trim() };
    case 'network_listen':
      return { kind: 'net', text: `listen ${addr(d.local_addr, d.local_port)} ${result(e.ret)}`.trim() };
    case 'network_accept':
      return { kind: 'net', text: `accept ${addr(d.remote_addr, d.remote_port)} on ${addr(d.local_addr, d.local_port)} ${result(e.ret)}`.trim() };
    case 'audit_gap':
      return { kind: 'gap', text: `${String(d.lost)} events lost here${d.reason ? ` (${String(d.reason)})` : ''}` };
    default: {
      const { syscall, ...rest } = d;
      return { kind: e.event_type === 'sandbox_escape' ? 'alert' : 'other', text: `${String(syscall ?? e.event_type)} ${JSON.stringify(rest)} ${result(e.ret)}`.trim() };
    }
  }
}

/** The audit trail of a weaver as a process tree: each exec under the one that started it. */
export function auditPage(main: HTMLElement, _s: Session, id: string): Page {
  document.title = `Audit ${short(id)} · Loom`;
  const error = h('p', { class: 'error', role: 'alert', id: 'audit-error' });
  const list = h('ol', { class: 'timeline', id: 'timeline', 'aria-label': 'Audit events, oldest first' });
  const summary = h('p', { id: 'audit-summary', role: 'status' }, 'Loading…');
  const reload = h('button', { type: 'button', class: 'small' }, 'Refresh');
  clear(
    main,
    h('h1', {}, 'Audit of weaver ', h('code', { title: id }, short(id))),
    h('p', { class: 'toolbar' }, h('a', { href: '#/', class: 'button small' }, 'Back to weavers'), reload),
    h('p', { class: 'legend' }, 'Processes are indented under the process that started them; file and network lines sit under their process. ', h('span', { class: 'mark gap' }, 'gaps'), ' mark events the kernel could not deliver.'),
    error,
    summary,
    list,
  );

  async function load(): Promise<void> {
    error.textContent = '';
    const events: AuditEvent[] = [];
    let gaps: AuditEvent[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const q = new URLSearchParams({ limit: String(PAGE) });
      if (cursor) q.set('cursor', cursor);
      const page: { events: AuditEvent[]; gaps?: AuditEvent[]; next_cursor: string | null } = await api('GET', `/api/weaver/${encodeURIComponent(id)}/audit?${q}`);
      events.push(...page.events);
      gaps = page.gaps ?? [];
      cursor = page.next_cursor;
    } while (cursor && ++pages < MAX_PAGES);
    // Every gap in the range is marked, also one beyond the pages shown.
    const key = (e: AuditEvent) => `${e.boot_id}:${e.seq}`;
    const have = new Set(events.map(key));
    for (const g of gaps) if (!have.has(key(g))) events.push(g);
    events.sort((a, b) => (BigInt(a.timestamp_ns) < BigInt(b.timestamp_ns) ? -1 : BigInt(a.timestamp_ns) > BigInt(b.timestamp_ns) ? 1 : 0));
    render(events, cursor !== null);
  }

  function render(events: AuditEvent[], more: boolean): void {
    const depth = new Map<string, number>();
    const items: HTMLLIElement[] = [];
    let gaps = 0;
    for (const e of events) {
      const { kind, text } = describe(e);
      if (kind === 'gap') gaps++;
      let d = depth.get(e.exec_id);
      if (d === undefined || (e.event_type === 'process_exec' && e.ret === 0)) {
        const parent = depth.get(e.parent_exec_id);
        d = parent === undefined ? (d ?? 0) : parent + 1;
        depth.set(e.exec_id, d);
      }
      if (e.event_type === 'process_fork' && d !== undefined) depth.set(String(e.details.child_exec_id), d + 1);
      const level = kind === 'gap' ? 0 : Math.min(d + (kind === 'exec' || kind === 'exit' || kind === 'proc' ? 0 : 1), 12);
      items.push(
        h(
          'li',
          { class: `ev k-${kind} lvl-${level}`, 'data-type': e.event_type },
          h('time', {}, time(e.timestamp_ns)),
          ' ',
          kind === 'gap' ? null : h('span', { class: 'pid' }, `${e.comm}[${e.pid}]`),
          ' ',
          h('span', { class: 'what' }, text),
        ),
      );
    }
    list.replaceChildren(...items);
    summary.textContent = `${events.length} events${gaps ? `, ${gaps} gaps` : ', no gaps'}${more ? ' (the oldest shown; use `loom weaver audit` for all)' : ''}.`;
  }

  const refresh = () =>
    load().catch((e: unknown) => {
      summary.textContent = '';
      error.textContent = e instanceof ApiError || e instanceof Error ? e.message : String(e);
    });
  reload.addEventListener('click', () => void refresh());
  void refresh();
  return { dispose() {} };
}
