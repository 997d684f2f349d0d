/**
 * xterm.js writes its layout and theme rules into <style> elements, which the console's
 * Content-Security-Policy (style-src 'self', no 'unsafe-inline') does not apply. Mirroring each
 * such element into a constructed stylesheet (CSSOM, which CSP does not govern) keeps the policy
 * strict and the terminal laid out.
 */
const sheets = new Map<HTMLStyleElement, CSSStyleSheet>();

function sync(el: HTMLStyleElement): void {
  let sheet = sheets.get(el);
  if (!sheet) {
    sheet = new CSSStyleSheet();
    sheets.set(el, sheet);
    document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
  }
  sheet.replaceSync(el.textContent ?? '');
}

function drop(el: HTMLStyleElement): void {
  const sheet = sheets.get(el);
  if (!sheet) return;
  sheets.delete(el);
  document.adoptedStyleSheets = document.adoptedStyleSheets.filter((x) => x !== sheet);
}

export function mirrorInlineStyles(): void {
  new MutationObserver((records) => {
    for (const r of records) {
      const target = r.target instanceof HTMLStyleElement ? r.target : r.target.parentNode instanceof HTMLStyleElement ? r.target.parentNode : null;
      if (target) sync(target);
      for (const n of r.addedNodes) {
        if (n instanceof HTMLStyleElement) sync(n);
        else if (n instanceof Element) n.querySelectorAll('style').forEach(sync);
      }
      for (const n of r.removedNodes) {
        if (n instanceof HTMLStyleElement) drop(n);
        else if (n instanceof Element) n.querySelectorAll('style').forEach(drop);
      }
    }
  }).observe(document.documentElement, { subtree: true, childList: true, characterData: true });
}
