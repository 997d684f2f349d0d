#!/bin/sh
# Audit-sidecar entrypoint (Nix image and Dockerfile alike).
#
# With arguments: run them (the pod spec names the sidecar command). Without: stay up. The eBPF
# audit sidecar itself is a later part of Loom; until it lands, the container keeps running so
# the pod, its ports and its lifecycle can be exercised.
set -eu

if [ "$#" -gt 0 ]; then
  exec "$@"
fi

trap 'exit 0' TERM INT HUP
echo "loom audit sidecar: no command given; idling"
while :; do
  sleep 3600 &
  wait $! || true
done
