"""Idempotent and transactional producers through Causeway."""

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from clients import consume_confluent, produce_confluent, records


def test_idempotent_producer_writes_each_record_once(gateway, backend, new_topic):
    topic = new_topic(partitions=3)
    sent = records(300, "idem")
    for p in range(3):
        produce_confluent(
            gateway.addr, topic, sent[p * 100 : (p + 1) * 100], partition=p,
            extra={"enable.idempotence": True, "max.in.flight.requests.per.connection": 5, "linger.ms": 0},
        )
    for p in range(3):
        got = consume_confluent(backend.addr, topic, p, 100)
        assert [g[0] for g in got] == list(range(100))
        assert [g[2] for g in got] == [v for _, v, _ in sent[p * 100 : (p + 1) * 100]]


def read_all(addr, topic, isolation, expect_at_least, timeout=20):
    c = Consumer({
        "bootstrap.servers": addr,
        "group.id": f"reader-{isolation}-{topic}",
        "isolation.level": isolation,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    })
    c.assign([TopicPartition(topic, 0, 0)])
    values = []
    import time

    deadline = time.monotonic() + timeout
    eof = False
    while time.monotonic() < deadline and not (eof and len(values) >= expect_at_least):
        m = c.poll(0.3)
        if m is None:
            continue
        if m.error():
            eof = m.error().code() == -191  # _PARTITION_EOF
            continue
        values.append(m.value())
    c.close()
    return values


@pytest.mark.slow
def test_committed_and_aborted_transactions(gateway, new_topic):
    topic = new_topic()
    p = Producer({"bootstrap.servers": gateway.addr, "transactional.id": f"tx-{topic}", "linger.ms": 5})
    p.init_transactions(30)

    def txn(tag, n, commit):
        p.begin_transaction()
        for k, v, h in records(n, tag):
            p.produce(topic, key=k, value=v, headers=h, partition=0)
        p.flush(30)
        if commit:
            p.commit_transaction(30)
        else:
            p.abort_transaction(30)

    txn("one", 5, commit=True)
    txn("aborted", 4, commit=False)
    txn("two", 3, commit=True)

    committed = [v for _, v, _ in records(5, "one") + records(3, "two")]
    assert read_all(gateway.addr, topic, "read_committed", len(committed)) == committed
    uncommitted = read_all(gateway.addr, topic, "read_uncommitted", 12)
    assert len(uncommitted) == 12, "read_uncommitted also sees the aborted records"
    assert [v for _, v, _ in records(4, "aborted")] == uncommitted[5:9]


@pytest.mark.slow
def test_consume_transform_produce_commits_offsets_in_the_transaction(gateway, backend, new_topic):
    source, sink = new_topic(), new_topic()
    group = f"ctp-{source}"
    produce_confluent(gateway.addr, source, records(6, "in"))

    c = Consumer({"bootstrap.servers": gateway.addr, "group.id": group, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    c.subscribe([source])
    p = Producer({"bootstrap.servers": gateway.addr, "transactional.id": f"ctp-{source}"})
    p.init_transactions(30)
    got = []
    import time

    deadline = time.monotonic() + 60
    while len(got) < 6 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m)
    assert len(got) == 6
    p.begin_transaction()
    for m in got:
        p.produce(sink, key=m.key(), value=m.value().upper(), partition=0)
    p.send_offsets_to_transaction(c.position(c.assignment()), c.consumer_group_metadata(), 30)
    p.commit_transaction(30)
    c.close()

    out = consume_confluent(gateway.addr, sink, 0, 6, extra={"isolation.level": "read_committed"})
    assert [o[2] for o in out] == [v.upper() for _, v, _ in records(6, "in")]
    direct = Consumer({"bootstrap.servers": backend.addr, "group.id": group})
    committed = direct.committed([TopicPartition(source, 0)], timeout=10)
    direct.close()
    assert committed[0].offset == 6, "the group's offset was committed with the transaction"
