import type { Command } from 'commander';
import { spawn } from 'node:child_process';
import { createReadStream, statSync } from 'node:fs';
import { Readable } from 'node:stream';
import { CliError } from './client.js';
import { client, globals } from './context.js';
import { Progress, interactive, printJson, printTable } from './output.js';

interface ImageView {
  name: string;
  digest: string;
  source: string;
  importedAt: string;
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
    .description('list images in the local store')
    .option('--json', 'output JSON')
    .action(async (_o, cmd: Command) => {
      const { images } = await client(cmd).get<{ images: ImageView[] }>('/api/images');
      if (globals(cmd).json) return printJson(images);
      printTable(['NAME', 'DIGEST', 'SOURCE', 'IMPORTED'], images.map((i) => [i.name, i.digest.slice(0, 19), i.source, i.importedAt]));
    });
}
