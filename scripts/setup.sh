#!/usr/bin/env bash
# Installs everything Loom needs on Debian 12 with Node 20 (as root): system packages, npm
# dependencies, the native addons and the TypeScript build. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages and the local backend runs containers as root)" >&2
  exit 1
fi

mapfile -t pkgs < <(grep -v '^\s*#' scripts/apt-packages.txt | grep -v '^\s*$')
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# npm ci compiles better-sqlite3, argon2 and native/ from source (.npmrc: build-from-source)
# and builds dist/ (the prepare script).
t0=$SECONDS
echo "setup.sh: npm ci (npm dependencies, native addons, dist/)" >&2
npm ci --no-audit --no-fund
echo "setup.sh: npm ci took $((SECONDS - t0)) s" >&2

# The default development image (Debian bookworm: bash, git, curl, python3, gcc, make, …), built
# once with mmdebstrap into the server's image store; skipped when the store already has it.
# LOOM_SETUP_SKIP_DEV_IMAGE=1 skips it (weavers then default to the busybox image loom/minimal).
if [ "${LOOM_SETUP_SKIP_DEV_IMAGE:-0}" != 1 ]; then
  t1=$SECONDS
  echo "setup.sh: building the dev image loom/dev:bookworm into ${LOOM_DATA_DIR:-./data} (mmdebstrap; about a minute, once)" >&2
  node dist/server/main.js admin build-image >/dev/null
  echo "setup.sh: dev image step took $((SECONDS - t1)) s" >&2
fi
echo "setup.sh: done in $((SECONDS - t0)) s. Start the server with: npm start" >&2
