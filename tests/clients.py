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


def consume_kafka_python(addr, topic, partition, count, timeout=30.0):
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
                out.append((m.offset, m.key, m.value, [(k, v) for k, v in m.headers]))
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
