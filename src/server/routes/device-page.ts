import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import type { AppContext } from '../context.js';
import { cookieToken } from '../http/auth.js';
import { isLoomError } from '../../common/errors.js';
import type { User } from '../auth/users.js';

const COOKIE = 'loom_web';

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

function page(title: string, body: string): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>${esc(title)} · Loom</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem;color:#222}
input{font:inherit;padding:.4rem;width:100%;box-sizing:border-box;margin:.2rem 0 .8rem}button{font:inherit;padding:.4rem 1rem;margin-right:.5rem}
.msg{padding:.6rem;border-radius:4px;background:#eef}.err{background:#fee}</style></head>
<body><h1>${esc(title)}</h1>${body}</body></html>`;
}

/**
 * /device: where a signed-in user types the code their CLI shows and approves it.
 * Sign-in sets an HttpOnly, SameSite=Strict cookie holding a web session token, which also
 * keeps other sites from posting approvals on the user's behalf.
 */
export const devicePageRoutes: FastifyPluginAsync<{ ctx: AppContext }> = async (app, { ctx }) => {
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: 8192 }, (_req, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(body as string)));
  });

  const signedIn = (req: FastifyRequest): User | null => {
    const t = cookieToken(req, COOKIE);
    const info = t ? ctx.tokens.verify(t) : null;
    return info ? ctx.users.byId(info.user_id) : null;
  };
  const html = (reply: FastifyReply, status: number, title: string, body: string) =>
    reply.status(status).header('content-type', 'text/html; charset=utf-8').header('cache-control', 'no-store').header('x-frame-options', 'DENY').send(page(title, body));

  const loginForm = (code: string, error?: string) => `
${error ? `<p class="msg err">${esc(error)}</p>` : '<p>Sign in to approve a device.</p>'}
<form method="post" action="/device/login">
<input type="hidden" name="code" value="${esc(code)}">
<label>Username<input name="username" autocomplete="username" required></label>
<label>Password<input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button></form>`;

  const codeForm = (user: User, code: string, msg?: { text: string; error: boolean }) => `
<p>Signed in as <b>${esc(user.username)}</b>.</p>
${msg ? `<p class="msg${msg.error ? ' err' : ''}">${esc(msg.text)}</p>` : '<p>Enter the code shown by <code>loom login</code>.</p>'}
<form method="post" action="/device/approve">
<label>Code<input name="user_code" value="${esc(code)}" placeholder="ABCD-EFGH" autocomplete="off" required></label>
<button type="submit" name="decision" value="approve">Approve</button>
<button type="submit" name="decision" value="deny">Deny</button></form>`;

  app.get('/device', async (req, reply) => {
    const code = String((req.query as Record<string, unknown>)['code'] ?? '').slice(0, 20);
    const user = signedIn(req);
    return user ? html(reply, 200, 'Approve device', codeForm(user, code)) : html(reply, 200, 'Sign in', loginForm(code));
  });

  // Wrong passwords count per account and per client address (auth/login-limit.ts); a blocked
  // key gets 429 with Retry-After, even with the right password, so a guess is never confirmed.
  const limited = (reply: FastifyReply, code: string, keys: string[]) => {
    const wait = ctx.loginLimiter.retryAfter(keys);
    if (wait === 0) return null;
    reply.header('retry-after', String(wait));
    return html(reply, 429, 'Sign in', loginForm(code, `Too many failed sign-ins. Try again in ${wait} seconds.`));
  };

  app.post('/device/login', async (req, reply) => {
    const b = (req.body ?? {}) as Record<string, string>;
    const code = String(b['code'] ?? '').slice(0, 20);
    const username = String(b['username'] ?? '').slice(0, 200);
    const keys = [`user:${username.toLowerCase()}`, `addr:${req.ip}`];
    const blocked = limited(reply, code, keys);
    if (blocked) return blocked;
    const user = await ctx.users.verifyPassword(username, String(b['password'] ?? ''));
    if (!user) {
      ctx.loginLimiter.fail(keys);
      ctx.log.warn({ username, ip: req.ip }, 'device page: failed sign-in');
      return html(reply, 401, 'Sign in', loginForm(code, 'Wrong username or password.'));
    }
    ctx.loginLimiter.succeed(keys[0]!);
    const { token } = ctx.tokens.issue(user.id, 'web', 'device page', { expiresInSeconds: 3600 });
    reply.header('set-cookie', `${COOKIE}=${encodeURIComponent(token)}; Path=/; HttpOnly; SameSite=Strict; Max-Age=3600`);
    return reply.redirect(`/device${code ? `?code=${encodeURIComponent(code)}` : ''}`, 303);
  });

  app.post('/device/approve', async (req, reply) => {
    const user = signedIn(req);
    const b = (req.body ?? {}) as Record<string, string>;
    const code = String(b['user_code'] ?? '').slice(0, 20);
    if (!user) return html(reply, 401, 'Sign in', loginForm(code, 'Your session ended; sign in again.'));
    const approve = b['decision'] !== 'deny';
    // Guessing user codes is limited like passwords (per signed-in user and per address).
    const keys = [`approve:${user.id}`, `addr:${req.ip}`];
    const wait = ctx.loginLimiter.retryAfter(keys);
    if (wait > 0) {
      reply.header('retry-after', String(wait));
      return html(reply, 429, 'Approve device', codeForm(user, code, { text: `Too many wrong codes. Try again in ${wait} seconds.`, error: true }));
    }
    try {
      ctx.device.decide(code, user.id, approve);
    } catch (e) {
      if (isLoomError(e)) {
        ctx.loginLimiter.fail(keys);
        return html(reply, e.status, 'Approve device', codeForm(user, code, { text: e.message, error: true }));
      }
      throw e;
    }
    ctx.log.info({ user: user.username, approve }, 'device code decided');
    return html(reply, 200, approve ? 'Device approved' : 'Device denied', `<p class="msg">${approve ? 'Approved. You can return to your terminal.' : 'Denied. The CLI will not be signed in.'}</p>`);
  });
};
