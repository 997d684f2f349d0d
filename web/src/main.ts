import '@xterm/xterm/css/xterm.css';
import '../styles.css';
import { api, ApiError, setCsrf, type Me, type Org } from './api.js';
import { clear, h } from './dom.js';
import { mirrorInlineStyles } from './style-shim.js';
import { weaversPage } from './weavers.js';
import { terminalPage } from './terminal.js';
import { lineagePage } from './lineage.js';
import { auditPage } from './audit.js';

export interface Page {
  /** Called when the route changes: stop timers, close sockets. */
  dispose(): void;
}
export interface Session {
  me: Me;
  orgs: Org[];
  org: Org;
  selectOrg(id: string): void;
}

const top = document.getElementById('top')!;
const main = document.getElementById('main')!;
let current: Page | null = null;
let session: Session | null = null;

function signInPage(message?: string): void {
  document.title = 'Sign in · Loom';
  clear(top, h('span', { class: 'brand' }, 'Loom'));
  const err = h('p', { class: 'error', role: 'alert', id: 'signin-error' }, message ?? '');
  const user = h('input', { id: 'username', name: 'username', autocomplete: 'username', required: true });
  const pass = h('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const form = h(
    'form',
    { class: 'card narrow', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, 'Sign in'),
    err,
    h('label', { for: 'username' }, 'Username'),
    user,
    h('label', { for: 'password' }, 'Password'),
    pass,
    h('button', { type: 'submit' }, 'Sign in'),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    err.textContent = '';
    api<Me>('POST', '/console/session', { username: user.value, password: pass.value })
      .then(() => start())
      .catch((x: unknown) => (err.textContent = x instanceof Error ? x.message : String(x)));
  });
  clear(main, form);
  user.focus();
}

function nav(): void {
  if (!session) return;
  const s = session;
  const orgSel = h('select', { id: 'org', 'aria-label': 'Organisation' });
  for (const o of s.orgs) orgSel.append(h('option', { value: o.id, selected: o.id === s.org.id }, o.is_personal && !/personal/i.test(o.name) ? `${o.name} (personal)` : o.name));
  orgSel.addEventListener('change', () => s.selectOrg(orgSel.value));
  const signOut = h('button', { type: 'button', class: 'link' }, 'Sign out');
  signOut.addEventListener('click', () => {
    api('DELETE', '/console/session').finally(() => {
      session = null;
      location.hash = '';
      signInPage('Signed out.');
    });
  });
  clear(
    top,
    h('a', { class: 'brand', href: '#/' }, 'Loom'),
    h('nav', { 'aria-label': 'Main' }, h('a', { href: '#/' }, 'Weavers'), h('a', { href: '#/lineage' }, 'Lineage')),
    h('span', { class: 'who' }, orgSel, h('span', { id: 'whoami' }, s.me.user.username), signOut),
  );
}

function route(): void {
  if (!session) return;
  current?.dispose();
  current = null;
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const [name, id] = parts;
  const s = session;
  clear(main);
  if (name === 'weaver' && id) current = terminalPage(main, s, id);
  else if (name === 'audit' && id) current = auditPage(main, s, id);
  else if (name === 'lineage') current = lineagePage(main, s, id);
  else current = weaversPage(main, s);
  main.focus({ preventScroll: true });
}

async function start(): Promise<void> {
  try {
    const me = await api<Me>('GET', '/console/session');
    setCsrf(me.csrf_token);
    const { orgs } = await api<{ orgs: Org[] }>('GET', '/api/orgs');
    const saved = sessionStorage.getItem('loom.org');
    const org = orgs.find((o) => o.id === saved) ?? orgs.find((o) => o.is_personal) ?? orgs[0];
    if (!org) throw new ApiError(403, 'no_org', 'you belong to no organisation');
    session = {
      me,
      orgs,
      org,
      selectOrg(id) {
        const o = orgs.find((x) => x.id === id);
        if (!o || !session) return;
        session.org = o;
        sessionStorage.setItem('loom.org', o.id);
        route();
      },
    };
    nav();
    route();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return signInPage();
    clear(main, h('p', { class: 'error', role: 'alert' }, e instanceof Error ? e.message : String(e)));
  }
}

mirrorInlineStyles();
window.addEventListener('hashchange', route);
void start();
