#!/usr/bin/env bash
# The local demo: installs what it needs, builds Causeway, starts two tansu clusters
# ("onprem" on 127.0.0.1:19092, "cloud" on 127.0.0.1:29092) and Causeway in front of
# both on 127.0.0.1:9092 (admin on 9644) with the routes in config/demo.toml. The
# onprem cluster is reached through the hybrid bridge: a second, "on-prem" Causeway
# (127.0.0.1:9093) dials out over QUIC to the first (UDP 127.0.0.1:4433) with
# certificates made here, and the first reaches onprem through that tunnel. Then
# creates topics, produces and consumes through the one endpoint (a pii-mask plugin
# masks card numbers on payments.*), and shows on each backend where the records
# landed; then two tenants (a tenant-router plugin) share the cloud cluster, each
# under its own topic prefix; then a cluster link mirrors orders.eu from onprem to
# cloud at the same offsets, shows its lag, and fails over. Runs until Ctrl-C.
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
"$root/scripts/build-plugins.sh" pii-mask tenant-router
components="$("$root/scripts/build-plugins.sh" --print-out-dir)"
tansu="$root/.tools/bin/tansu"

for port in 9092 9093 9644 9645 19092 29092; do
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
py="$root/.tools/venv/bin/python"

for cluster in onprem:19092 cloud:29092; do
  name=${cluster%%:*} port=${cluster##*:}
  say "starting a tansu broker: backend cluster '$name' on 127.0.0.1:$port"
  "$tansu" broker --cluster-id "$name" --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://tansu/ >"$logs/$name.log" 2>&1 &
  pids+=($!)
done

say "making a CA and certificates for the bridge (openssl): cloud side for localhost, on-prem side CN=onprem-demo"
certs="$logs/certs"
mkdir -p "$certs"
(
  cd "$certs"
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -keyout ca-key.pem -out ca.pem -days 7 -subj "/O=Causeway Demo/CN=demo-ca" 2>/dev/null
  openssl req "${ec[@]}" -keyout cloud-key.pem -out cloud.csr -subj "/O=Causeway Demo/CN=localhost" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >cloud.ext
  openssl x509 -req -in cloud.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out cloud.pem -days 7 -extfile cloud.ext 2>/dev/null
  openssl req "${ec[@]}" -keyout onprem-key.pem -out onprem.csr -subj "/O=Causeway Demo/CN=onprem-demo" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >onprem.ext
  openssl x509 -req -in onprem.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out onprem.pem -days 7 -extfile onprem.ext 2>/dev/null
)
ls "$certs"/*.pem

say "starting Causeway on 127.0.0.1:9092 (admin on 127.0.0.1:9644) with config/demo.toml"
# config/demo.toml with the onprem cluster reached through the tunnel, the
# tunnel's listener, a record filter (card numbers in payments.* never reach a
# backend) and a router (clients whose id reads tenant-NAME-... get topics of
# their own, stored on the cloud cluster as NAME.<topic>).
config="$logs/demo.toml"
{
  sed '/^\[clusters.onprem\]/a tunnel = true' config/demo.toml
  cat <<TOML

[tunnel]
listen = "127.0.0.1:4433"
cert = "$certs/cloud.pem"
key = "$certs/cloud-key.pem"
client_ca = "$certs/ca.pem"

[[tunnel.peers]]
identity = "CN=onprem-demo,O=Causeway Demo"
clusters = ["onprem"]

[[plugins]]
name = "pii-mask"
kind = "record-filter"
path = "$components/pii-mask.wasm"
config = '{"fields": ["card"], "detect": ["card"], "mask": "***"}'
topics = "payments.*"
on = ["produce"]

[[plugins]]
name = "tenants"
kind = "router"
path = "$components/tenant-router.wasm"
config = '{"cluster": "cloud", "match": "client-id"}'
TOML
} >"$config"
"$causeway" check --config "$config"
"$causeway" run --config "$config" >"$logs/causeway.log" 2>&1 &
pids+=($!)

say "starting the on-prem Causeway on 127.0.0.1:9093: it dials out to 127.0.0.1:4433 and exposes onprem"
cat >"$logs/onprem.toml" <<TOML
[gateway]
listen = "127.0.0.1:9093"

[admin]
listen = "127.0.0.1:9645"

[tunnel]
connect = ["127.0.0.1:4433"]
server_name = "localhost"
cert = "$certs/onprem.pem"
key = "$certs/onprem-key.pem"
ca = "$certs/ca.pem"
expose = ["onprem"]

[clusters.onprem]
bootstrap = ["127.0.0.1:19092"]
TOML
"$causeway" check --config "$logs/onprem.toml"
"$causeway" run --config "$logs/onprem.toml" >"$logs/causeway-onprem.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do
  # Ready with both clusters: onprem answers through the tunnel.
  curl -sf http://127.0.0.1:9644/readyz 2>/dev/null | grep -q '"degraded":false' && break
  sleep 0.1
done
curl -s http://127.0.0.1:9644/readyz

say "the bridge from both ends (causeway tunnel status)"
"$causeway" tunnel status --admin 127.0.0.1:9644
"$causeway" tunnel status --admin 127.0.0.1:9645

say "the routes in force (GET http://127.0.0.1:9644/routes)"
curl -s http://127.0.0.1:9644/routes

say "creating topics through the gateway: greetings, orders.eu, payments.cards"
"$py" - <<'PY'
from confluent_kafka.admin import AdminClient, NewTopic
a = AdminClient({"bootstrap.servers": "127.0.0.1:9092"})
for name, f in a.create_topics([NewTopic(t, num_partitions=3, replication_factor=1)
                                for t in ("greetings", "orders.eu", "payments.cards")]).items():
    f.result(15)
    print(f"created {name}")
PY

say "what clients see: one broker, Causeway, and the topics of both clusters (kcat -L)"
kcat -b 127.0.0.1:9092 -L

say "producing keyed records with kcat to a cloud topic and two on-prem topics (the pii-mask plugin masks the card number)"
printf 'alice:hello from alice\nbob:hello from bob\ncarol:hello from carol\n' |
  kcat -b 127.0.0.1:9092 -P -t greetings -K: -z zstd
printf 'o1:order one\no2:order two\n' | kcat -b 127.0.0.1:9092 -P -t orders.eu -K:
printf 'c1:{"customer":"ada","card":"4111 1111 1111 1111"}\n' | kcat -b 127.0.0.1:9092 -P -t payments.cards -K:

say "one consumer group reading topics of both clusters through the gateway"
"$py" - <<'PY'
import time
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": "127.0.0.1:9092", "group.id": "demo-group", "auto.offset.reset": "earliest"})
c.subscribe(["greetings", "orders.eu", "payments.cards"])
got, deadline = [], time.time() + 30
while len(got) < 6 and time.time() < deadline:
    m = c.poll(1)
    if m is not None and not m.error():
        got.append(f"{m.topic():15} partition {m.partition()} offset {m.offset()}  {m.key().decode()} => {m.value().decode()}")
c.close()
print("\n".join(sorted(got)))
PY

say "the same records, read directly from each backend cluster"
"$py" - <<'PY'
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
for name, addr in (("onprem", "127.0.0.1:19092"), ("cloud", "127.0.0.1:29092")):
    topics = sorted(AdminClient({"bootstrap.servers": addr}).list_topics(timeout=10).topics)
    print(f"-- {name} ({addr}) holds: {', '.join(topics)}")
    c = Consumer({"bootstrap.servers": addr, "group.id": f"demo-direct-{name}", "enable.partition.eof": True})
    c.assign([TopicPartition(t, p, 0) for t in topics for p in range(3)])
    eof = 0
    while eof < 3 * len(topics):
        m = c.poll(5)
        if m is None:
            break
        if m.error():
            eof += 1
            continue
        print(f"{m.topic():17} partition {m.partition()} offset {m.offset()}  {m.key().decode()} => {m.value().decode()}")
    c.close()
PY

say "two tenants share the cloud cluster: each creates, writes and reads 'notes' (client ids tenant-acme-app, tenant-globex-app)"
"$py" - <<'PY'
import time
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
gw = "127.0.0.1:9092"
for tenant in ("acme", "globex"):
    me = {"bootstrap.servers": gw, "client.id": f"tenant-{tenant}-app"}
    admin = AdminClient(me)
    admin.create_topics([NewTopic("notes", num_partitions=1, replication_factor=1)])["notes"].result(15)
    p = Producer(me)
    p.produce("notes", key=tenant.encode(), value=f"a note only {tenant} sees".encode())
    p.flush(15)
for tenant in ("acme", "globex"):
    me = {"bootstrap.servers": gw, "client.id": f"tenant-{tenant}-app"}
    listed = sorted(t for t in AdminClient(me).list_topics(timeout=10).topics if not t.startswith("__"))
    c = Consumer({**me, "group.id": f"demo-{tenant}", "enable.partition.eof": True})
    c.assign([TopicPartition("notes", 0, 0)])
    deadline = time.time() + 20
    while time.time() < deadline:
        m = c.poll(1)
        if m is None:
            continue
        if m.error():
            break
        print(f"tenant {tenant:6} lists {listed}; reads notes offset {m.offset()}  {m.key().decode()} => {m.value().decode()}")
    c.close()
cloud = sorted(AdminClient({"bootstrap.servers": "127.0.0.1:29092"}).list_topics(timeout=10).topics)
print(f"-- cloud (127.0.0.1:29092) now holds: {', '.join(cloud)}")
PY

say "linking onprem to cloud: mirror orders.eu as dr.orders.eu, same partitions and offsets"
"$causeway" link create dr --source onprem --destination cloud \
  --config cluster.link.prefix=dr. --config consumer.offset.sync.enable=true --config consumer.offset.sync.ms=1000
"$causeway" mirror create orders.eu --link dr
printf 'o3:order three\no4:order four\no5:order five\n' | kcat -b 127.0.0.1:9092 -P -t orders.eu -K: -z lz4
for _ in $(seq 50); do
  # All five orders copied, every partition at its source's end.
  "$causeway" mirror describe dr.orders.eu --json | grep -q '"records":5,.*"state":"ACTIVE"' && break
  sleep 0.2
done
"$causeway" mirror describe dr.orders.eu

say "the mirror read through the gateway: every record at its source partition and offset"
"$py" - <<'PY'
from confluent_kafka import Consumer, TopicPartition
def read(topic):
    c = Consumer({"bootstrap.servers": "127.0.0.1:9092", "group.id": "demo-mirror-reader", "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, 0) for p in range(3)])
    out, eof = [], 0
    while eof < 3:
        m = c.poll(5)
        if m is None:
            break
        if m.error():
            eof += 1
            continue
        out.append((m.partition(), m.offset(), m.key().decode(), m.value().decode()))
    c.close()
    return sorted(out)
source, mirror = read("orders.eu"), read("dr.orders.eu")
for s, m in zip(source, mirror):
    print(f"orders.eu partition {s[0]} offset {s[1]}  {s[2]}: {s[3]:12}   dr.orders.eu partition {m[0]} offset {m[1]}  {m[2]}: {m[3]}")
print("identical" if source == mirror else "DIFFERENT")
PY

say "failing over: dr.orders.eu becomes writable, and orders.eu now routes to it"
"$causeway" mirror failover dr.orders.eu --switch-route
printf 'o6:order six, written after the failover\n' | kcat -b 127.0.0.1:9092 -P -t orders.eu -K: -p 0
kcat -b 127.0.0.1:9092 -C -t orders.eu -p 0 -o beginning -e -f 'orders.eu partition %p offset %o  %k: %s\n' 2>/dev/null

say "gateway metrics (excerpt of http://127.0.0.1:9644/metrics)"
curl -s http://127.0.0.1:9644/metrics | grep -E '^causeway_(requests_total|backend_cluster_up|mirror_lag_records|tunnel_rtt_seconds)' | sort | head -20

if $once; then
  say "demo done"
  exit 0
fi
say "Causeway is running. Point any Kafka client at it:"
cat <<TXT
  bootstrap.servers=127.0.0.1:9092

  kcat -b 127.0.0.1:9092 -L
  kcat -b 127.0.0.1:9092 -P -t orders.eu          # lands on onprem (19092), through the tunnel
  kcat -b 127.0.0.1:9092 -C -t greetings -o beginning   # lives on cloud (29092)
  curl http://127.0.0.1:9644/routes
  curl http://127.0.0.1:9644/metrics
  $causeway link list --admin 127.0.0.1:9644
  $causeway mirror list --admin 127.0.0.1:9644
  $causeway tunnel status --admin 127.0.0.1:9644

Logs: $logs   (Ctrl-C stops the demo)
TXT
wait
