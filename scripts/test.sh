#!/usr/bin/env bash
# The test command: prepares the host (packages, libvirtd, guest image) and
# runs every test, the real-guest ones included. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "cargo-nextest not found: running cargo test (real-guest tests one at a time)"
  cargo test --workspace --no-fail-fast "$@" -- --test-threads=1
fi
