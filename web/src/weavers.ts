import { api, ApiError, type Weaver } from './api.js';
import { clear, duration, h, short } from './dom.js';
import type { Page, Session } from './main.js';

const LIVE = new Set(['pending', 'running']);
const POLL_MS = 2000;

/** Weavers of the selected org, updated live; the create form; delete. */
export function weaversPage(main: HTMLElement, s: Session): Page {
  document.title = 'Weavers · Loom';
  let weavers: Weaver[] = [];
  let stopped = false;
  const listError = h('p', { class: 'error', role: 'alert', id: 'list-error' });
  const formError = h('p', { class: 'error', role: 'alert', id: 'create-error' });
  const tbody = h('tbody');
  const empty = h('p', { id: 'no-weavers', hidden: true }, 'No weavers in this organisation.');
  const table = h(
    'table',
    { class: 'weavers', id: 'weavers' },
    h('caption', { class: 'sr-only' }, `Weavers in ${s.org.name}, updated live`),
    h('thead', {}, h('tr', {}, ...['Weaver', 'Image', 'Status', 'Age', 'Time left', 'Actions'].map((c) => h('th', { scope: 'col' }, c)))),
    tbody,
  );

  const field = (id: string, label: string, input: HTMLElement, hint?: string) =>
    h('div', { class: 'field' }, h('label', { for: id }, label), input, hint ? h('small', { id: `${id}-hint` }, hint) : null);
  const image = h('input', { id: 'f-image', name: 'image', placeholder: 'default image', autocomplete: 'off' });
  const repo = h('input', { id: 'f-repo', name: 'repo', type: 'url', placeholder: 'https://…', autocomplete: 'off' });
  const branch = h('input', { id: 'f-branch', name: 'branch', autocomplete: 'off' });
  const env = h('textarea', { id: 'f-env', name: 'env', rows: 2, 'aria-describedby': 'f-env-hint' });
  const life = h('input', { id: 'f-lifetime', name: 'lifetime_hours', type: 'number', min: '0.01', step: 'any', inputmode: 'decimal' });
  const form = h(
    'form',
    { class: 'card', id: 'create', 'aria-labelledby': 'create-title' },
    h('h2', { id: 'create-title' }, 'New weaver'),
    formError,
    h(
      'div',
      { class: 'grid' },
      field('f-image', 'Image', image),
      field('f-repo', 'Repository', repo),
      field('f-branch', 'Branch', branch),
      field('f-lifetime', 'Lifetime (hours)', life),
      field('f-env', 'Environment', env, 'One NAME=value a line'),
    ),
    h('button', { type: 'submit' }, 'Create weaver'),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    formError.textContent = '';
    const body: Record<string, unknown> = { org_id: s.org.id };
    if (image.value.trim()) body['image'] = image.value.trim();
    if (repo.value.trim()) body['repo'] = repo.value.trim();
    if (branch.value.trim()) body['branch'] = branch.value.trim();
    if (life.value.trim()) body['lifetime_hours'] = Number(life.value);
    const vars: Record<string, string> = {};
    for (const line of env.value.split('\n')) {
      if (!line.trim()) continue;
      const i = line.indexOf('=');
      if (i <= 0) {
        formError.textContent = `environment line "${line}" is not NAME=value`;
        return;
      }
      vars[line.slice(0, i).trim()] = line.slice(i + 1);
    }
    if (Object.keys(vars).length) body['env'] = vars;
    api<Weaver>('POST', '/api/weaver', body)
      .then((w) => {
        weavers = [w, ...weavers.filter((x) => x.id !== w.id)];
        render();
        void refresh();
      })
      .catch((x: unknown) => (formError.textContent = x instanceof Error ? x.message : String(x)));
  });

  clear(main, h('h1', {}, 'Weavers'), h('section', { 'aria-labelledby': 'list-title' }, h('h2', { id: 'list-title', class: 'sr-only' }, 'Running and recent weavers'), listError, table, empty), form);

  function act(label: string, run: () => Promise<unknown>): HTMLButtonElement {
    const b = h('button', { type: 'button', class: 'small' }, label);
    b.addEventListener('click', () => {
      listError.textContent = '';
      b.disabled = true;
      run()
        .then(() => refresh())
        .catch((x: unknown) => (listError.textContent = x instanceof Error ? x.message : String(x)))
        .finally(() => (b.disabled = false));
    });
    return b;
  }

  function row(w: Weaver): HTMLTableRowElement {
    const now = Date.now();
    const live = LIVE.has(w.status);
    const left = live ? duration(Date.parse(w.expires_at) - now) : '-';
    const status = h('span', { class: `status s-${w.status}` }, w.status);
    const actions = h(
      'td',
      { class: 'actions', 'data-label': 'Actions' },
      w.status === 'running' ? h('a', { class: 'button small', href: `#/weaver/${w.id}`, 'aria-label': `Terminal of weaver ${short(w.id)}` }, 'Terminal') : null,
      h('a', { class: 'button small', href: `#/audit/${w.id}`, 'aria-label': `Audit of weaver ${short(w.id)}` }, 'Audit'),
      w.status === 'running' ? act('Snapshot', () => api('POST', `/api/weaver/${w.id}/snapshot`, {})) : null,
      w.status === 'running' ? act('Fork', () => api('POST', `/api/weaver/${w.id}/fork`, {})) : null,
    );
    const del = act('Delete', () => api('DELETE', `/api/weaver/${w.id}`));
    del.setAttribute('aria-label', `Delete weaver ${short(w.id)}`);
    del.classList.add('danger');
    actions.append(del);
    return h(
      'tr',
      { 'data-id': w.id, 'data-status': w.status },
      h('th', { scope: 'row', 'data-label': 'Weaver' }, h('code', { title: w.id }, short(w.id)), w.parent_weaver_id ? h('small', {}, ` fork of ${short(w.parent_weaver_id)}`) : null),
      h('td', { 'data-label': 'Image' }, w.image, w.repo ? h('small', { class: 'block' }, `${w.repo}${w.branch ? ` @ ${w.branch}` : ''}`) : null),
      h('td', { 'data-label': 'Status' }, status, w.reason ? h('small', { class: 'block' }, w.reason) : null),
      h('td', { 'data-label': 'Age', class: 'age' }, duration(now - Date.parse(w.created_at))),
      h('td', { 'data-label': 'Time left', class: 'left' }, left),
      actions,
    );
  }

  function render(): void {
    const mine = weavers.filter((w) => w.org_id === s.org.id).sort((a, b) => b.created_at.localeCompare(a.created_at));
    // Keep the focused control across a re-render so keyboard users do not lose their place.
    const focused = document.activeElement;
    const focusKey = focused instanceof HTMLElement && tbody.contains(focused) ? [focused.closest('tr')?.getAttribute('data-id'), focused.textContent] : null;
    tbody.replaceChildren(...mine.map(row));
    empty.hidden = mine.length > 0;
    table.hidden = mine.length === 0;
    if (focusKey) {
      const tr = tbody.querySelector(`tr[data-id="${CSS.escape(focusKey[0] ?? '')}"]`);
      const again = [...(tr?.querySelectorAll<HTMLElement>('a,button') ?? [])].find((x) => x.textContent === focusKey[1]);
      again?.focus();
    }
  }

  async function refresh(): Promise<void> {
    try {
      weavers = (await api<{ weavers: Weaver[] }>('GET', '/api/weavers')).weavers;
      listError.textContent = '';
      render();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return location.reload();
      listError.textContent = e instanceof Error ? e.message : String(e);
    }
  }

  // Poll the list; tick ages and time left every second in between.
  const poll = async () => {
    while (!stopped) {
      await refresh();
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  };
  void poll();
  const tick = setInterval(render, 1000);
  return {
    dispose() {
      stopped = true;
      clearInterval(tick);
    },
  };
}
