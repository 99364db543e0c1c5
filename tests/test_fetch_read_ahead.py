"""Fetch read-ahead: while a consumer receives one fetch answer, Causeway has
already asked the broker for the next one, from where that consumer will go on
reading. Every client must still read every record once, in order, with its
bytes; a consumer that reads elsewhere (a seek) gets what it asked for."""

import time

import pytest

from clients import CONSUME, produce_confluent
from rig import Gateway, wait_for

USED = 'causeway_fetch_read_ahead_total{outcome="used"}'
UNUSED = 'causeway_fetch_read_ahead_total{outcome="unused"}'
SENT = 'causeway_fetch_read_ahead_total{outcome="sent"}'
HELD = "causeway_fetch_read_ahead_bytes_held"


# About 12 MiB: tansu answers a fetch with about 5 MiB at most, so a consumer
# takes at least three fetches to read them.
N = 6000


def big_records(n: int, tag: str) -> list[tuple[bytes, bytes, list]]:
    """About 2 KiB each, every value distinct (letters: some clients' helpers
    read values as text)."""
    return [(f"{tag}-{i}".encode(), f"{tag}-{i}:".encode() + bytes([97 + i % 26]) * 2048, []) for i in range(n)]


def delta(after: dict, before: dict, name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


@pytest.mark.parametrize("consumer", ["confluent", "kafka-python", "aiokafka", "kcat", "kafkajs"])
def test_every_client_reads_every_record_once_with_read_ahead(gateway, backend, new_topic, consumer):
    topic = new_topic()
    sent = big_records(N, consumer)
    produce_confluent(backend.addr, topic, sent, partition=0)
    before = gateway.metrics()

    got = CONSUME[consumer](gateway.addr, topic, 0, len(sent))

    assert [(g[0], g[1], g[2]) for g in got] == [(i, k, v) for i, (k, v, _) in enumerate(sent)]
    after = gateway.metrics()
    # The client's own next fetches were answered by fetches asked ahead.
    assert delta(after, before, USED) >= 1, {k: v for k, v in after.items() if "read_ahead" in k}
    # The consumer has gone: whatever it left asked ahead gives its budget back.
    wait_for(lambda: gateway.metrics().get(HELD) == 0.0, 10, "the read-ahead budget to be given back")


def test_a_seek_drops_the_read_ahead_and_reads_from_the_new_offset(gateway, backend, new_topic):
    from confluent_kafka import Consumer, TopicPartition

    topic = new_topic()
    sent = big_records(N, "seek")
    produce_confluent(backend.addr, topic, sent, partition=0)
    before = gateway.metrics()
    c = Consumer({"bootstrap.servers": gateway.addr, "group.id": f"seek-{time.monotonic_ns()}",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    c.assign([TopicPartition(topic, 0, 0)])
    first, after_seek = [], []
    deadline = time.monotonic() + 30
    try:
        while len(first) < 600 and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                first.append(m.offset())
        # Back to 100: the answer asked ahead (from where the consumer was) is
        # not for these offsets.
        c.seek(TopicPartition(topic, 0, 100))
        while len(after_seek) < len(sent) - 100 and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None:
                assert m.error() is None, m.error()
                after_seek.append((m.offset(), m.key(), m.value()))
    finally:
        c.close()
    assert first == list(range(600))
    assert after_seek == [(i, k, v) for i, (k, v, _) in enumerate(sent)][100:]
    after = gateway.metrics()
    assert delta(after, before, UNUSED) >= 1
    assert delta(after, before, USED) >= 1


@pytest.mark.parametrize("setting", ["fetch_read_ahead = false", "fetch_read_ahead_max_bytes = 1000"])
def test_read_ahead_off_or_out_of_budget(backend, new_topic, setting):
    topic = new_topic()
    sent = big_records(N, "off")
    produce_confluent(backend.addr, topic, sent, partition=0)
    config = (
        f'[gateway]\nlisten = "{{listen}}"\n{setting}\n[admin]\nlisten = "{{admin}}"\n'
        f'[clusters.main]\nbootstrap = ["{backend.addr}"]\n'
    )
    gw = Gateway(config=config)
    try:
        gw.wait_ready()
        got = CONSUME["confluent"](gw.addr, topic, 0, len(sent))
        assert [(g[0], g[1], g[2]) for g in got] == [(i, k, v) for i, (k, v, _) in enumerate(sent)]
        metrics = gw.metrics()
        assert metrics.get('causeway_requests_total{api="fetch"}', 0.0) >= 3
        assert metrics.get(SENT, 0.0) == 0.0
        # 1000 bytes hold no answer: each read-ahead is refused for lack of budget.
        over = metrics.get('causeway_fetch_read_ahead_total{outcome="over_budget"}', 0.0)
        assert (over >= 1) == ("max_bytes" in setting)
    finally:
        gw.close()
