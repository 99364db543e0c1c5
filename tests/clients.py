"""Produce and consume with each real client library, in one shape.

A record is (key: bytes, value: bytes, headers: list[(str, bytes)]). Consumers
return (offset, key, value, headers) tuples so tests can compare exact bytes and
offsets across clients and against the backend.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

from rig import ROOT, kcat, node_modules

CLIENTS = ["confluent", "kafka-python", "aiokafka", "kcat", "kafkajs"]
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def records(n: int, tag: str) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    return [
        (
            f"key-{tag}-{i}".encode(),
            f"value-{tag}-{i}-".encode() + b"x" * (i * 7),
            [("h-index", str(i).encode()), ("h-tag", tag.encode())],
        )
        for i in range(n)
    ]


# --- librdkafka via confluent-kafka -------------------------------------------------


def produce_confluent(addr, topic, recs, codec="none", partition=0, extra=None):
    from confluent_kafka import Producer

    conf = {"bootstrap.servers": addr, "compression.type": codec, "linger.ms": 5}
    conf.update(extra or {})
    p = Producer(conf)
    errors = []

    def done(err, msg):
        if err is not None:
            errors.append(err)

    for key, value, headers in recs:
        p.produce(topic, key=key, value=value, headers=headers, partition=partition, on_delivery=done)
    left = p.flush(30)
    assert left == 0, f"{left} records not delivered"
    assert not errors, errors


def consume_confluent(addr, topic, partition, count, extra=None, timeout=30.0):
    from confluent_kafka import Consumer, TopicPartition

    conf = {
        "bootstrap.servers": addr,
        "group.id": f"reader-{topic}-{time.monotonic_ns()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }
    conf.update(extra or {})
    c = Consumer(conf)
    c.assign([TopicPartition(topic, partition, 0)])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert m.error() is None, m.error()
            out.append((m.offset(), m.key(), m.value(), [(k, v) for k, v in (m.headers() or [])]))
    finally:
        c.close()
    return out


# --- kafka-python ----------------------------------------------------------------------


def produce_kafka_python(addr, topic, recs, codec="none", partition=0):
    from kafka import KafkaProducer

    p = KafkaProducer(
        bootstrap_servers=addr,
        compression_type=None if codec == "none" else codec,
        linger_ms=5,
    )
    futures = [
        p.send(topic, key=key, value=value, headers=headers, partition=partition)
        for key, value, headers in recs
    ]
    for f in futures:
        f.get(timeout=30)
    p.close()


def consume_kafka_python(addr, topic, partition, count, timeout=30.0, timestamps=False):
    """The first `count` records of a partition as (offset, key, value, headers),
    with each record's timestamp last if `timestamps`."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=addr, enable_auto_commit=False, group_id=None)
    tp = TopicPartition(topic, partition)
    c.assign([tp])
    c.seek_to_beginning(tp)
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        for batch in c.poll(timeout_ms=500).values():
            for m in batch:
                record = (m.offset, m.key, m.value, [(k, v) for k, v in m.headers])
                out.append(record + (m.timestamp,) if timestamps else record)
    c.close()
    return out


# --- aiokafka --------------------------------------------------------------------------


def produce_aiokafka(addr, topic, recs, codec="none", partition=0):
    from aiokafka import AIOKafkaProducer

    async def run():
        p = AIOKafkaProducer(
            bootstrap_servers=addr,
            compression_type=None if codec == "none" else codec,
            linger_ms=5,
        )
        await p.start()
        try:
            futs = [
                await p.send(topic, key=key, value=value, headers=headers, partition=partition)
                for key, value, headers in recs
            ]
            for f in futs:
                await f
        finally:
            await p.stop()

    asyncio.run(run())


def consume_aiokafka(addr, topic, partition, count, timeout=30.0):
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run():
        c = AIOKafkaConsumer(bootstrap_servers=addr, enable_auto_commit=False, group_id=None)
        await c.start()
        out = []
        try:
            tp = TopicPartition(topic, partition)
            c.assign([tp])
            await c.seek_to_beginning(tp)
            deadline = time.monotonic() + timeout
            while len(out) < count and time.monotonic() < deadline:
                got = await c.getmany(timeout_ms=500)
                for batch in got.values():
                    for m in batch:
                        out.append((m.offset, m.key, m.value, [(k, bytes(v)) for k, v in m.headers]))
        finally:
            await c.stop()
        return out

    return asyncio.run(run())


# --- kcat (librdkafka 2.0.2) -------------------------------------------------------------


def produce_kcat(addr, topic, recs, codec="none", partition=0):
    # kcat sets the same headers on every record of a run; produce one run per
    # distinct header set so each record keeps its own.
    for key, value, headers in recs:
        args = [kcat(), "-b", addr, "-P", "-t", topic, "-p", str(partition), "-K", "\t", "-z", codec]
        for k, v in headers:
            args += ["-H", f"{k}={v.decode()}"]
        subprocess.run(args, input=key + b"\t" + value + b"\n", check=True, timeout=30, capture_output=True)


