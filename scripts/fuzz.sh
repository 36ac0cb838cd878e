#!/usr/bin/env bash
# Fuzzes ebb's parsers of outside input for SECONDS each (default 60), with
# libFuzzer through cargo-fuzz: upsd's answers (nut_reply), a client's HTTP
# request head against a canned reply (http_head), the config file (config)
# and a domain's metadata element (metadata). Targets: fuzz/fuzz_targets/;
# the checks they run: each crate's `fuzzing` code.
#
# Fails when a target crashes, hangs (-timeout) or asks for too much memory
# (-malloc_limit_mb, -rss_limit_mb). The input that did it is written to
# fuzz/artifacts/TARGET/; once fixed, keep it as a regression test in the
# crate's fuzz-regressions/TARGET/ (see the crate's fuzz_regressions test).
#
# Runs on the stable toolchain: RUSTC_BOOTSTRAP lets it take the -Z flags
# cargo-fuzz passes for the sanitizer. Installs cargo-fuzz when missing, and
# a C++ compiler (libfuzzer-sys builds libFuzzer from source).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.1 --locked
fi
if ! command -v c++ >/dev/null; then
  echo "fuzz: installing g++"
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends g++ >/dev/null
fi

cargo fuzz build
failed=()
for target in $(cargo fuzz list); do
  corpus=fuzz/corpus/$target
  log=fuzz/target/$target.log
  mkdir -p "$corpus"
  dict=()
  [ -f "fuzz/dicts/$target.dict" ] && dict=("-dict=fuzz/dicts/$target.dict")
  # New inputs go to the first folder (ignored by git); the seeds stay as committed.
  if cargo fuzz run "$target" "$corpus" "fuzz/seeds/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
      "${dict[@]}" >"$log" 2>&1; then
    echo "fuzz: $target: ok, $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$log" | tail -1)"
  else
    echo "fuzz: $target FAILED (the input is in fuzz/artifacts/$target/); the end of $log:"
    tail -n 40 "$log"
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}"
  exit 1
fi
