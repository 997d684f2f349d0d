import { startServer } from '../support/server.js';
import { waitUntil } from '../support/attach.js';
import { execFileSync } from 'node:child_process';
const srv = await startServer();
const tok = await srv.token('alice');
try {
  const r = await srv.api<any>('POST', '/api/weaver', tok, {});
  const id = r.body.id;
  await waitUntil(async () => (await srv.api<any>('GET', `/api/weaver/${id}`, tok)).body.status === 'running' || null, 'running');
  const ts: number[] = [];
  for (let i = 0; i < 20; i++) { const t0 = performance.now(); await srv.api('POST', `/api/weaver/${id}/exec`, tok, { command: ['true'] }); ts.push(performance.now() - t0); }
  console.log('api', ts.map((x) => x.toFixed(0)).join(' '));
  const rs: number[] = [];
  for (let i = 0; i < 10; i++) { const t0 = performance.now(); execFileSync('runc', ['--root', `${srv.dataDir}/local/runc`, 'exec', id, 'true']); rs.push(performance.now() - t0); }
  console.log('runc', rs.map((x) => x.toFixed(0)).join(' '));
  await srv.api('DELETE', `/api/weaver/${id}`, tok);
} finally { await srv.stop(); }
