/**
 * `loom wg devices list|register|revoke`: this machine's WireGuard key lives in ~/.loom/wg-key
 * (mode 0600, made on first use); the server only ever gets its public half.
 */
import { closeSync, fstatSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import { homedir, hostname } from 'node:os';
import { dirname, join } from 'node:path';
import type { Command } from 'commander';
import { CliError } from './client.js';
import { client, globals } from './context.js';
import { printJson, printTable } from './output.js';
import { newKeyPair, publicKeyFor } from '../tunnel/keys.js';

interface Device {
  id: string;
  name: string;
  public_key: string;
  created_at: string;
}

export function wgKeyPath(): string {
  return join(process.env['LOOM_CONFIG_DIR'] ?? join(homedir(), '.loom'), 'wg-key');
}

/** Reads this machine's private key, making it (0600, exclusively) when there is none. A key others can read is refused. */
export function deviceKey(create: boolean): { privateKey: Buffer; publicKey: Buffer; path: string } {
  const path = wgKeyPath();
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new CliError(`cannot read ${path}: ${(e as Error).message}`);
    if (!create) throw new CliError(`no WireGuard key at ${path}: run \`loom wg devices register\``);
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    const k = newKeyPair();
    try {
      const w = openSync(path, 'wx', 0o600);
      writeSync(w, k.privateKey.toString('base64') + '\n');
      closeSync(w);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new CliError(`cannot write ${path}: ${(err as Error).message}`);
    }
    return deviceKey(false);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new CliError(`${path} is not a regular file`);
    if (st.mode & 0o077) throw new CliError(`${path} is readable by others (mode ${(st.mode & 0o777).toString(8)}): run \`chmod 600 ${path}\``);
    const text = readFileSync(fd, 'utf8').trim();
    const priv = Buffer.from(text, 'base64');
    if (priv.length !== 32 || priv.toString('base64') !== text) throw new CliError(`${path} does not hold a WireGuard private key (32 bytes, base64)`);
    return { privateKey: priv, publicKey: publicKeyFor(priv), path };
  } finally {
    closeSync(fd);
  }
}

export function registerWgCommands(program: Command): void {
  const wg = program.command('wg').description('WireGuard tunnels to weavers: this machine\'s device key');
  const devices = wg.command('devices').description('your devices (public keys the server lets into tunnels)');

  devices
    .command('list')
    .alias('ls')
    .description('list your registered devices')
    .option('--json', 'JSON output')
    .action(async (_o: unknown, cmd: Command) => {
      const { devices: list } = await client(cmd).get<{ devices: Device[] }>('/api/wg/devices');
      if (globals(cmd).json) return printJson(list);
      let mine = '';
      try {
        mine = deviceKey(false).publicKey.toString('base64');
      } catch {
        /* no key on this machine */
      }
      printTable(['ID', 'NAME', 'PUBLIC KEY', 'CREATED', ''], list.map((d) => [d.id, d.name, d.public_key, d.created_at, d.public_key === mine ? '(this machine)' : '']));
    });

  devices
    .command('register')
    .description('register this machine (makes ~/.loom/wg-key, mode 0600, on first use; sends only the public key)')
    .option('--name <name>', 'device name (default: this host\'s name)')
    .option('--json', 'JSON output')
    .action(async (o: { name?: string }, cmd: Command) => {
      const name = o.name ?? hostname().replace(/[^A-Za-z0-9._-]/g, '-').replace(/^[^A-Za-z0-9]+/, '').slice(0, 63);
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(name)) throw new CliError(`invalid device name ${JSON.stringify(name.slice(0, 80))}: 1–63 letters, digits, ".", "_" or "-", starting with a letter or digit`);
      const api = client(cmd);
      api.requireToken();
      const key = deviceKey(true);
      const d = await api.post<Device>('/api/wg/devices', { name, public_key: key.publicKey.toString('base64') });
      if (globals(cmd).json) return printJson(d);
      process.stdout.write(`registered ${d.name} (${d.id}), public key ${d.public_key}\n`);
    });

  devices
    .command('revoke')
    .description('revoke a device: its tunnels are cut at once')
    .argument('<device>', 'device id or name')
    .action(async (dev: string, _o: unknown, cmd: Command) => {
      await client(cmd).delete(`/api/wg/devices/${encodeURIComponent(dev)}`);
      if (!globals(cmd).json) process.stdout.write(`revoked ${dev}\n`);
    });
}
