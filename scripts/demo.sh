#!/usr/bin/env bash
# The main job on a fresh machine: prepares the host, builds ebb and runs
# its live demo on three real guests. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
cargo build --release -p ebb
exec ./target/release/ebb demo "$@"
