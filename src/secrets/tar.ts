/** A minimal ustar writer: regular files only, for the bundle a Kubernetes init container unpacks. */

function octal(n: number, width: number): string {
  return n.toString(8).padStart(width - 1, '0') + '\0';
}

export function tarFiles(files: { name: string; data: Buffer; mode: number; uid: number; gid: number }[]): Buffer {
  const blocks: Buffer[] = [];
  const mtime = Math.floor(Date.now() / 1000);
  for (const f of files) {
    if (!/^[A-Za-z0-9_.-]{1,99}$/.test(f.name)) throw new Error(`tar: bad file name ${f.name}`);
    const h = Buffer.alloc(512);
    h.write(f.name, 0, 100, 'ascii');
    h.write(octal(f.mode, 8), 100, 8, 'ascii');
    h.write(octal(f.uid, 8), 108, 8, 'ascii');
    h.write(octal(f.gid, 8), 116, 8, 'ascii');
    h.write(octal(f.data.length, 12), 124, 12, 'ascii');
    h.write(octal(mtime, 12), 136, 12, 'ascii');
    h.write('        ', 148, 8, 'ascii');
    h.write('0', 156, 1, 'ascii');
    h.write('ustar\0', 257, 6, 'ascii');
    h.write('00', 263, 2, 'ascii');
    let sum = 0;
    for (const b of h) sum += b;
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'ascii');
    blocks.push(h, f.data, Buffer.alloc((512 - (f.data.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}
