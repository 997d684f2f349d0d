import type { Command } from 'commander';
import { spawn } from 'node:child_process';
import { createReadStream, statSync } from 'node:fs';
import { Readable } from 'node:stream';
import { ApiClient, CliError } from './client.js';
import { client, globals } from './context.js';
import { Progress, interactive, printJson, printTable } from './output.js';

interface ImageView {
  name: string;
  digest: string;
  source: string;
  importedAt: string;
  size?: number;
  in_use?: number;
  users?: string[];
}

const mib = (n: number | undefined): string => (n === undefined ? '-' : n >= 1073741824 ? `${(n / 1073741824).toFixed(1)} GiB` : `${(n / 1048576).toFixed(1)} MiB`);

/** Reads an NDJSON response line by line. */
async function* ndjson(body: ReadableStream<Uint8Array>): AsyncGenerator<Record<string, unknown>> {
  const dec = new TextDecoder();
  let buf = '';
  for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
    buf += dec.decode(chunk, { stream: true });
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const l = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (l) yield JSON.parse(l) as Record<string, unknown>;
    }
  }
  if (buf.trim()) yield JSON.parse(buf) as Record<string, unknown>;
}

export function registerImageCommands(program: Command): void {
  const image = program.command('image').description('images of the local backend');

  image
    .command('import <path>')
    .description('import an image tarball (docker save / OCI archive) or an OCI layout directory (server admins)')
    .option('--name <ref>', 'name to store it under (default: the name recorded in the archive)')
    .option('--json', 'output JSON')
    .action(async (path: string, opts: { name?: string }, cmd: Command) => {
      const g = globals(cmd);
      let st;
      try {
        st = statSync(path);
      } catch {
        throw new CliError(`${path}: no such file or directory`);
      }
      const api = client(cmd);
      api.requireToken();
      let source: Readable;
      let size = 0;
      if (st.isDirectory()) {
        // An OCI layout directory travels as a tar of its contents.
        const tar = spawn('tar', ['-C', path, '-cf', '-', '.'], { stdio: ['ignore', 'pipe', 'inherit'] });
        source = tar.stdout;
      } else {
        size = st.size;
        source = createReadStream(path);
      }
      const progress = new Progress(interactive(g.json));
      let sent = 0;
      source.on('data', (c: Buffer) => {
        sent += c.length;
        progress.update(`Uploading ${(sent / 1048576).toFixed(1)} MiB${size ? ` of ${(size / 1048576).toFixed(1)} MiB` : ''}…`);
      });
      const q = opts.name ? `?name=${encodeURIComponent(opts.name)}` : '';
      const img = await api.request<ImageView>('POST', `/api/images${q}`, {
        rawBody: Readable.toWeb(source) as unknown as RequestInit['body'],
        headers: { 'content-type': 'application/x-tar' },
      });
      progress.done();
      if (g.json) return printJson(img);
      process.stdout.write(`Imported ${img.name} (${img.digest})\n`);
    });

  image
    .command('ls')
    .alias('list')
    .description('list images in the local store: size and how many weavers, layers or snapshots use each')
    .option('--json', 'output JSON')
    .action(async (_o, cmd: Command) => {
      const { images } = await client(cmd).get<{ images: ImageView[] }>('/api/images');
      if (globals(cmd).json) return printJson(images);
      printTable(['NAME', 'DIGEST', 'SIZE', 'USERS', 'SOURCE'], images.map((i) => [i.name, i.digest.slice(0, 19), mib(i.size), String(i.in_use ?? '-'), i.source]));
    });

  image
    .command('build <name>')
    .description('build an image from Debian packages with mmdebstrap (server admins), e.g. loom image build acme/py:1 --packages git,python3')
    .requiredOption('--packages <list>', 'comma-separated Debian packages (ca-certificates is always added)')
    .option('--suite <suite>', 'Debian suite', 'bookworm')
    .option('--source-date-epoch <secs>', 'clamp file times to this (same inputs, same archive: same digest)')
    .option('--json', 'output JSON')
    .action(async (name: string, opts: { packages: string; suite: string; sourceDateEpoch?: string }, cmd: Command) => {
      const g = globals(cmd);
      const packages = opts.packages.split(',').map((p) => p.trim()).filter(Boolean);
      let epoch: number | undefined;
      if (opts.sourceDateEpoch !== undefined) {
        epoch = Number(opts.sourceDateEpoch);
        if (!/^\d+$/.test(opts.sourceDateEpoch)) throw new CliError('--source-date-epoch must be a whole number of seconds');
      }
      const api = client(cmd);
      const res = await api.raw('POST', '/api/images/build', { body: { name, suite: opts.suite, packages, ...(epoch !== undefined ? { source_date_epoch: epoch } : {}) } });
      if (!res.ok) throw await ApiClient.errorOf(res);
      const progress = new Progress(interactive(g.json));
      const t0 = Date.now();
      let done: ImageView | null = null;
      for await (const ev of ndjson(res.body!)) {
        if (ev['type'] === 'progress') {
          const secs = Math.round((Date.now() - t0) / 1000);
          progress.update(`Building ${name} (${secs} s): ${String(ev['line'] ?? ev['phase']).slice(0, 100)}`);
        } else if (ev['type'] === 'error') {
          progress.done();
          const e = ev['error'] as { code: string; message: string };
          throw new CliError(e.message, 1, e.code);
        } else if (ev['type'] === 'done') {
          done = ev['image'] as ImageView;
        }
      }
      progress.done();
      if (!done) throw new CliError('the build stream ended without a result (server restarted?)');
      if (g.json) return printJson(done);
      process.stdout.write(`Built ${done.name} (${done.digest}, ${mib(done.size)}) in ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
    });

  image
    .command('pull <ref>')
    .description('pull an image from a registry with skopeo (server admins)')
    .option('--json', 'output JSON')
    .action(async (ref: string, _o, cmd: Command) => {
      const g = globals(cmd);
      const progress = new Progress(interactive(g.json));
      progress.update(`Pulling ${ref}…`);
      const img = await client(cmd).request<ImageView>('POST', '/api/images/pull', { body: { name: ref } }).finally(() => progress.done());
      if (g.json) return printJson(img);
      process.stdout.write(`Pulled ${img.name} (${img.digest})\n`);
    });

  image
    .command('rm <name>')
    .alias('remove')
    .description('remove an image (server admins); refused while a weaver, layer or snapshot uses it')
    .action(async (name: string, _o, cmd: Command) => {
      await client(cmd).request('DELETE', `/api/images?name=${encodeURIComponent(name)}`);
      process.stdout.write(`Removed ${name}\n`);
    });

  image
    .command('prune')
    .description('remove every image nothing uses (server admins); the default images stay')
    .option('--json', 'output JSON')
    .action(async (_o, cmd: Command) => {
      const r = await client(cmd).request<{ removed: string[]; kept_in_use: { name: string; users: number }[]; freed_bytes: number }>('POST', '/api/images/prune');
      if (globals(cmd).json) return printJson(r);
      for (const n of r.removed) process.stdout.write(`Removed ${n}\n`);
      process.stdout.write(`Freed ${mib(r.freed_bytes)}${r.kept_in_use.length ? `; kept ${r.kept_in_use.length} in use` : ''}\n`);
    });
}
