# What the packaging reads from package-lock.json, and nothing more (pure: builtins only;
# tests/nix/npm-lock.test.ts evaluates it over the real lockfile).
#
# The lockfile carries no `resolved` URLs: .npmrc sets omit-lockfile-registry-resolved so that no
# registry host is written into the repository. Each tarball is located from the entry's package
# name and version by the npm registry layout, relative to a registry base supplied when the
# package is built (see ./npm-deps.nix):
#   <registry>/<name>/-/<name without scope>-<version>.tgz
# and checked against the entry's `integrity` (an SRI hash), which becomes the fixed-output hash.
#
#   (import ./npm-lock.nix { packageLock = builtins.fromJSON (...); }).entries
#     -> [ { key = "node_modules/@types/node"; name = "@types/node"; version = "20.19.43";
#            integrity = "sha512-…"; tarballPath = "@types/node/-/node-20.19.43.tgz";
#            storeName = "types-node-20.19.43.tgz"; } … ]
{ packageLock }:
let
  inherit (builtins) attrNames filter map match head elemAt length replaceStrings throw toJSON
    concatStringsSep;

  packages = packageLock.packages or (throw "package-lock.json has no `packages` (lockfileVersion 2 or 3 is needed)");

  # "node_modules/a/node_modules/@s/b" -> "@s/b": the last node_modules/ segment.
  installName = key:
    let m = match "(.*/)?node_modules/((@[^/]+/)?[^/]+)" key; in
    if m == null then throw "package-lock.json: cannot read a package name from ${toJSON key}" else elemAt m 1;

  # Entries that are fetched: everything but the root, links (workspaces, `file:` links) and
  # dependencies bundled inside another package's tarball.
  fetched = key: let p = packages.${key}; in key != "" && !(p.link or false) && !(p.inBundle or false);

  need = key: field:
    let p = packages.${key}; in
    if p ? ${field} then p.${field}
    else throw "package-lock.json: ${key} has no `${field}`, which packaging needs (every fetched entry needs name, version and integrity)";

  entry = key:
    let
      p = packages.${key};
      # An alias (`"x-cjs": "npm:x@1"`) is installed under its alias and published under `name`.
      name = p.name or (installName key);
      version = need key "version";
      integrity = need key "integrity";
      scopeAndBase = match "(@([^/]+)/)?([^/]+)" name;
      base = elemAt scopeAndBase 2;
      scope = elemAt scopeAndBase 1;
    in
    if scopeAndBase == null then throw "package-lock.json: ${key}: ${toJSON name} is not an npm package name"
    else if match "(sha1|sha256|sha512)-[A-Za-z0-9+/=]+" integrity == null then
      throw "package-lock.json: ${key}: integrity ${toJSON integrity} is not a single SRI hash"
    else if match "[0-9A-Za-z.+-]+" version == null then
      throw "package-lock.json: ${key}: version ${toJSON version} is not a registry version"
    else {
      inherit key name version integrity;
      tarballPath = "${name}/-/${base}-${version}.tgz";
      # Store path names allow [A-Za-z0-9+._?=-] and must not start with a dot.
      storeName = replaceStrings [ "@" "/" ] [ "" "-" ]
        (if scope == null then "${base}-${version}.tgz" else "${scope}-${base}-${version}.tgz");
    };
in
{
  entries = map entry (filter fetched (attrNames packages));
  inherit installName;
}
