#!/bin/sh
# Audit-sidecar entrypoint (Nix image and Dockerfile alike).
#
# With arguments: run them (the pod spec names the sidecar command, loom-audit-sidecar).
# Without: run loom-audit-sidecar.
set -eu

if [ "$#" -gt 0 ]; then
  exec "$@"
fi

exec loom-audit-sidecar
