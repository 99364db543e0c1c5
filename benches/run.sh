#!/usr/bin/env bash
# Runs the load benchmark: direct to tansu, through Causeway and through tansu
# proxy, in one run, for small and for large records; then two clusters behind one
# Causeway against one client per cluster. Writes benches/results/latest.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/setup.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release --locked
export CAUSEWAY_BIN="$CARGO_TARGET_DIR/release/causeway"
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
printf '## 16 KiB records\n\n' >>"$out"
"$root/.tools/venv/bin/python" benches/load.py --size 16384 --count 12000 --out "$out" "$@"
printf '## Two clusters\n\n' >>"$out"
"$root/.tools/venv/bin/python" benches/multi.py --out "$out" "$@"
cat "$out"
