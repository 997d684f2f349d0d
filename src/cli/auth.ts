import type { Command } from 'commander';
import { ApiClient, CliError } from './client.js';
import { globals } from './context.js';
import { removeCredential, saveCredential } from './credentials.js';
import { printJson } from './output.js';

interface Me {
  id: string;
  username: string;
  display_name: string;
  is_admin: boolean;
}

type Poll = { status: 'pending' | 'expired' | 'denied' } | { access_token: string };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function registerAuthCommands(program: Command): void {
  program
    .command('login')
    .description('sign in with the device flow (or save an API token with --token)')
    .option('--token <token>', 'an API token (from `loom-server admin token` or POST /api/tokens)')
    .action(async (opts: { token?: string }, cmd: Command) => {
      const g = globals(cmd);
      let token = opts.token ?? null;
      if (!token) {
        const anon = new ApiClient({ serverUrl: g.serverUrl, token: null });
        const s = await anon.request<{ device_code: string; user_code: string; verification_uri: string; verification_uri_complete: string; expires_in: number; interval: number }>(
          'POST',
          '/auth/device/start',
          { body: {}, auth: false },
        );
        process.stderr.write(`To sign in, open ${s.verification_uri} and enter the code:\n\n    ${s.user_code}\n\n(or open ${s.verification_uri_complete})\nWaiting for approval…\n`);
        const deadline = Date.now() + s.expires_in * 1000;
        while (!token) {
          if (Date.now() > deadline) throw new CliError('the login code expired; run `loom login` again');
          await sleep(s.interval * 1000);
          const r = await anon.request<Poll>('POST', '/auth/device/poll', { body: { device_code: s.device_code }, auth: false });
          if ('access_token' in r) token = r.access_token;
          else if (r.status === 'expired') throw new CliError('the login code expired; run `loom login` again');
          else if (r.status === 'denied') throw new CliError('the login was denied');
        }
      }
      const me = await new ApiClient({ serverUrl: g.serverUrl, token }).get<Me>('/api/me');
      saveCredential(g.serverUrl, { access_token: token, username: me.username, saved_at: new Date().toISOString() });
      if (g.json) printJson({ server_url: g.serverUrl, username: me.username });
      else process.stdout.write(`Logged in to ${g.serverUrl} as ${me.username}\n`);
    });

  program
    .command('logout')
    .description('revoke the saved token and forget it')
    .action(async (_o, cmd: Command) => {
      const g = globals(cmd);
      const c = new ApiClient({ serverUrl: g.serverUrl });
      if (!c.token) throw new CliError(`not logged in to ${g.serverUrl}`);
      // Revoke on the server when it answers; forget locally either way.
      await c.request('POST', '/auth/logout', { body: {} }).catch(() => undefined);
      removeCredential(g.serverUrl);
      process.stdout.write(`Logged out of ${g.serverUrl}\n`);
    });

  program
    .command('whoami')
    .description('show the signed-in user')
    .option('--json', 'output JSON')
    .action(async (_o, cmd: Command) => {
      const g = globals(cmd);
      const me = await new ApiClient({ serverUrl: g.serverUrl }).get<Me>('/api/me');
      if (g.json) printJson(me);
      else process.stdout.write(`${me.username}${me.is_admin ? ' (admin)' : ''} on ${g.serverUrl}\n`);
    });
}
