"""Cluster linking: how fast a Causeway mirror copies a topic, against two baselines
measured in the same run.

Two tansu brokers (source and destination clusters) and one Causeway in front of
both, with a link from source to destination. Each round writes COUNT records of
SIZE bytes over PARTITIONS partitions straight to a fresh source topic, then, in an
order that alternates from round to round:

- fetch ceiling: one librdkafka consumer reads the whole topic from the source
  (the physical limit of getting the bytes out of the source here);
- consume-produce loop: one librdkafka consumer from the source and one producer
  to a destination topic (acks=all), record by record, what MirrorMaker-style
  tools do; timed until every record is acknowledged;
- Causeway mirror: `POST /mirrors`, timed until every partition is mirrored to
  the source's end (creating the mirror topic included).

The round's first step, writing the source topic with a librdkafka producer, is
reported too: a mirror cannot write faster than the destination takes records.

Then mirror lag under steady load: RATE records/s for SECONDS to a one-partition
source topic that is being mirrored; a consumer reading the mirror through
Causeway measures, per record, the time from its producer's timestamp to its
arrival. A run before it, on another topic, does the same reading the source
directly: the figure without the mirror (the producer's and the consumer's own
share). The two runs are apart because two consumers polling one tansu broker
every few milliseconds slow it down for both (tansu's fetch cost grows with the
log), which would measure tansu, not the mirror. p50 and p99 of both.

    python benches/mirror.py --out benches/results/latest.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from load import consume_throughput, create_topic, delete_topic, pct, produce_throughput  # noqa: E402
from rig import Gateway, Tansu, admin_call, clusters_config, wait_for  # noqa: E402

ROUTES = [{"topics": "dr.*", "cluster": "destination"}, {"topics": "*", "cluster": "source"}]


def mirror_copy(gw, topic, count, size, partitions, timeout):
    t0 = time.perf_counter()
    status, body, text = admin_call(gw, "POST", "/mirrors", {"topic": topic, "link": "dr"})
    assert status == 201, text
    name = body["name"]

    def done():
        _, d, _ = admin_call(gw, "GET", f"/mirrors/{name}")
        return d["records"] >= count and all(p["lag"] == 0 for p in d["partitions"])

    deadline = t0 + timeout
    while not done():
        assert time.perf_counter() < deadline, f"mirror of {topic} not done in {timeout}s"
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    admin_call(gw, "POST", f"/mirrors/{name}/failover")
    return count * size / elapsed / 1e6, elapsed, name


def consume_produce(source, dest, topic, out_topic, count, size, partitions, timeout):
    c = Consumer({
        "bootstrap.servers": source,
        "group.id": f"loop-{topic}",
        "enable.auto.commit": False,
        "fetch.max.bytes": 52_428_800,
        "max.partition.fetch.bytes": 10_485_760,
        "queued.max.messages.kbytes": 1_048_576,
    })
    p = Producer({
        "bootstrap.servers": dest,
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "acks": "all",
        "enable.idempotence": True,
    })
    c.assign([TopicPartition(topic, i, 0) for i in range(partitions)])
    failed = []
    got = 0
    t0 = time.perf_counter()
    deadline = t0 + timeout
    while got < count:
        assert time.perf_counter() < deadline, f"loop copied {got} of {count}"
        for m in c.consume(10_000, 0.5):
            if m.error():
                continue
            while True:
                try:
                    p.produce(out_topic, m.value(), key=m.key(), headers=m.headers(), partition=m.partition(),
                              timestamp=m.timestamp()[1], on_delivery=lambda e, _m: failed.append(e) if e else None)
                    break
                except BufferError:
                    p.poll(0.01)
            got += 1
        p.poll(0)
    left = p.flush(120)
    elapsed = time.perf_counter() - t0
    c.close()
    assert left == 0 and not failed, f"{left} undelivered, {len(failed)} failed"
    return count * size / elapsed / 1e6, elapsed


def arrival_lags(addr, topic, expect, stop_at):
    """Per record: ms from its CreateTime to when this consumer got it."""
    c = Consumer({
        "bootstrap.servers": addr,
        "group.id": f"lag-{topic}-{time.monotonic_ns()}",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 10,
        "auto.offset.reset": "earliest",
    })
    # Offset 1 on: offset 0 is the producer's warm-up record.
    c.assign([TopicPartition(topic, 0, 1)])
    lags = []
    while len(lags) < expect and time.time() < stop_at:
        m = c.poll(0.05)
        if m is None or m.error():
            continue
        lags.append(time.time() * 1000 - m.timestamp()[1])
    c.close()
    return lags


def paced(addr, topic, n, rate, size):
    """Produces n records at `rate`/s, linger 0, after one warm-up record (offset 0)."""
    payload = os.urandom(size)
    p = Producer({"bootstrap.servers": addr, "linger.ms": 0, "acks": "all"})
    interval = 1.0 / rate
    start = time.perf_counter()
    for i in range(n):
        target = start + i * interval
        while (now := time.perf_counter()) < target:
            p.poll(0)
            if target - now > 0.0005:
                time.sleep(0.0002)
        p.produce(topic, payload, partition=0)
        p.poll(0)
    p.flush(30)


def lag_run(source, topic, reader_addr, read_topic, rate, seconds, size, mirror_name=None):
    n = int(rate * seconds)
    warm = Producer({"bootstrap.servers": source.addr, "linger.ms": 0, "acks": "all"})
    warm.produce(topic, b"warm-up", partition=0)
    warm.flush(10)
    results = {}
    reader = threading.Thread(
        target=lambda: results.__setitem__("lags", arrival_lags(reader_addr, read_topic, n, time.time() + seconds + 30)))
    reader.start()
    time.sleep(1.0)  # the consumer is fetching
    paced(source.addr, topic, n, rate, size)
    reader.join()
    lags = results.get("lags", [])
    assert len(lags) == n, f"{read_topic} delivered {len(lags)} of {n}"
    return lags


def steady_lag(gw, source, rate, seconds, size):
    """Two runs, one after the other, so that neither consumer's polling slows
    the other's broker: the source read directly, then a mirror read through Causeway."""
    direct = f"lag-direct-{time.monotonic_ns()}"
    create_topic(source.addr, direct, 1)
    source_lags = lag_run(source, direct, source.addr, direct, rate, seconds, size)
    topic = f"lag-{time.monotonic_ns()}"
    create_topic(source.addr, topic, 1)
    status, body, text = admin_call(gw, "POST", "/mirrors", {"topic": topic, "link": "dr"})
    assert status == 201, text
    name = body["name"]
    wait_for(lambda: admin_call(gw, "GET", f"/mirrors/{name}")[1]["state"] == "ACTIVE", 20, "mirror active")
    mirror_lags = lag_run(source, topic, gw.addr, name, rate, seconds, size)
    admin_call(gw, "POST", f"/mirrors/{name}/failover")
    return source_lags, mirror_lags


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=100_000, help="records per copy")
    ap.add_argument("--size", type=int, default=1024, help="bytes per record")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=1000, help="records/s for the lag run")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of the lag run")
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    began = time.perf_counter()
    source, dest = Tansu("source"), Tansu("destination")
    gw = Gateway(config=clusters_config({"source": source.addr, "destination": dest.addr}, ROUTES))
    rows = {"ceiling": [], "loop": [], "mirror": [], "produce": []}
    try:
        gw.wait_ready()
        status, _, text = admin_call(gw, "POST", "/links", {
            "name": "dr", "source": "source", "destination": "destination",
            "config": {"cluster.link.prefix": "dr."}})
        assert status == 201, text
        for r in range(args.rounds):
            topic = f"bench-{r}"
            create_topic(source.addr, topic, args.partitions)
            produced, _ = produce_throughput(source.addr, topic, args.count, args.size, args.partitions)
            rows["produce"].append(produced)
            loop_topic = f"loop-{r}"
            create_topic(dest.addr, loop_topic, args.partitions)
            order = ["ceiling", "loop", "mirror"] if r % 2 == 0 else ["mirror", "loop", "ceiling"]
            mirrored = None
            for what in order:
                if what == "ceiling":
                    mbs, _ = consume_throughput(source.addr, topic, args.count, args.size, args.partitions)
                elif what == "loop":
                    mbs, _ = consume_produce(source.addr, dest.addr, topic, loop_topic, args.count, args.size,
                                             args.partitions, args.timeout)
                else:
                    mbs, _, mirrored = mirror_copy(gw, topic, args.count, args.size, args.partitions, args.timeout)
                rows[what].append(mbs)
                print(f"round {r}: {what} {mbs:.1f} MB/s", flush=True)
            for t, addr in ((topic, source.addr), (loop_topic, dest.addr), (mirrored, dest.addr)):
                try:
                    delete_topic(addr, t)
                except Exception as e:  # noqa: BLE001 - tansu may not delete; memory only
                    print(f"could not delete {t}: {e}")
        src_lags, mirror_lags = steady_lag(gw, source, args.rate, args.seconds, args.size)
    finally:
        if os.environ.get("MIRROR_BENCH_LOG"):
            print(gw.process.output()[-6000:])
        gw.process.close()
        source.close()
        dest.close()

    produce = statistics.median(rows["produce"])
    vs_produce = statistics.median(m / p for m, p in zip(rows["mirror"], rows["produce"]))
    ceiling = statistics.median(rows["ceiling"])
    loop = statistics.median(rows["loop"])
    mirror = statistics.median(rows["mirror"])
    vs_ceiling = statistics.median(m / c for m, c in zip(rows["mirror"], rows["ceiling"]))
    vs_loop = statistics.median(m / lp for m, lp in zip(rows["mirror"], rows["loop"]))
    lines = [
        f"{args.rounds} rounds; {args.count:,} records of {args.size} B over {args.partitions} partitions per copy; "
        f"medians (ratios are medians of same-round pairs). Lag: {args.rate} records/s for {args.seconds:.0f} s, "
        f"one partition. {time.perf_counter() - began:.0f} s in all.",
        "",
        "| copy | MB/s | Causeway mirror vs it |",
        "| --- | ---: | ---: |",
        f"| fetch ceiling (librdkafka consumer, source) | {ceiling:.1f} | {vs_ceiling:.0%} |",
        f"| produce ceiling (librdkafka producer into tansu, acks=all) | {produce:.1f} | {vs_produce:.0%} |",
        f"| consume-produce loop (librdkafka, acks=all, idempotent) | {loop:.1f} | {vs_loop:.2f}x |",
        f"| Causeway mirror | {mirror:.1f} | |",
        "",
        "| arrival after produce | p50 ms | p99 ms |",
        "| --- | ---: | ---: |",
        f"| source, read directly | {pct(src_lags, 50):.1f} | {pct(src_lags, 99):.1f} |",
        f"| mirror, read through Causeway | {pct(mirror_lags, 50):.1f} | {pct(mirror_lags, 99):.1f} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
