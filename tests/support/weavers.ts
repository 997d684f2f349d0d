/** Weaver helpers shared by the end-to-end tests that drive the real server. */
import type { TestServer } from './server.js';
import { waitUntil } from './attach.js';

type WeaverLike = { id: string; status: string; reason?: string | null };

/** Creates a weaver and waits until it runs; a refused create or a failed weaver throws with the server's words. */
export async function createRunning<W extends WeaverLike>(srv: TestServer, tok: string, body: Record<string, unknown> = {}, timeoutMs = 60_000): Promise<W> {
  const r = await srv.api<W>('POST', '/api/weaver', tok, body);
  if (r.status !== 202) throw new Error(`create: ${r.status} ${JSON.stringify(r.body)}`);
  return waitUntil(async () => {
    const g = await srv.api<W>('GET', `/api/weaver/${r.body.id}`, tok);
    if (g.body.status === 'failed') throw new Error(`failed: ${g.body.reason}`);
    return g.body.status === 'running' ? g.body : null;
  }, 'weaver running', timeoutMs);
}
