#!/bin/sh
# Weaver entrypoint (Nix image and Dockerfile alike).
#
# With arguments: run them (the pod's command), as PID 1's replacement.
# Without: stay up, so `loom attach` and `kubectl exec` have a running weaver to join; exit
# promptly and cleanly on SIGTERM/SIGINT (pod deletion, TTL expiry).
set -eu

if [ "$#" -gt 0 ]; then
  exec "$@"
fi

trap 'exit 0' TERM INT HUP
echo "loom weaver ready in $(pwd)"
while :; do
  # sleep in the background and wait: the shell handles the signal at once, not after the sleep.
  sleep 3600 &
  wait $! || true
done
