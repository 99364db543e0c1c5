#!/usr/bin/env bash
# Sets up a fresh machine and runs every test: Rust unit and property tests, clippy,
# a bounded fuzzing run of the decoders, the plugin SDK's and example plugins' own
# tests, a check that each example component answers as its native build, then
# the end-to-end suite (real tansu brokers, real clients, the real
# binary, the example plugins built to WebAssembly components).
#
#   scripts/test.sh              # everything
#   scripts/test.sh -k groups    # extra arguments go to pytest
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

"$root/scripts/setup.sh"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
echo "[test] building (release) into $CARGO_TARGET_DIR" >&2
cargo build --release --locked
echo "[test] unit and property tests" >&2
cargo test --release --locked --workspace
echo "[test] clippy" >&2
cargo clippy --release --locked --all-targets -- -D warnings
fuzz_seconds=${CAUSEWAY_FUZZ_SECONDS:-20}
if [ "$fuzz_seconds" -gt 0 ]; then
  echo "[test] fuzzing the decoders, ${fuzz_seconds}s per target (CAUSEWAY_FUZZ_SECONDS=0 skips)" >&2
  "$root/scripts/fuzz.sh" "$fuzz_seconds"
fi
echo "[test] plugins: native tests, then components" >&2
"$root/scripts/build-plugins.sh" --test
"$root/scripts/build-plugins.sh"
# The plugin cost benchmark checks, before timing anything, that each example
# component answers exactly as its native build; run it briefly for that (the
# timings of so short a run mean nothing and are not looked at).
echo "[test] components agree with their native builds" >&2
cargo build --release --locked --quiet --manifest-path "$root/benches/plugin-cost/Cargo.toml"
"$CARGO_TARGET_DIR/release/plugin-cost" --components "$("$root/scripts/build-plugins.sh" --print-out-dir)" --sample-ms 5 >/dev/null
export CAUSEWAY_BIN="$CARGO_TARGET_DIR/release/causeway"
echo "[test] end-to-end tests" >&2
cd "$root/tests"
exec "$root/.tools/venv/bin/python" -m pytest -q "$@"
