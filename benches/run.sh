#!/usr/bin/env bash
# Runs the load benchmark: direct to tansu, through Causeway, through Causeway
# with the pass-through plugin, through tansu proxy and through a kernel relay, in
# one run, for small and for large records, and for small ones again with each
# proxy on a CPU of its own; then two clusters behind one Causeway against one client per
# cluster; then the per-record cost of record filters, WebAssembly against
# native. Writes benches/results/latest.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/setup.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release --locked
export CAUSEWAY_BIN="$CARGO_TARGET_DIR/release/causeway"
"$root/scripts/build-plugins.sh"
out="$root/benches/results/latest.md"
mkdir -p "$(dirname "$out")"
{
  echo "# Benchmark results"
  echo
  echo "Produced by \`benches/run.sh\` on $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')."
  echo
  echo "## 1 KiB records"
  echo
} >"$out"
"$root/.tools/venv/bin/python" benches/load.py --size 1024 --count 150000 --out "$out" "$@"
printf '## 1 KiB records, each proxy on a CPU of its own\n\n' >>"$out"
"$root/.tools/venv/bin/python" benches/load.py --size 1024 --count 150000 --pin --out "$out" "$@"
printf '## 16 KiB records\n\n' >>"$out"
"$root/.tools/venv/bin/python" benches/load.py --size 16384 --count 12000 --out "$out" "$@"
printf '## Two clusters\n\n' >>"$out"
"$root/.tools/venv/bin/python" benches/multi.py --out "$out" "$@"
printf '## Cluster linking\n\n' >>"$out"
"$root/.tools/venv/bin/python" benches/mirror.py --out "$out"
printf '## Hybrid bridge: QUIC tunnel against plain TCP\n\n' >>"$out"
"$root/.tools/venv/bin/python" benches/bridge.py --out "$out"
# Per-record cost of record filters: each example component in the gateway's
# plugin host against the same plugin source compiled natively.
cargo build --release --locked --manifest-path benches/plugin-cost/Cargo.toml
{
  printf '## Record filters, per record\n\n'
  printf 'Records: a ~200-byte JSON payment event with a key and one header, one batch per call;\n'
  printf 'median of 7 samples. `pii-mask` config: `{"fields": ["email"], "detect": ["card"]}` (every record masked).\n\n'
} >>"$out"
"$CARGO_TARGET_DIR/release/plugin-cost" --components "$("$root/scripts/build-plugins.sh" --print-out-dir)" --out "$out"
cat "$out"
