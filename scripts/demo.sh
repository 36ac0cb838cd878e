#!/usr/bin/env bash
# The main job on a fresh machine: prepares the host, builds ebb and runs
# its live demo on three real guests. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install a Rust toolchain (rustup, Rust ≥ 1.85) first" >&2
  exit 1
fi
cargo build --release -p ebb
exec ./target/release/ebb demo "$@"