def consume_kcat(addr, topic, partition, count, timeout=30.0):
    args = [
        kcat(), "-b", addr, "-C", "-t", topic, "-p", str(partition), "-o", "beginning",
        "-c", str(count), "-e", "-J",
    ]
    r = subprocess.run(args, check=True, timeout=timeout, capture_output=True)
    out = []
    for line in r.stdout.decode().splitlines():
        m = json.loads(line)
        headers = m.get("headers") or []
        pairs = [(headers[i], headers[i + 1].encode()) for i in range(0, len(headers), 2)]
        out.append((m["offset"], m["key"].encode(), m["payload"].encode(), pairs))
    return out


# --- kafkajs -------------------------------------------------------------------------------


def kafkajs(command: dict, timeout=60.0) -> dict:
    r = subprocess.run(
        ["node", str(ROOT / "tests" / "js" / "client.js")],
        input=json.dumps(command).encode(),
        capture_output=True,
        timeout=timeout,
        env={"NODE_PATH": str(node_modules()), "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    if r.returncode != 0:
        raise AssertionError(f"kafkajs failed ({r.returncode}): {r.stderr.decode()[-3000:]}")
    return json.loads(r.stdout.decode().strip().splitlines()[-1])


def produce_kafkajs(addr, topic, recs, codec="none", partition=0):
    kafkajs(
        {
            "op": "produce",
            "brokers": [addr],
            "topic": topic,
            "partition": partition,
            "codec": codec,
            "records": [
                {"key": k.decode(), "value": v.decode(), "headers": {hk: hv.decode() for hk, hv in h}}
                for k, v, h in recs
            ],
        }
    )


def consume_kafkajs(addr, topic, partition, count, timeout=30.0):
    got = kafkajs({"op": "consume", "brokers": [addr], "topic": topic, "partition": partition, "count": count})
    return [
        (int(m["offset"]), m["key"].encode(), m["value"].encode(), [(k, v.encode()) for k, v in m["headers"]])
        for m in got["messages"]
    ]


PRODUCE = {
    "confluent": produce_confluent,
    "kafka-python": produce_kafka_python,
    "aiokafka": produce_aiokafka,
    "kcat": produce_kcat,
    "kafkajs": produce_kafkajs,
}

CONSUME = {
    "confluent": consume_confluent,
    "kafka-python": consume_kafka_python,
    "aiokafka": consume_aiokafka,
    "kcat": consume_kcat,
    "kafkajs": consume_kafkajs,
}


def watermarks(addr, topic, partition):
    """(low, high) offsets of a partition, read with librdkafka's ListOffsets."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": addr, "group.id": "watermarks", "enable.auto.commit": False})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    finally:
        c.close()


# --- checking where records landed: straight to a broker, without creating anything ------


def produce_confluent_many(addr, sends, extra=None):
    """One librdkafka producer writes every (topic, partition, records) of `sends`;
    returns, per send, [(topic, partition, offset)] from the delivery reports."""
    from confluent_kafka import Producer

    conf = {"bootstrap.servers": addr, "linger.ms": 5}
    conf.update(extra or {})
    p = Producer(conf)
    acked = [[None] * len(recs) for _, _, recs in sends]
    errors = []

    def done(s, i):
        def cb(err, msg):
            if err is not None:
                errors.append(err)
            else:
                acked[s][i] = (msg.topic(), msg.partition(), msg.offset())

        return cb

    for s, (topic, partition, recs) in enumerate(sends):
        for i, (key, value, headers) in enumerate(recs):
            p.produce(topic, key=key, value=value, headers=headers, partition=partition, on_delivery=done(s, i))
    left = p.flush(30)
    assert left == 0, f"{left} records not delivered"
    assert not errors, errors
    return acked


def produce_confluent_acked(addr, topic, recs, partition=0, extra=None):
    """Like produce_confluent, returning [(topic, partition, offset)] per record."""
    return produce_confluent_many(addr, [(topic, partition, recs)], extra=extra)[0]


def produce_kafka_python_many(addr, sends, **config):
    """One kafka-python producer (library defaults: idempotent, acks=all) writes every
    (topic, partition, records) of `sends`; returns, per send, [(topic, partition,
    offset)]."""
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=addr, linger_ms=5, **config)
    try:
        futures = [
            [p.send(topic, key=key, value=value, headers=headers, partition=partition) for key, value, headers in recs]
            for topic, partition, recs in sends
        ]
        metas = [[f.get(timeout=30) for f in fs] for fs in futures]
    finally:
        p.close(timeout=5)
    return [[(m.topic, m.partition, m.offset) for m in ms] for ms in metas]


def list_topics(addr) -> dict[str, int]:
    """Every topic a broker (or the gateway) lists, with its partition count. Asks for
    all topics, so nothing is auto-created (tansu creates topics it is asked about)."""
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": addr}).list_topics(timeout=10)
    return {name: len(t.partitions) for name, t in meta.topics.items() if t.error is None}


def read_partitions(addr, topic, partitions, isolation="read_uncommitted", timeout=20.0):
    """Every record of the given partitions, from the beginning to the end the broker
    reports: {partition: [(offset, key, value, headers)]}, read by one consumer. The
    topic must exist (checked first: a read of a missing topic makes tansu create it).
    Straight from tansu, read_committed stops at open transactions but does not hide
    aborted ones (tansu lists no aborted transactions); Causeway hides them."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    topics = list_topics(addr)
    assert topic in topics, f"{topic} does not exist at {addr} (has {sorted(topics)})"
    c = Consumer({
        "bootstrap.servers": addr,
        "group.id": f"read-partitions-{time.monotonic_ns()}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "isolation.level": isolation,
        "fetch.wait.max.ms": 50,
        "auto.offset.reset": "earliest",
    })
    # Offset 0 rather than OFFSET_BEGINNING, whose lookup costs librdkafka half a
    # second; a log that no longer starts at 0 falls back to "earliest".
    c.assign([TopicPartition(topic, p, 0) for p in partitions])
    out = {p: [] for p in partitions}
    ended = set()
    deadline = time.monotonic() + timeout
    try:
        while ended != set(partitions):
            assert time.monotonic() < deadline, f"no end of {topic}{sorted(set(partitions) - ended)} at {addr} after {timeout}s"
            m = c.poll(0.1)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    ended.add(m.partition())
                    continue
                raise AssertionError(f"reading {topic}[{m.partition()}] at {addr}: {m.error()}")
            out[m.partition()].append((m.offset(), m.key(), m.value(), [(k, v) for k, v in (m.headers() or [])]))
    finally:
        c.close()
    return out


def read_partition(addr, topic, partition, isolation="read_uncommitted", timeout=20.0):
    """[(offset, key, value, headers)] of one partition, beginning to end."""
    return read_partitions(addr, topic, [partition], isolation=isolation, timeout=timeout)[partition]


def read_topic(addr, topic, isolation="read_uncommitted"):
    """{partition: [(offset, key, value, headers)]} for every partition of a topic."""
    count = list_topics(addr)[topic]
    return read_partitions(addr, topic, list(range(count)), isolation=isolation)


def group_offsets(addr, group):
    """{(topic, partition): offset} of every offset the group has committed at `addr`
    (kafka-python's OffsetFetch for all topics; it never joins the group)."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=addr)
    try:
        got = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in got.items()}


def committed(addr, group, partitions):
    """{(topic, partition): committed offset, or None} for a group, read with
    OffsetFetch only: the consumer never subscribes, so it never joins the group."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": addr, "group.id": group, "enable.auto.commit": False})
    try:
        got = c.committed([TopicPartition(t, p) for t, p in partitions], timeout=15)
    finally:
        c.close()
    for tp in got:
        assert tp.error is None, tp.error
    return {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None) for tp in got}


