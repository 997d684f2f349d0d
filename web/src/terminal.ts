import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import { api, ApiError, type Weaver } from './api.js';
import { clear, h, short } from './dom.js';
import type { Page, Session } from './main.js';

const RECONNECT_FOR_MS = 60_000;

/**
 * A weaver's terminal over the attach WebSocket. Each connection spends a fresh single-use ticket;
 * the position of the last byte shown is kept so a reconnect (?since=) replays only what was missed.
 */
export function terminalPage(main: HTMLElement, _s: Session, id: string): Page {
  document.title = `Terminal ${short(id)} · Loom`;
  const status = h('p', { id: 'term-status', role: 'status', 'aria-live': 'polite' }, 'Connecting…');
  const host = h('div', { id: 'terminal', class: 'terminal' });
  const copy = h('button', { type: 'button', class: 'small' }, 'Copy selection');
  const paste = h('button', { type: 'button', class: 'small' }, 'Paste');
  clear(
    main,
    h('h1', {}, 'Terminal ', h('code', { title: id }, short(id))),
    h('p', { class: 'toolbar' }, h('a', { href: '#/', class: 'button small' }, 'Back to weavers'), copy, paste, h('a', { href: `#/audit/${id}`, class: 'button small' }, 'Audit')),
    status,
    host,
    h('p', { class: 'hint' }, 'Ctrl+Shift+C copies the selection, Ctrl+Shift+V pastes, Ctrl+Shift+L leaves the terminal (Tab and Escape go to the shell).'),
  );

  const term = new Terminal({ cursorBlink: true, scrollback: 5000, fontSize: 15, fontFamily: 'ui-monospace, "DejaVu Sans Mono", monospace', allowProposedApi: false });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(host);
  fit.fit();

  let ws: WebSocket | null = null;
  let pos: number | null = null; // terminal bytes shown so far, in the server's numbering
  let disposed = false;
  let ended = false;
  let lostSince = 0;
  let retry: ReturnType<typeof setTimeout> | undefined;
  const enc = new TextEncoder();

  const say = (text: string, cls = '') => {
    status.textContent = text;
    status.className = cls;
  };
  const send = (data: string | Uint8Array) => {
    if (ws?.readyState === WebSocket.OPEN) ws.send(data);
  };
  const sendSize = () => {
    // the size the server was told, also for tests and assistive tools
    host.dataset['cols'] = String(term.cols);
    host.dataset['rows'] = String(term.rows);
    send(JSON.stringify({ type: 'resize', cols: term.cols, rows: term.rows }));
  };

  term.onData((d) => send(enc.encode(d)));
  term.onResize(sendSize);
  term.attachCustomKeyEventHandler((e) => {
    if (e.type !== 'keydown' || !e.ctrlKey || !e.shiftKey) return true;
    if (e.code === 'KeyC') {
      void navigator.clipboard?.writeText(term.getSelection());
      return false;
    }
    if (e.code === 'KeyV') {
      void navigator.clipboard?.readText().then((t) => term.paste(t));
      return false;
    }
    if (e.code === 'KeyL') {
      copy.focus();
      return false;
    }
    return true;
  });
  copy.addEventListener('click', () => void navigator.clipboard?.writeText(term.getSelection()));
  paste.addEventListener('click', () => {
    void navigator.clipboard?.readText().then((t) => {
      term.paste(t);
      term.focus();
    });
  });
  const onWindowResize = () => fit.fit();
  window.addEventListener('resize', onWindowResize);
  const ro = new ResizeObserver(() => fit.fit());
  ro.observe(host);

  async function connect(): Promise<void> {
    if (disposed || ended) return;
    let ticket: { ticket: string };
    try {
      const w = await api<Weaver>('GET', `/api/weaver/${encodeURIComponent(id)}`);
      if (w.status === 'pending') {
        say('Waiting for the weaver to start…', 'warn');
        retry = setTimeout(() => void connect(), 1000);
        return;
      }
      if (w.status !== 'running') {
        ended = true;
        return say(`Weaver is ${w.status}${w.exit_code !== undefined ? ` (exit code ${w.exit_code})` : ''}${w.reason ? `: ${w.reason}` : ''}.`, 'error');
      }
      ticket = await api<{ ticket: string }>('POST', `/api/weaver/${encodeURIComponent(id)}/attach-ticket`);
    } catch (e) {
      if (e instanceof ApiError && e.status < 500) {
        ended = true;
        return say(e.message, 'error');
      }
      return reconnectLater(e instanceof Error ? e.message : String(e));
    }
    const q = new URLSearchParams({ ticket: ticket.ticket });
    if (pos !== null) q.set('since', String(pos));
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/api/weaver/${encodeURIComponent(id)}/attach?${q}`;
    const sock = new WebSocket(url);
    sock.binaryType = 'arraybuffer';
    ws = sock;
    sock.onopen = () => {
      lostSince = 0;
      say('Connected.', 'ok');
      host.dataset['connected'] = 'true';
      fit.fit();
      sendSize();
      term.focus();
    };
    sock.onmessage = (ev) => {
      if (ev.data instanceof ArrayBuffer) {
        const bytes = new Uint8Array(ev.data);
        term.write(bytes);
        if (pos !== null) pos += bytes.length;
        return;
      }
      let msg: { type?: string; code?: unknown; message?: string; from?: number; to?: number };
      try {
        msg = JSON.parse(String(ev.data)) as typeof msg;
      } catch {
        return;
      }
      if (msg.type === 'replay' && typeof msg.from === 'number') {
        if (pos !== null && msg.from > pos) term.write(`\r\n[loom: ${msg.from - pos} bytes of output were lost while disconnected]\r\n`);
        pos = msg.from;
      } else if (msg.type === 'exit') {
        ended = true;
        host.dataset['exited'] = String(msg.code);
        say(`The weaver exited with code ${String(msg.code)}.`, 'error');
      } else if (msg.type === 'error') {
        if (msg.code === 'credential_revoked' || msg.code === 'access_revoked') ended = true;
        say(msg.message ?? 'error', 'error');
      }
    };
    sock.onclose = (ev) => {
      host.dataset['connected'] = 'false';
      if (ws !== sock) return;
      ws = null;
      if (disposed || ended) return;
      if (ev.code === 4401 || ev.code === 4403) {
        ended = true;
        return say(ev.reason === 'credential_revoked' ? 'Your session ended: sign in again.' : 'You no longer have access to this weaver.', 'error');
      }
      reconnectLater('connection lost');
    };
  }

  function reconnectLater(why: string): void {
    if (!lostSince) lostSince = Date.now();
    if (Date.now() - lostSince > RECONNECT_FOR_MS) return say(`Disconnected: ${why}. Reload to try again.`, 'error');
    say(`${why[0]!.toUpperCase()}${why.slice(1)}; reconnecting…`, 'warn');
    retry = setTimeout(() => void connect(), 1000);
  }

  void connect();
  return {
    dispose() {
      disposed = true;
      clearTimeout(retry);
      window.removeEventListener('resize', onWindowResize);
      ro.disconnect();
      ws?.close(1000, 'page closed');
      term.dispose();
    },
  };
}
