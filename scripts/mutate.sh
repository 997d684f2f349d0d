#!/usr/bin/env bash
# Mutation check: applies each deliberate breakage in scripts/mutations.json, one at a time, runs
# the test file that should catch it, restores the file, and prints a table (mutation, test file,
# caught). Exits non-zero if any mutation survives. Not part of `npm test`: it edits src/ and
# rebuilds dist/ (and native/ for native mutations), so run it alone, on a clean tree.
#   scripts/mutate.sh                 every mutation
#   scripts/mutate.sh NAME [NAME…]    only these
set -euo pipefail
cd "$(dirname "$0")/.."
exec node scripts/mutate.mjs "$@"
