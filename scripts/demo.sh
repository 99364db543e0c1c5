#!/usr/bin/env bash
# The local demo: installs what it needs, builds Causeway, starts a tansu cluster on
# 127.0.0.1:19092 and Causeway on 127.0.0.1:9092 (admin on 9644), then produces and
# consumes through the gateway with kcat and prints how to connect. Runs until Ctrl-C.
#
#   scripts/demo.sh          # interactive: keeps running
#   scripts/demo.sh --once   # runs the walkthrough and exits (used by the tests)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
once=false
[ "${1:-}" = "--once" ] && once=true

"$root/scripts/setup.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release --locked
causeway="$CARGO_TARGET_DIR/release/causeway"
tansu="$root/.tools/bin/tansu"

for port in 9092 9644 19092; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: port $port is in use; stop whatever listens there and retry" >&2
    exit 1
  fi
done

logs=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "starting a tansu broker (backend cluster 'local') on 127.0.0.1:19092"
"$tansu" broker --cluster-id demo --listener-url tcp://127.0.0.1:19092 \
  --advertised-listener-url tcp://127.0.0.1:19092 --storage-engine memory://tansu/ >"$logs/tansu.log" 2>&1 &
pids+=($!)

say "starting Causeway on 127.0.0.1:9092 (admin on 127.0.0.1:9644)"
"$causeway" check --config config/demo.toml
"$causeway" run --config config/demo.toml >"$logs/causeway.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:9644/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
curl -s http://127.0.0.1:9644/readyz

say "creating topic 'greetings' (3 partitions) through the gateway"
"$root/.tools/venv/bin/python" - <<'PY'
from confluent_kafka.admin import AdminClient, NewTopic
a = AdminClient({"bootstrap.servers": "127.0.0.1:9092"})
a.create_topics([NewTopic("greetings", num_partitions=3, replication_factor=1)])["greetings"].result(15)
PY

say "what clients see: one broker, Causeway (kcat -L)"
kcat -b 127.0.0.1:9092 -L -t greetings

say "producing three keyed records with kcat"
printf 'alice:hello from alice\nbob:hello from bob\ncarol:hello from carol\n' |
  kcat -b 127.0.0.1:9092 -P -t greetings -K: -z zstd

say "consuming them back through the gateway"
kcat -b 127.0.0.1:9092 -C -t greetings -o beginning -e -f 'partition %p offset %o  %k => %s\n'

say "the same records, read directly from the backend broker (127.0.0.1:19092)"
read_direct() {
  "$root/.tools/venv/bin/python" - <<'PY'
from confluent_kafka import Consumer, TopicPartition
c = Consumer({"bootstrap.servers": "127.0.0.1:19092", "group.id": "demo-direct", "enable.partition.eof": True})
c.assign([TopicPartition("greetings", p, 0) for p in range(3)])
eof = 0
while eof < 3:
    m = c.poll(5)
    if m is None:
        break
    if m.error():
        eof += 1
        continue
    print(f"partition {m.partition()} offset {m.offset()}  {m.key().decode()} => {m.value().decode()}")
c.close()
PY
}
read_direct

say "gateway metrics (excerpt of http://127.0.0.1:9644/metrics)"
curl -s http://127.0.0.1:9644/metrics | grep -E '^causeway_requests_total' | sort | head -12

if $once; then
  say "demo done"
  exit 0
fi
say "Causeway is running. Point any Kafka client at it:"
cat <<TXT
  bootstrap.servers=127.0.0.1:9092

  kcat -b 127.0.0.1:9092 -L
  kcat -b 127.0.0.1:9092 -P -t greetings
  kcat -b 127.0.0.1:9092 -C -t greetings -o beginning
  curl http://127.0.0.1:9644/metrics

Logs: $logs   (Ctrl-C stops the demo)
TXT
wait
