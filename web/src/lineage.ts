import { api, type Container, type Lineage, type Snapshot, type Weaver } from './api.js';
import { clear, duration, h, s as svg, short } from './dom.js';
import type { Page, Session } from './main.js';

interface Node {
  key: string; // "s:<id>", "w:<id>", "c:<id>"
  kind: 'snapshot' | 'weaver' | 'container';
  id: string;
  label: string;
  marks: string[];
  parent: string | null;
  children: Node[];
  href?: string;
}

const ROW = 46;
const INDENT = 30;
const LIVE = new Set(['pending', 'running', 'created', 'creating', 'starting']);

/**
 * The snapshots of the selected org as a drawn tree: each snapshot under the one it was taken
 * on top of (parent_snapshot_id), and under each snapshot the weavers and containers made from it.
 */
export function lineagePage(main: HTMLElement, s: Session, selected?: string): Page {
  document.title = 'Lineage · Loom';
  const error = h('p', { class: 'error', role: 'alert', id: 'lineage-error' });
  const figure = h('figure', { class: 'lineage', id: 'lineage' });
  const detail = h('section', { class: 'card', id: 'node-detail', 'aria-live': 'polite' });
  const legend = h('p', { class: 'legend' }, 'Solid lines join a weaver or container to the snapshots taken of it (and a snapshot to the snapshots taken on top of it); dashed lines join a snapshot to the weavers and containers made from it. ', h('span', { class: 'mark pinned' }, 'pinned'), ' ', h('span', { class: 'mark expiring' }, 'expires'), ' ', h('span', { class: 'mark in-use' }, 'in use'));
  clear(main, h('h1', {}, 'Lineage'), legend, error, figure, detail);
  let stopped = false;
  let shown = false;
  let lastWeavers: Weaver[] = [];

  async function load(): Promise<void> {
    const [snaps, weavers, containers] = await Promise.all([
      api<{ snapshots: Snapshot[] }>('GET', '/api/snapshots').then((r) => r.snapshots.filter((x) => x.org_id === undefined || x.org_id === s.org.id)),
      api<{ weavers: Weaver[] }>('GET', '/api/weavers').then((r) => r.weavers.filter((w) => w.org_id === s.org.id)),
      api<{ containers: Container[] }>('GET', '/api/containers').then((r) => r.containers.filter((c) => c.org_id === undefined || c.org_id === s.org.id)),
    ]);
    // The lineage API names the weavers made from each snapshot (also ones no longer listed).
    const lineages = await Promise.all(snaps.map((x) => api<Lineage>('GET', `/api/snapshots/${x.snapshot_id}/lineage`)));
    if (stopped) return;
    lastWeavers = weavers;
    draw(build(snaps, weavers, containers, lineages));
  }

  function build(snaps: Snapshot[], weavers: Weaver[], containers: Container[], lineages: Lineage[]): Node[] {
    const nodes = new Map<string, Node>();
    const now = Date.now();
    const madeFrom = new Map<string, { id: string; status: string }[]>();
    for (const l of lineages) madeFrom.set(l.snapshot_id, l.weavers ?? []);
    const weaverById = new Map(weavers.map((w) => [w.id, w]));
        const sourceIds = new Set(snaps.map((x) => x.container_id));

    // Weavers and containers: those made from a snapshot, and those a snapshot was taken of.
    const addWeaver = (id: string, status: string, parentSnap: string | null) => {
      if (nodes.has(`w:${id}`)) return;
      const w = weaverById.get(id);
      nodes.set(`w:${id}`, {
        key: `w:${id}`, kind: 'weaver', id, label: `weaver ${short(id)}${w ? ` · ${w.image}` : ''}`, marks: [status],
        parent: parentSnap ? `s:${parentSnap}` : null, children: [], href: status === 'running' ? `#/weaver/${id}` : `#/audit/${id}`,
      });
    };
    for (const [sid, made] of madeFrom) for (const m of made) addWeaver(m.id, m.status, sid);
    for (const w of weavers) if (w.snapshot_id || sourceIds.has(w.id)) addWeaver(w.id, w.status, w.snapshot_id ?? null);
    for (const c of containers) {
      if (!c.source_snapshot_id && !sourceIds.has(c.id)) continue;
      nodes.set(`c:${c.id}`, { key: `c:${c.id}`, kind: 'container', id: c.id, label: `container ${c.name} (${short(c.id)})`, marks: [c.status], parent: c.source_snapshot_id ? `s:${c.source_snapshot_id}` : null, children: [] });
    }

    for (const x of snaps) {
      const made = madeFrom.get(x.snapshot_id) ?? [];
      const inUse = made.some((w) => LIVE.has(w.status)) || containers.some((c) => c.source_snapshot_id === x.snapshot_id && LIVE.has(c.status));
      const marks: string[] = [];
      if (x.pinned) marks.push('pinned');
      if (x.expires_at) marks.push(`expires in ${duration(Date.parse(x.expires_at) - now)}`);
      if (inUse) marks.push('in use');
      if (x.status !== 'ready') marks.push(x.status);
      const ofWeaver = x.source_kind === 'weaver' || weaverById.has(x.container_id);
      // A snapshot descends from its parent snapshot when the server records one (container
      // clones); a weaver's layer snapshot descends from the weaver it was taken of, which in turn
      // hangs under the snapshot it was made from: snapshot → weaver → snapshot → …
      const source = ofWeaver ? `w:${x.container_id}` : `c:${x.container_id}`;
      const parent = x.parent_snapshot_id ? `s:${x.parent_snapshot_id}` : nodes.has(source) ? source : null;
      nodes.set(`s:${x.snapshot_id}`, {
        key: `s:${x.snapshot_id}`,
        kind: 'snapshot',
        id: x.snapshot_id,
        label: `snapshot ${short(x.snapshot_id)} of ${ofWeaver ? 'weaver' : 'container'} ${short(x.container_id)}`,
        marks,
        parent,
        children: [],
        href: `#/lineage/${x.snapshot_id}`,
      });
    }
    const roots: Node[] = [];
    for (const n of nodes.values()) {
      const p = n.parent ? nodes.get(n.parent) : undefined;
      if (p) p.children.push(n);
      else {
        n.parent = null;
        roots.push(n);
      }
    }
    // Guard against a cycle in hostile or odd data: anything not reachable from a root is a root.
    const reached = new Set<Node>();
    const mark = (n: Node) => {
      if (reached.has(n)) return;
      reached.add(n);
      n.children.forEach(mark);
    };
    roots.forEach(mark);
    for (const n of nodes.values()) if (!reached.has(n)) {
      const p = n.parent ? nodes.get(n.parent) : undefined;
      if (p) p.children = p.children.filter((c) => c !== n);
      n.parent = null;
      roots.push(n);
      mark(n);
    }
    const order = (a: Node, b: Node) => (a.kind === b.kind ? a.id.localeCompare(b.id) : a.kind === 'snapshot' ? 1 : -1);
    for (const n of nodes.values()) n.children.sort(order);
    return roots.sort(order);
  }

  function draw(roots: Node[]): void {
    const rows: { n: Node; depth: number }[] = [];
    const walk = (n: Node, depth: number) => {
      rows.push({ n, depth });
      for (const c of n.children) walk(c, depth + 1);
    };
    roots.forEach((r) => walk(r, 0));
    if (rows.length === 0) {
      clear(figure, h('p', { id: 'no-snapshots' }, 'No snapshots in this organisation yet. Take one from the Weavers page (Snapshot or Fork).'));
      return;
    }
    const maxDepth = Math.max(...rows.map((r) => r.depth));
    const width = 24 + maxDepth * INDENT + Math.max(...rows.map((r) => (r.n.label.length + r.n.marks.join('    ').length + 4) * 9.2));
    const height = rows.length * ROW + 8;
    const index = new Map(rows.map((r, i) => [r.n.key, i]));
    const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'group', 'aria-label': 'Snapshot lineage tree', class: 'tree' });
    const y = (i: number) => 8 + i * ROW + ROW / 2;
    const x = (d: number) => 14 + d * INDENT;
    // Edges first, so nodes draw over them: an elbow from the parent's dot down and across.
    for (const r of rows) {
      if (!r.n.parent) continue;
      const pi = index.get(r.n.parent)!;
      const pd = rows[pi]!.depth;
      const i = index.get(r.n.key)!;
      root.append(
        svg('path', {
          d: `M ${x(pd)} ${y(pi)} V ${y(i)} H ${x(r.depth)}`,
          class: `edge e-${r.n.kind}`,
          'data-from': r.n.parent.slice(2),
          'data-to': r.n.id,
        }),
      );
    }
    rows.forEach((r, i) => {
      const n = r.n;
      const marks = n.marks.filter(Boolean);
      // Marks flow after the label in the same text element, so they never overlap it.
      const text = svg(
        'text',
        { x: x(r.depth) + 14, y: y(i) + 5, class: 'label' },
        n.label,
        ...marks.map((m) => {
          const cls = m === 'pinned' ? 'pinned' : m.startsWith('expires') ? 'expiring' : m === 'in use' ? 'in-use' : `st-${m}`;
          return svg('tspan', { dx: 10, class: `mark-text ${cls}` }, `[${m}]`);
        }),
      );
      const shape =
        n.kind === 'snapshot'
          ? svg('rect', { x: x(r.depth) - 7, y: y(i) - 7, width: 14, height: 14, rx: 2, class: `dot d-${n.kind}${selected === n.id ? ' selected' : ''}` })
          : svg('circle', { cx: x(r.depth), cy: y(i), r: 7, class: `dot d-${n.kind}` });
      const g = svg(
        'a',
        {
          href: n.href ?? '#/lineage',
          class: `node n-${n.kind}`,
          'data-key': n.key,
          'data-id': n.id,
          'data-kind': n.kind,
          'aria-label': `${n.label}${marks.length ? `, ${marks.join(', ')}` : ''}`,
        },
        svg('title', {}, `${n.label}${marks.length ? ` — ${marks.join(', ')}` : ''}`),
        shape,
        text,
      );
      if (n.kind === 'container') g.addEventListener('click', (e) => (e.preventDefault(), showContainer(n)));
      root.append(g);
    });
    const focusedKey = document.activeElement instanceof Element ? document.activeElement.closest('[data-key]')?.getAttribute('data-key') : null;
    const wrap = h('div', { class: 'tree-wrap', tabindex: 0, 'aria-label': 'Lineage picture (scrolls sideways)' });
    wrap.append(root);
    clear(figure, wrap, h('figcaption', {}, `${rows.filter((r) => r.n.kind === 'snapshot').length} snapshots, ${rows.filter((r) => r.n.kind !== 'snapshot').length} weavers and containers.`));
    if (focusedKey) root.querySelector<SVGAElement>(`[data-key="${CSS.escape(focusedKey)}"]`)?.focus();
    if (selected && !shown) {
      shown = true;
      void showSnapshot(selected);
    }
  }

  /** The parent snapshot, or for a weaver's snapshot the snapshot that weaver was made from. */
  function descent(snap: Snapshot): (string | HTMLElement)[] {
    const link = (id: string) => h('a', { href: `#/lineage/${id}` }, `snapshot ${short(id)}`);
    if (snap.parent_snapshot_id) return [link(snap.parent_snapshot_id)];
    const from = lastWeavers.find((w) => w.id === snap.container_id)?.snapshot_id;
    return from ? [`weaver ${short(snap.container_id)}, made from `, link(from)] : ['nothing (a first generation)'];
  }

  function showContainer(n: Node): void {
    clear(detail, h('h2', {}, n.label), h('p', {}, `Status: ${n.marks.join(', ')}`));
  }

  async function showSnapshot(id: string): Promise<void> {
    const msg = h('p', { class: 'error', role: 'alert', id: 'detail-error' });
    let snap: Snapshot;
    try {
      snap = await api<Snapshot>('GET', `/api/snapshots/${encodeURIComponent(id)}`);
    } catch (e) {
      clear(detail, msg);
      msg.textContent = e instanceof Error ? e.message : String(e);
      return;
    }
    const act = (label: string, run: () => Promise<string | void>) => {
      const b = h('button', { type: 'button', class: 'small' }, label);
      b.addEventListener('click', () => {
        msg.textContent = '';
        run()
          .then((to) => {
            if (to) location.hash = to;
            else {
              void load();
              void showSnapshot(id);
            }
          })
          .catch((x: unknown) => (msg.textContent = x instanceof Error ? x.message : String(x)));
      });
      return b;
    };
    const layer = snap.storage !== 'tree';
    clear(
      detail,
      h('h2', {}, 'Snapshot ', h('code', {}, snap.snapshot_id)),
      h(
        'dl',
        {},
        h('dt', {}, 'Taken of'),
        h('dd', {}, `${snap.source_kind} ${snap.container_id}`),
        h('dt', {}, 'Descends from'),
        h('dd', {}, ...descent(snap)),
        h('dt', {}, 'Created'),
        h('dd', {}, new Date(snap.created_at).toLocaleString()),
        h('dt', {}, 'Pinned'),
        h('dd', {}, snap.pinned ? 'yes' : 'no'),
        h('dt', {}, 'Expires'),
        h('dd', {}, snap.expires_at ? new Date(snap.expires_at).toLocaleString() : 'never'),
      ),
      msg,
      h(
        'p',
        { class: 'toolbar' },
        layer ? act('New weaver from here', async () => `#/weaver/${(await api<Weaver>('POST', '/api/weaver', { from_snapshot: snap.snapshot_id })).id}`) : null,
        !layer ? act('Clone into a container', async () => void (await api('POST', `/api/snapshots/${snap.snapshot_id}/clone`, { resume_policy: 'immediate' }))) : null,
        act(snap.pinned ? 'Unpin' : 'Pin', async () => void (await api('POST', `/api/snapshots/${snap.snapshot_id}/${snap.pinned ? 'unpin' : 'pin'}`))),
        act('Delete snapshot', async () => {
          await api('DELETE', `/api/snapshots/${snap.snapshot_id}`);
          return '#/lineage';
        }),
      ),
    );
  }

  const refresh = () =>
    load().catch((e: unknown) => {
      error.textContent = e instanceof Error ? e.message : String(e);
    });
  void refresh();
  const timer = setInterval(() => void refresh(), 5000);
  return {
    dispose() {
      stopped = true;
      clearInterval(timer);
    },
  };
}
