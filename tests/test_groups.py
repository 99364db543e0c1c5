"""Consumer groups through Causeway: join, rebalance between two members, commit,
and resume from committed offsets after a restart."""

import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from clients import consume_kafkajs, kafkajs, produce_confluent, records

pytestmark = pytest.mark.slow


def consumer(addr, group, **extra):
    conf = {
        "bootstrap.servers": addr,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 500,
        "partition.assignment.strategy": "range",
    }
    conf.update(extra)
    return Consumer(conf)


def poll_until(consumers, want, seen, timeout=60.0):
    """Polls every consumer until `want` distinct (partition, offset) were seen."""
    deadline = time.monotonic() + timeout
    while len(seen) < want and time.monotonic() < deadline:
        for name, c in consumers.items():
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            seen.setdefault((m.partition(), m.offset()), []).append((name, m.value()))
            c.commit(message=m, asynchronous=False)
    return seen


def assignment(c):
    return sorted(tp.partition for tp in c.assignment())


def test_two_members_rebalance_commit_and_resume(gateway, backend, new_topic):
    topic = new_topic(partitions=4)
    group = f"group-{topic}"
    for p in range(4):
        produce_confluent(gateway.addr, topic, records(5, f"p{p}"), partition=p)

    a = consumer(gateway.addr, group)
    a.subscribe([topic])
    seen = poll_until({"a": a}, 8, {})
    assert assignment(a) == [0, 1, 2, 3], "a lone member owns every partition"

    b = consumer(gateway.addr, group)
    b.subscribe([topic])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (assignment(a) and assignment(b) and len(assignment(a)) == 2):
        poll_until({"a": a, "b": b}, 20, seen, timeout=0.5)
    assert sorted(assignment(a) + assignment(b)) == [0, 1, 2, 3], "the rebalance split the partitions"
    assert len(assignment(a)) == 2 and len(assignment(b)) == 2

    poll_until({"a": a, "b": b}, 20, seen)
    assert len(seen) == 20, "every record consumed"
    a.close()
    b.close()

    # The committed offsets are on the backend, where the group lives.
    direct = consumer(backend.addr, group)
    committed = direct.committed([TopicPartition(topic, p) for p in range(4)], timeout=10)
    direct.close()
    assert [tp.offset for tp in committed] == [5, 5, 5, 5]

    # New records, then a restarted member resumes after what was committed.
    produce_confluent(gateway.addr, topic, records(3, "late"), partition=2)
    c = consumer(gateway.addr, group)
    c.subscribe([topic])
    resumed = poll_until({"c": c}, 3, {})
    c.close()
    assert sorted(resumed) == [(2, 5), (2, 6), (2, 7)]
    assert [v[0][1] for _, v in sorted(resumed.items())] == [v for _, v, _ in records(3, "late")]


def test_kafkajs_group_commits_and_resumes(gateway, new_topic):
    topic = new_topic(partitions=2)
    group = f"kafkajs-{topic}"
    produce_confluent(gateway.addr, topic, records(4, "first"), partition=0)
    first = kafkajs({"op": "consume", "brokers": [gateway.addr], "topic": topic, "count": 4, "group": group, "commit": True})
    assert [m["offset"] for m in first["messages"]] == ["0", "1", "2", "3"]
    produce_confluent(gateway.addr, topic, records(2, "second"), partition=0)
    second = kafkajs({"op": "consume", "brokers": [gateway.addr], "topic": topic, "count": 2, "group": group, "commit": True})
    assert [(m["offset"], m["value"]) for m in second["messages"]] == [
        ("4", records(2, "second")[0][1].decode()),
        ("5", records(2, "second")[1][1].decode()),
    ]


def test_group_listing_and_description(gateway, new_topic):
    from confluent_kafka.admin import AdminClient

    topic = new_topic()
    group = f"described-{topic}"
    produce_confluent(gateway.addr, topic, records(1, "x"))
    c = consumer(gateway.addr, group)
    c.subscribe([topic])
    poll_until({"c": c}, 1, {})

    admin = AdminClient({"bootstrap.servers": gateway.addr})
    listed = admin.list_consumer_groups().result(timeout=15)
    assert group in [g.group_id for g in listed.valid]
    described = admin.describe_consumer_groups([group])[group].result(timeout=15)
    assert described.group_id == group
    assert len(described.members) == 1
    assert described.coordinator.id == 0
    assert (described.coordinator.host, described.coordinator.port) == ("127.0.0.1", gateway.port)
    c.close()
