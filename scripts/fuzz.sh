#!/usr/bin/env bash
# Fuzzes the decoders that read network input (libFuzzer via cargo-fuzz), each for
# a bounded time. Crashing inputs land in gateway/fuzz/artifacts/TARGET/; add them
# to a unit test before fixing.
#
#   scripts/fuzz.sh            # every target, 20 s each
#   scripts/fuzz.sh 300        # every target, 300 s each
#   scripts/fuzz.sh 60 request # one target
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request response route batches sasl tunnel)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --quiet
fi
cd "$root/gateway"
# libFuzzer needs unstable compiler flags; the stable toolchain allows them here.
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  echo "[fuzz] $t for ${seconds}s" >&2
  # Built first, on its own: a target that no longer compiles must fail the
  # run, not vanish in the filtered output below.
  cargo fuzz build -O "$t"
  cargo fuzz run -O "$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=0 2>&1 |
    grep -E '^(Done|==|SUMMARY)|panicked' || true
  # cargo fuzz exits non-zero on a crash; grep above swallowed it, so check artifacts.
  if compgen -G "$root/gateway/fuzz/artifacts/$t/*" >/dev/null; then
    echo "[fuzz] $t found crashing inputs in gateway/fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
