/** A tiny DOM builder: text is always set as text, never parsed as HTML. */
type Attrs = Record<string, string | number | boolean | ((e: Event) => void) | undefined | null>;
type Child = Node | string | number | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  apply(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
export function s(tag: string, attrs: Attrs = {}, ...children: Child[]): SVGElement {
  const el = document.createElementNS(SVG_NS, tag);
  apply(el, attrs);
  append(el, children);
  return el as SVGElement;
}

function apply(el: Element, attrs: Attrs): void {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (typeof v === 'function') el.addEventListener(k.replace(/^on/, ''), v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
}

function append(el: Element, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

export function clear(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}

/** "3h 4m", "5m 2s", "12s" */
export function duration(ms: number): string {
  if (!Number.isFinite(ms)) return '-';
  const sgn = ms < 0 ? '-' : '';
  let t = Math.floor(Math.abs(ms) / 1000);
  const d = Math.floor(t / 86400);
  t -= d * 86400;
  const hh = Math.floor(t / 3600);
  t -= hh * 3600;
  const m = Math.floor(t / 60);
  const sec = t - m * 60;
  if (d) return `${sgn}${d}d ${hh}h`;
  if (hh) return `${sgn}${hh}h ${m}m`;
  if (m) return `${sgn}${m}m ${sec}s`;
  return `${sgn}${sec}s`;
}

export const short = (id: string) => id.slice(0, 8);
