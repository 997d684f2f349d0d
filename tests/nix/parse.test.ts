// Every .nix file in the repository parses with nix-instantiate (Debian's nix-bin).
import t from 'tap';
import { relative } from 'node:path';
import { CANNOT_RUN_HERE, REPO, nixFiles, nixParse, requireNix } from './nix.js';

t.comment(requireNix());
t.comment(CANNOT_RUN_HERE);

const files = nixFiles();
const rel = files.map((f) => relative(REPO, f));

t.test('the expected Nix files exist', async (t) => {
  for (const f of [
    'flake.nix',
    'nix/loom.nix',
    'nix/images.nix',
    'nixos-modules/loom-k3s.nix',
    'nixos-modules/loom-server.nix',
    'nixos-modules/lib/env.nix',
    'nixos-modules/lib/options.nix',
    'nixos-modules/lib/unit.nix',
    'nixos-modules/lib/k3s.nix',
    'nix/npm-lock.nix',
    'nix/npm-deps.nix',
    'tests/nix/fixtures/standin-nixpkgs/flake.nix',
    'tests/nix/fixtures/standin-nixpkgs/default.nix',
    'tests/nix/fixtures/standin-nixpkgs/modules.nix',
    'tests/nix/fixtures/standin-nixpkgs/nixos.nix',
  ]) {
    t.ok(rel.includes(f), f);
  }
});

for (const [i, f] of files.entries()) {
  t.test(`parses: ${rel[i]}`, async (t) => {
    t.doesNotThrow(() => nixParse(f));
  });
}
