"""Load harness: produce and consume throughput, produce latency and proxy CPU,
measured in one run against the tansu broker directly, Causeway in front of it,
and `tansu proxy` in front of it (a peer Rust Kafka proxy); and, unless
--no-plugin, Causeway with the pass-through record filter on every produce and
fetch, and Causeway with the tenant router renaming every topic; and Causeway
checking 100 ACL rules on every request.

The client is librdkafka (confluent-kafka). Every target gets the same workload on
its own topics, in interleaved rounds so drift in the machine affects all alike;
the table reports the median round.

    python benches/load.py --out benches/results/latest.md
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from rig import Gateway, Process, Tansu, free_port, plugin_component, tansu_bin, wait_for_port  # noqa: E402

HERE = Path(__file__).resolve().parent

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class TansuProxy:
    def __init__(self, origin: str):
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        url = f"tcp://{self.addr}"
        self.process = Process(
            "tansu-proxy",
            [str(tansu_bin()), "proxy", "--listener-url", url, "--advertised-listener-url", url,
             "--origin-url", f"tcp://{origin}"],
            env={"RUST_LOG": "warn"},
        )
        wait_for_port(self.port)

    def close(self):
        self.process.close()


def create_topic(addr: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": addr})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(30)


def delete_topic(addr: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": addr})
    admin.delete_topics([name])[name].result(30)


def produce_throughput(addr, topic, count, size, partitions, client_id="rdkafka"):
    payload = os.urandom(size)
    p = Producer({
        "bootstrap.servers": addr,
        "client.id": client_id,
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "acks": "all",
        "compression.type": "none",
    })
    failed = []
    t0 = time.perf_counter()
    for i in range(count):
        while True:
            try:
                p.produce(topic, payload, partition=i % partitions,
                          on_delivery=lambda e, m: failed.append(e) if e else None)
                break
            except BufferError:
                p.poll(0.01)
        if i % 1000 == 0:
            p.poll(0)
    left = p.flush(120)
    elapsed = time.perf_counter() - t0
    assert left == 0 and not failed, f"{left} undelivered, {len(failed)} failed"
    return count * size / elapsed / 1e6, elapsed


def consume_throughput(addr, topic, count, size, partitions, client_id="rdkafka", partition_fetch_bytes=10_485_760):
    c = Consumer({
        "bootstrap.servers": addr,
        "client.id": client_id,
        "group.id": f"bench-{topic}",
        "enable.auto.commit": False,
        "fetch.max.bytes": 52_428_800,
        "max.partition.fetch.bytes": partition_fetch_bytes,
        "queued.max.messages.kbytes": 1_048_576,
    })
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = 0
    t0 = time.perf_counter()
    deadline = t0 + 120
    while got < count and time.perf_counter() < deadline:
        for m in c.consume(10_000, 0.5):
            if not m.error():
                got += 1
    elapsed = time.perf_counter() - t0
    c.close()
    assert got >= count, f"consumed {got} of {count}"
    return count * size / elapsed / 1e6, elapsed


def produce_latency(addr, topic, rate, seconds, size, client_id="rdkafka"):
    """Produces at a fixed rate with linger 0; returns per-record delivery latencies (ms)."""
    payload = os.urandom(size)
    p = Producer({"bootstrap.servers": addr, "client.id": client_id, "linger.ms": 0, "acks": "all"})
    lat = []

    def cb(err, msg, start):
        if err is None:
            lat.append((time.perf_counter() - start) * 1000)

    # Warm up connections and metadata.
    p.produce(topic, payload)
    p.flush(10)
    interval = 1.0 / rate
    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        target = start + i * interval
        while (now := time.perf_counter()) < target:
            p.poll(0)
            if target - now > 0.0005:
                time.sleep(0.0002)
        t = time.perf_counter()
        p.produce(topic, payload, on_delivery=lambda e, m, t=t: cb(e, m, t))
        p.poll(0)
    p.flush(30)
    return lat


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=150_000, help="records per throughput run")
    ap.add_argument("--size", type=int, default=1024, help="bytes per record")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rate", type=int, default=1000, help="records/s for the latency run")
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of the latency run")
    ap.add_argument("--partition-fetch-bytes", type=int, default=10_485_760,
                    help="the consumer's max.partition.fetch.bytes: how much of one partition a fetch answer carries")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--no-plugin", action="store_true",
                    help="skip the targets with plugins (they need scripts/build-plugins.sh)")
    ap.add_argument("--pin", action="store_true",
                    help="run the client and the brokers on CPU 0 and every proxy on CPU 1, as a deployed "
                         "gateway has CPUs of its own (default: all share every CPU)")
    args = ap.parse_args()
    if args.pin and (os.cpu_count() or 1) < 2:
        ap.error("--pin needs at least 2 CPUs")

    def place(cpu):
        """With --pin, the processes started next, and the client's threads
        when called last, run on `cpu` only (children inherit the mask, so a
        proxy sizes its thread pool to the one CPU it has, as under a cpuset)."""
        if args.pin:
            os.sched_setaffinity(0, {cpu})

    place(0)
    broker = Tansu()
    place(1)
    gateway = Gateway([broker.addr], extra_env={"CAUSEWAY_LOG": "warn"})
    gateway.wait_ready()
    proxy = TansuProxy(broker.addr)
    # name -> (address, proxy pid, client id, backend topic prefix)
    targets = {
        "direct": (broker.addr, None, "rdkafka", "", broker),
        "causeway": (gateway.addr, gateway.process.pid(), "rdkafka", "", broker),
        "tansu proxy": (proxy.addr, proxy.process.pid(), "rdkafka", "", broker),
    }
    # The ceiling for any proxy on this machine: a relay that splices bytes
    # between sockets in the kernel and parses nothing, in front of a second
    # broker (same binary, same settings) that advertises the relay.
    relay_port = free_port()
    place(0)
    relayed = Tansu("relayed", advertised=f"127.0.0.1:{relay_port}")
    place(1)
    relay = Process("relay", [sys.executable, str(HERE / "relay.py"), str(relay_port), str(relayed.port)])
    wait_for_port(relay_port, process=relay)
    targets["kernel relay"] = (f"127.0.0.1:{relay_port}", relay.pid(), "rdkafka", "", relayed)
    variants = []

    def variant(name, gateway="", rest="", client_id="rdkafka", prefix=""):
        """Another Causeway in front of the broker, as target `name`: `gateway`
        goes into its [gateway] table, `rest` after its cluster."""
        config = (
            f'[gateway]\nlisten = "{{listen}}"\n{gateway}[admin]\nlisten = "{{admin}}"\n'
            f'[clusters.main]\nbootstrap = ["{broker.addr}"]\n' + rest
        )
        gw = Gateway(config=config, extra_env={"CAUSEWAY_LOG": "warn"})
        variants.append(gw)
        gw.wait_ready()
        targets[name] = (gw.addr, gw.process.pid(), client_id, prefix, broker)

    # The same gateway authorizing every request against 100 ACL rules, the
    # one that allows the bench last, as a real rule set would have it.
    rules = "".join(
        f'[[acls]]\nprincipal = "User:tenant-{i}"\nresource = "topic"\nname = "tenant-{i}."\n'
        'pattern = "prefixed"\noperations = ["read", "write"]\n'
        for i in range(98)
    )
    rules += ('[[acls]]\nprincipal = "User:*"\nresource = "group"\noperations = ["read"]\n'
              '[[acls]]\nprincipal = "User:*"\nresource = "topic"\nname = "bench-"\npattern = "prefixed"\n'
              'operations = ["read", "write"]\n')
    variant("causeway + 100 ACL rules", rest="[authorization]\n" + rules)
    # The same gateway without fetch read-ahead: what asking for a consumer's
    # next fetch early is worth, in the same rounds.
    variant("causeway without read-ahead", gateway="fetch_read_ahead = false\n")
    if not args.no_plugin:
        # The same gateway with the pass-through record filter on every produce
        # and every fetch: the cost of the plugin machinery on the whole path.
        variant("causeway + pass-through plugin", rest=(
            '[[plugins]]\nname = "passthrough"\nkind = "record-filter"\n'
            f'path = "{plugin_component("passthrough")}"\non = ["produce", "fetch"]\n'
        ))
        # The same gateway with the tenant router: every topic of client
        # "tenant-bench" lives under "bench." on the backend, so every produce
        # and fetch is renamed both ways (answers cached, as in use).
        variant("causeway + tenant router", client_id="tenant-bench", prefix="bench.", rest=(
            '[[plugins]]\nname = "tenants"\nkind = "router"\n'
            f'path = "{plugin_component("tenant-router")}"\n'
            'config = \'{{"cluster": "main", "match": "client-id"}}\'\n'
        ))
    # The same gateway serving connections on one thread instead of one per
    # CPU (`gateway.worker_threads`).
    variant("causeway, 1 worker thread", gateway="worker_threads = 1\n")
    place(0)
    results = {name: [] for name in targets}
    try:
        for rnd in range(args.rounds):
            for name, (addr, pid, client_id, prefix, home) in targets.items():
                # Only what Kafka allows in a topic name ("+" is not).
                topic = f"bench-{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}-{rnd}"
                create_topic(home.addr, prefix + topic, args.partitions)
                c0 = cpu_seconds(pid) if pid else 0.0
                b0, me0 = cpu_seconds(home.process.pid()), cpu_seconds(os.getpid())
                pmb, pel = produce_throughput(addr, topic, args.count, args.size, args.partitions, client_id)
                cmb, cel = consume_throughput(addr, topic, args.count, args.size, args.partitions, client_id,
                                              args.partition_fetch_bytes)
                cpu = (cpu_seconds(pid) - c0) if pid else 0.0
                broker_cores = (cpu_seconds(home.process.pid()) - b0) / (pel + cel)
                client_cores = (cpu_seconds(os.getpid()) - me0) / (pel + cel)
                ltopic = topic + "-lat"
                create_topic(home.addr, prefix + ltopic, 1)
                lat = produce_latency(addr, ltopic, args.rate, args.seconds, args.size, client_id)
                # Keep the broker's in-memory log small between rounds.
                delete_topic(home.addr, prefix + topic)
                delete_topic(home.addr, prefix + ltopic)
                moved_mb = 2 * args.count * args.size / 1e6
                results[name].append({
                    "produce_mbs": pmb,
                    "consume_mbs": cmb,
                    "p50": pct(lat, 50),
                    "p99": pct(lat, 99),
                    "millicores_per_mbs": (cpu / (pel + cel)) * 1000 / (moved_mb / (pel + cel)) if pid else None,
                    "proxy_cores": cpu / (pel + cel) if pid else None,
                    "broker_cores": broker_cores,
                    "client_cores": client_cores,
                })
                print(f"round {rnd} {name:12s} produce {pmb:7.1f} MB/s  consume {cmb:7.1f} MB/s  "
                      f"p50 {pct(lat, 50):6.2f} ms  p99 {pct(lat, 99):6.2f} ms", flush=True)
    finally:
        proxy.close()
        gateway.close()
        for extra in variants:
            extra.close()
        relay.close()
        relayed.close()
        broker.close()

    def ratio(name, key):
        """Median over rounds of this target's value / direct's value in the same round."""
        pairs = [r[key] / d[key] for r, d in zip(results[name], results["direct"])]
        return statistics.median(pairs)

    def med(name, key):
        vals = [r[key] for r in results[name] if r[key] is not None]
        return statistics.median(vals) if vals else None

    direct_p99 = med("direct", "p99")
    lines = [
        f"Workload: {args.count} records of {args.size} B over {args.partitions} partitions, "
        f"acks=all, no compression; consumer max.partition.fetch.bytes {args.partition_fetch_bytes}; latency at {args.rate} records/s for {args.seconds:g} s, linger 0. "
        f"Median of {args.rounds} interleaved rounds; ratios are medians of same-round pairs. Client: librdkafka (confluent-kafka). "
        f"Machine: {os.cpu_count()} cores, broker, proxy and client on the same host"
        + (", the client and the brokers on CPU 0, each proxy on CPU 1." if args.pin else ", sharing every CPU.")
        + " The kernel relay fronts a second broker of the same build and settings.",
        "",
        "| target | produce MB/s | consume MB/s | produce vs direct | consume vs direct | p50 ms | p99 ms | p99 added ms | proxy millicores per MB/s | proxy / broker / client cores |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    def cores(name):
        v = med(name, "proxy_cores")
        return "-" if v is None else f"{v:.2f}"

    for name in targets:
        p, c = med(name, "produce_mbs"), med(name, "consume_mbs")
        mc = med(name, "millicores_per_mbs")
        lines.append(
            f"| {name} | {p:.1f} | {c:.1f} | {100 * ratio(name, 'produce_mbs'):.0f}% | {100 * ratio(name, 'consume_mbs'):.0f}% | "
            f"{med(name, 'p50'):.2f} | {med(name, 'p99'):.2f} | {med(name, 'p99') - direct_p99:+.2f} | "
            f"{'-' if mc is None else f'{mc:.1f}'} | "
            f"{cores(name)} / {med(name, 'broker_cores'):.2f} / {med(name, 'client_cores'):.2f} |"
        )
    def against_causeway(name, key):
        return statistics.median(r[key] / c[key] for r, c in zip(results[name], results["causeway"]))

    if "causeway + pass-through plugin" in targets:
        name = "causeway + pass-through plugin"
        lines += [
            "",
            f"With the pass-through plugin on produce and fetch, against Causeway without it (same rounds): "
            f"produce {100 * against_causeway(name, 'produce_mbs'):.0f}%, "
            f"consume {100 * against_causeway(name, 'consume_mbs'):.0f}% (target >= 85%).",
        ]
    if "causeway + tenant router" in targets:
        name = "causeway + tenant router"
        lines += [
            "",
            f"With the tenant router renaming every topic, against Causeway without it (same rounds): "
            f"produce {100 * against_causeway(name, 'produce_mbs'):.0f}%, "
            f"consume {100 * against_causeway(name, 'consume_mbs'):.0f}%.",
        ]
    name = "causeway without read-ahead"
    lines += [
        "",
        f"Fetch read-ahead: Causeway against the same gateway with `fetch_read_ahead = false` (same rounds): "
        f"consume {100 / against_causeway(name, 'consume_mbs'):.0f}%, produce {100 / against_causeway(name, 'produce_mbs'):.0f}%.",
    ]
    name = "causeway, 1 worker thread"
    lines += [
        "",
        f"One worker thread (`gateway.worker_threads = 1`) against one per CPU (same rounds): "
        f"produce {100 * against_causeway(name, 'produce_mbs'):.0f}%, "
        f"consume {100 * against_causeway(name, 'consume_mbs'):.0f}%.",
    ]
    name = "causeway + 100 ACL rules"
    lines += [
        "",
        f"Checking 100 ACL rules on every request, against Causeway without rules (same rounds): "
        f"produce {100 * against_causeway(name, 'produce_mbs'):.0f}%, "
        f"consume {100 * against_causeway(name, 'consume_mbs'):.0f}%.",
    ]
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(table + "\n\n")


if __name__ == "__main__":
    main()
