# Fetches one npm tarball into $out: the builder of each fixed-output derivation in
# ./npm-deps.nix (Nix then checks the file against the lockfile's integrity, the outputHash).
#
#   tarballPath  <name>/-/<base>-<version>.tgz (from ./npm-lock.nix)
#   registry     the registry base; empty means npm's own configuration: NPM_CONFIG_REGISTRY /
#                npm_config_registry from the builder's environment (passed to fixed-output
#                builds as impureEnvVars), else npm's built-in default registry.
# No registry host is written here or anywhere in the repository.
set -euo pipefail
export HOME="${TMPDIR:-/tmp}"
reg="${registry:-}"
if [ -z "$reg" ]; then
  reg="$(npm config get registry)"
fi
case "$reg" in
  http://* | https://*) ;;
  *) echo "npm registry base ${reg@Q} is not an http(s) URL" >&2; exit 1 ;;
esac
url="${reg%/}/${tarballPath}"
echo "fetching $url" >&2
curl --fail --location --silent --show-error --retry 3 --output "$out" "$url"