def produce_expecting_failure(addr, topic, partition=0, extra=None, flush_timeout=15.0):
    """Produces one record that should fail. Returns (error, seconds until the
    producer gave up): the KafkaError from produce() itself or its delivery report."""
    from confluent_kafka import KafkaException, Producer

    conf = {"bootstrap.servers": addr, "message.timeout.ms": 5000}
    conf.update(extra or {})
    p = Producer(conf)
    errors = []
    started = time.monotonic()
    try:
        p.produce(topic, key=b"k", value=b"doomed", partition=partition,
                  on_delivery=lambda err, msg: errors.append(err))
    except KafkaException as e:
        return e.args[0], time.monotonic() - started
    left = p.flush(flush_timeout)
    elapsed = time.monotonic() - started
    assert left == 0, f"the record was neither delivered nor failed within {flush_timeout}s"
    assert len(errors) == 1
    return errors[0], elapsed


def deliver(addr, topic, values, conf, timeout_ms=10000):
    """Produces `values` to partition 0 with the librdkafka settings `conf`
    (security, login). Returns each record's delivery error, None if delivered."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": addr, "linger.ms": 0, "message.timeout.ms": timeout_ms, **conf})
    errors = []
    for v in values:
        p.produce(topic, value=v, partition=0, on_delivery=lambda e, m: errors.append(e))
    p.flush(timeout_ms / 1000 + 10)
    return errors


def read_to_end(addr, topic, conf, partition=0, timeout=20.0):
    """(offset, value) of every record of one partition up to its end, read with
    the librdkafka settings `conf` (security, login, client id)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer({"bootstrap.servers": addr, "group.id": f"read-{time.monotonic_ns()}", "enable.auto.commit": False,
                  "enable.partition.eof": True, "fetch.wait.max.ms": 50, **conf})
    c.assign([TopicPartition(topic, partition, 0)])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.1)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    return out
                raise AssertionError(f"reading {topic}[{partition}]: {m.error()}")
            out.append((m.offset(), m.value()))
    finally:
        c.close()
    raise AssertionError(f"no end of {topic}[{partition}] after {timeout}s")
