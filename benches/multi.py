"""Two clusters behind one endpoint: what an application pays, or saves, by reaching
two tansu clusters through one Causeway instead of holding one client per cluster.

In one run this starts two tansu brokers (two independent clusters) and one Causeway
routing `a.*` to cluster one and everything else to cluster two. Each round gives two
targets the same workload, in alternating order:

- direct: what the application needs without Causeway, one librdkafka client per
  cluster, driven from one loop;
- causeway: one client whose bootstrap is Causeway.

Steps per round (topics a.bench-N-* on cluster one and b.bench-N-* on cluster two,
created fresh on the backends each round):

1. produce throughput: COUNT records to each of the two topics, interleaved a, b, a, b;
2. consume throughput: both topics read from offset 0. Each target reads the
   records the other produced in step 1, so the direct consumers also check, cluster
   by cluster, that every record sent through Causeway is where its route says (the
   counts must match exactly);
3. skewed consume: an a-topic with its records plus an empty b-topic on cluster
   two, both assigned; only cluster one has anything to send;
4. produce latency at a fixed rate, alternating topics, linger 0.

Ratios are medians of same-round pairs; absolute figures are medians over rounds.

    python benches/multi.py --out benches/results/latest.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from load import create_topic, delete_topic, pct  # noqa: E402
from rig import Gateway, Tansu, clusters_config, wait_for  # noqa: E402

TARGETS = ("direct", "causeway")
STEPS = (  # result key, table row
    ("produce_mbs", "produce MB/s"),
    ("consume_mbs", "consume MB/s"),
    ("skew_mbs", "skewed consume MB/s (cluster two's topic empty)"),
    ("p50", "produce latency p50 ms"),
    ("p99", "produce latency p99 ms"),
)


def producer(addr: str, linger_ms: int) -> Producer:
    return Producer({
        "bootstrap.servers": addr,
        "linger.ms": linger_ms,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "acks": "all",
        "compression.type": "none",
    })


def consumer(addr: str, group: str, fetch_wait_ms: int | None) -> Consumer:
    conf = {
        "bootstrap.servers": addr,
        "group.id": group,
        "enable.auto.commit": False,
        "fetch.max.bytes": 52_428_800,
        "max.partition.fetch.bytes": 10_485_760,
        "queued.max.messages.kbytes": 1_048_576,
    }
    if fetch_wait_ms is not None:
        conf["fetch.wait.max.ms"] = fetch_wait_ms
    return Consumer(conf)


def produce_throughput(prods, topics, count, size, partitions):
    """COUNT records to each topic, interleaved; record i goes to topics[i % 2]
    through prods[i % 2] (the same producer twice for Causeway). MB/s until every
    record is acknowledged."""
    payload = os.urandom(size)
    distinct = list({id(p): p for p in prods}.values())
    failed = []

    def cb(err, _msg):
        if err is not None:
            failed.append(err)

    t0 = time.perf_counter()
    for i in range(2 * count):
        k = i % 2
        while True:
            try:
                prods[k].produce(topics[k], payload, partition=(i // 2) % partitions, on_delivery=cb)
                break
            except BufferError:
                prods[k].poll(0.01)
        if i % 1000 == 0:
            for p in distinct:
                p.poll(0)
    left = sum(p.flush(120) for p in distinct)
    elapsed = time.perf_counter() - t0
    assert left == 0 and not failed, f"{left} undelivered, {len(failed)} failed: {failed[:3]}"
    return 2 * count * size / elapsed / 1e6


def consume_all(readers, size, partitions, timeout):
    """readers: (Consumer, {topic: records expected}) pairs, each consumer assigned
    every partition of its topics from offset 0 and all polled from one loop.
    MB/s from the first poll until every expected record is in."""
    for c, want in readers:
        c.assign([TopicPartition(t, p, 0) for t in want for p in range(partitions)])
    got = [{t: 0 for t in want} for _, want in readers]
    total = sum(n for _, want in readers for n in want.values())
    t0 = time.perf_counter()
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        left = [sum(want.values()) - sum(g.values()) for (_, want), g in zip(readers, got)]
        if not any(n > 0 for n in left):
            break
        for (c, _), g, n in zip(readers, got, left):
            # Ask for exactly what is still missing, so the last call returns as soon as
            # it is in (consume() otherwise waits its timeout for a full batch). A
            # consumer with nothing left to read is still polled, without waiting.
            msgs = c.consume(min(n, 10_000), 0.1) if n > 0 else c.consume(1, 0)
            for m in msgs:
                if m.error() is None:
                    g[m.topic()] = g.get(m.topic(), 0) + 1
    elapsed = time.perf_counter() - t0
    for c, _ in readers:
        c.close()
    for (_, want), g in zip(readers, got):
        assert g == want, f"after {elapsed:.1f} s: consumed {g}, expected {want}"
    return total * size / elapsed / 1e6


def produce_latency(prods, topics, rate, seconds, size):
    """RATE records/s in all, alternating topics, linger 0; per-record delivery
    latencies in ms."""
    payload = os.urandom(size)
    distinct = list({id(p): p for p in prods}.values())
    lat = []

    def cb(err, _msg, start):
        if err is None:
            lat.append((time.perf_counter() - start) * 1000)

    # Warm up connections and metadata for both topics.
    for p, t in zip(prods, topics):
        p.produce(t, payload)
    for p in distinct:
        p.flush(10)
    interval = 1.0 / rate
    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        target = start + i * interval
        while (now := time.perf_counter()) < target:
            for p in distinct:
                p.poll(0)
            if target - now > 0.0005:
                time.sleep(0.0002)
        k = i % 2
        t = time.perf_counter()
        prods[k].produce(topics[k], payload, on_delivery=lambda e, m, t=t: cb(e, m, t))
        prods[k].poll(0)
    for p in distinct:
        p.flush(30)
    assert len(lat) == n, f"{n - len(lat)} of {n} latency records failed"
    return lat


def every_cluster_ready(gw: Gateway) -> bool:
    status, body = gw.get("/readyz")
    return status == 200 and all(c["ready"] for c in json.loads(body)["clusters"])


def fetch_stats(gw: Gateway) -> tuple[float, float]:
    """(Fetch requests answered, seconds spent on them) from Causeway's /metrics."""
    n = s = 0.0
    for name, value in gw.metrics().items():
        if 'api="fetch"' not in name:
            continue
        if name.startswith("causeway_requests_total"):
            n += value
        elif name.startswith("causeway_request_duration_seconds_sum"):
            s += value
    return n, s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # The same knobs as load.py, so benches/run.sh can pass its arguments to both.
    ap.add_argument("--count", type=int, default=75_000, help="records per topic per throughput run (two topics)")
    ap.add_argument("--size", type=int, default=1024, help="bytes per record")
    ap.add_argument("--partitions", type=int, default=6, help="partitions of each throughput topic")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rate", type=int, default=1000, help="records/s (both topics together) for the latency run")
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of the latency run")
    ap.add_argument("--fetch-wait-ms", type=int, default=None,
                    help="consumers' fetch.wait.max.ms (default: librdkafka's, 500)")
    ap.add_argument("--timeout", type=float, default=120.0, help="give up on a consume run after this many seconds")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    started = time.perf_counter()
    one, two = Tansu("one"), Tansu("two")
    routes = [{"topics": "a.*", "cluster": "one"}, {"topics": "*", "cluster": "two"}]
    gw = Gateway(config=clusters_config({"one": one.addr, "two": two.addr}, routes),
                 extra_env={"CAUSEWAY_LOG": "warn"})
    results = {t: [] for t in TARGETS}
    fetches = {"consume": [], "skew": []}
    try:
        wait_for(lambda: every_cluster_ready(gw), 15, "Causeway to reach both clusters")
        gw_admin = AdminClient({"bootstrap.servers": gw.addr})
        for rnd in range(args.rounds):
            order = TARGETS if rnd % 2 == 0 else TARGETS[::-1]
            data = {t: (f"a.bench-{rnd}-{t}", f"b.bench-{rnd}-{t}") for t in TARGETS}
            lat_topics = {t: (f"a.bench-{rnd}-{t}-lat", f"b.bench-{rnd}-{t}-lat") for t in TARGETS}
            empty = f"b.bench-{rnd}-empty"
            made = {one.addr: [], two.addr: []}
            for (a, b), n in [*((d, args.partitions) for d in data.values()),
                              *((d, 1) for d in lat_topics.values())]:
                for addr, topic in ((one.addr, a), (two.addr, b)):
                    create_topic(addr, topic, n)
                    made[addr].append(topic)
            create_topic(two.addr, empty, args.partitions)
            made[two.addr].append(empty)
            everything = {t for ts in made.values() for t in ts}
            wait_for(lambda: everything <= set(gw_admin.list_topics(timeout=5).topics), 30,
                     "the round's topics to be visible through Causeway")

            def prods(target, linger):
                if target == "direct":
                    return [producer(one.addr, linger), producer(two.addr, linger)]
                p = producer(gw.addr, linger)
                return [p, p]

            def readers(target, a, b, want_b, tag):
                group = f"bench-multi-{rnd}-{tag}-{target}"
                if target == "direct":
                    return [(consumer(one.addr, group, args.fetch_wait_ms), {a: args.count}),
                            (consumer(two.addr, group, args.fetch_wait_ms), {b: want_b})]
                return [(consumer(gw.addr, group, args.fetch_wait_ms), {a: args.count, b: want_b})]

            row = {t: {} for t in TARGETS}
            for t in order:
                row[t]["produce_mbs"] = produce_throughput(prods(t, 5), data[t], args.count, args.size, args.partitions)
            # Each target reads what the other produced (see the module doc); the skewed
            # run uses one a-topic for both, with the empty b-topic.
            for step in ("consume", "skew"):
                key = "consume_mbs" if step == "consume" else "skew_mbs"
                for t in order:
                    if step == "consume":
                        (a, b), want_b = data[TARGETS[1 - TARGETS.index(t)]], args.count
                    else:
                        a, b, want_b = data["direct"][0], empty, 0
                    before = fetch_stats(gw)
                    row[t][key] = consume_all(readers(t, a, b, want_b, step), args.size, args.partitions, args.timeout)
                    if t == "causeway":
                        after = fetch_stats(gw)
                        n, s = after[0] - before[0], after[1] - before[1]
                        fetches[step].append((n, 1000 * s / n if n else 0.0))
            for t in order:
                lat = produce_latency(prods(t, 0), lat_topics[t], args.rate, args.seconds, args.size)
                row[t]["p50"], row[t]["p99"] = pct(lat, 50), pct(lat, 99)
            for addr, topics in made.items():
                for topic in topics:
                    delete_topic(addr, topic)
            for t in TARGETS:
                results[t].append(row[t])
                r = row[t]
                print(f"round {rnd} {t:8s} produce {r['produce_mbs']:7.1f} MB/s  consume {r['consume_mbs']:7.1f} MB/s  "
                      f"skewed {r['skew_mbs']:7.1f} MB/s  p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms", flush=True)
            print(f"round {rnd} causeway fetches: consume {fetches['consume'][-1][0]:.0f} (mean {fetches['consume'][-1][1]:.1f} ms), "
                  f"skewed {fetches['skew'][-1][0]:.0f} (mean {fetches['skew'][-1][1]:.1f} ms)", flush=True)
    finally:
        gw.close()
        one.close()
        two.close()

    def med(target, key):
        return statistics.median(r[key] for r in results[target])

    def paired(key, f):
        return statistics.median(f(c[key], d[key]) for c, d in zip(results["causeway"], results["direct"]))

    wait = "librdkafka's default 500" if args.fetch_wait_ms is None else str(args.fetch_wait_ms)
    lines = [
        f"Workload: two tansu clusters; Causeway routes `a.*` to one and `*` to two. Throughput: {args.count} records "
        f"of {args.size} B to each of a.bench (cluster one) and b.bench (cluster two), {args.partitions} partitions each, "
        f"interleaved, acks=all, linger 5 ms, no compression; consumers assign every partition from offset 0, "
        f"fetch.wait.max.ms {wait}. Skewed consume: the a-topic's records plus an empty b-topic. "
        f"Latency: {args.rate} records/s for {args.seconds:g} s alternating the two topics, linger 0. "
        f"Direct: one client per cluster (two producers, or two consumers) driven from one loop; Causeway: one client. "
        f"Median of {args.rounds} interleaved rounds; ratios and differences are medians of same-round pairs. "
        f"Client: librdkafka (confluent-kafka). Machine: {os.cpu_count()} cores, both brokers, Causeway and client on the same host.",
        "",
        "| step | direct | Causeway | Causeway / direct | Causeway - direct |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, label in STEPS:
        diff = f"{paired(key, lambda c, d: c - d):+.2f}" if key in ("p50", "p99") else "-"
        lines.append(f"| {label} | {med('direct', key):.2f} | {med('causeway', key):.2f} | "
                     f"{100 * paired(key, lambda c, d: c / d):.0f}% | {diff} |")
    fc, fs = fetches["consume"], fetches["skew"]
    lines += [
        "",
        f"Fetch requests Causeway answered (median per run): consume {statistics.median(n for n, _ in fc):.0f}, "
        f"mean {statistics.median(ms for _, ms in fc):.1f} ms each; skewed consume {statistics.median(n for n, _ in fs):.0f}, "
        f"mean {statistics.median(ms for _, ms in fs):.1f} ms each.",
    ]
    table = "\n".join(lines)
    print()
    print(table)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(table + "\n\n")


if __name__ == "__main__":
    main()
