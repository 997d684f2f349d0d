import type { Command } from 'commander';
import { CliError } from './client.js';
import { client, globals } from './context.js';
import { printJson, printTable } from './output.js';

export interface OrgView {
  id: string;
  name: string;
  slug: string;
  is_personal: boolean;
  role: string;
}

/** --org takes a UUID, a slug or a name; resolved among the user's own orgs. */
export async function resolveOrg(cmd: Command, ref: string): Promise<OrgView> {
  const { orgs } = await client(cmd).get<{ orgs: OrgView[] }>('/api/orgs');
  const byId = orgs.find((o) => o.id === ref) ?? orgs.find((o) => o.slug === ref);
  if (byId) return byId;
  const byName = orgs.filter((o) => o.name === ref);
  if (byName.length === 1) return byName[0]!;
  if (byName.length > 1) throw new CliError(`org name "${ref}" is ambiguous; use its slug or id`);
  throw new CliError(`org "${ref}" not found among your orgs (see \`loom org list\`)`);
}

export function registerOrgCommands(program: Command): void {
  const org = program.command('org').description('organizations');

  org
    .command('list')
    .alias('ls')
    .description('list your organizations')
    .option('--json', 'output JSON')
    .action(async (_o, cmd: Command) => {
      const { orgs } = await client(cmd).get<{ orgs: OrgView[] }>('/api/orgs');
      if (globals(cmd).json) return printJson(orgs);
      printTable(
        ['ID', 'SLUG', 'NAME', 'ROLE', 'PERSONAL'],
        orgs.map((o) => [o.id, o.slug, o.name, o.role, o.is_personal ? 'yes' : 'no']),
      );
    });

  org
    .command('create <name>')
    .description('create a team organization (you become its owner)')
    .option('--slug <slug>', 'URL-safe short name (default: from the name)')
    .option('--json', 'output JSON')
    .action(async (name: string, opts: { slug?: string }, cmd: Command) => {
      const o = await client(cmd).post<OrgView>('/api/orgs', { name, ...(opts.slug ? { slug: opts.slug } : {}) });
      if (globals(cmd).json) return printJson(o);
      process.stdout.write(`Created org ${o.slug} (${o.id})\n`);
    });

  org
    .command('members <org>')
    .description('list the members of an organization')
    .option('--json', 'output JSON')
    .action(async (ref: string, _o, cmd: Command) => {
      const o = await resolveOrg(cmd, ref);
      const { members } = await client(cmd).get<{ members: { user_id: string; username: string; role: string }[] }>(`/api/orgs/${o.id}/members`);
      if (globals(cmd).json) return printJson(members);
      printTable(['USER', 'ROLE', 'ID'], members.map((m) => [m.username, m.role, m.user_id]));
    });

  org
    .command('add-member <org> <username>')
    .description('add a user to an organization')
    .option('--role <role>', 'owner, admin or member', 'member')
    .action(async (ref: string, username: string, opts: { role: string }, cmd: Command) => {
      const o = await resolveOrg(cmd, ref);
      await client(cmd).post(`/api/orgs/${o.id}/members`, { username, role: opts.role });
      process.stdout.write(`Added ${username} to ${o.slug} as ${opts.role}\n`);
    });

  org
    .command('remove-member <org> <username>')
    .description('remove a user from an organization')
    .action(async (ref: string, username: string, _o, cmd: Command) => {
      const o = await resolveOrg(cmd, ref);
      await client(cmd).delete(`/api/orgs/${o.id}/members/${encodeURIComponent(username)}`);
      process.stdout.write(`Removed ${username} from ${o.slug}\n`);
    });
}
