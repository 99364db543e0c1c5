"""Cluster linking: mirror topics that keep their source's partitions and offsets.

Two tansu clusters, `east` (the source) and `west` (the destination), behind one
Causeway. Topics route to east; `dr.*` (the link's mirrors) to west. Records are
produced and read with real clients through Causeway, and every mirrored record is
compared with its source record by partition and offset.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from clients import (
    consume_kafka_python,
    consume_kafkajs,
    produce_confluent,
    produce_expecting_failure,
    read_partition,
    read_partitions,
    records,
    watermarks,
)
from rig import Gateway, Tansu, admin_call, causeway_bin, clusters_config, wait_for

ROUTES = [
    {"topics": "dr.*", "cluster": "west"},
    {"topics": "late.*", "cluster": "west"},
    {"topics": "s.*", "cluster": "west"},
    {"topics": "c.*", "cluster": "west"},
    {"topics": "a.*", "cluster": "west"},
    {"topics": "*", "cluster": "east"},
]
_names = iter(range(10_000))


def name(tag: str) -> str:
    return f"{tag}-{next(_names)}"


@pytest.fixture(scope="module")
def linked():
    east, west = Tansu("east"), Tansu("west")
    gw = Gateway(config=clusters_config({"east": east.addr, "west": west.addr}, ROUTES))
    try:
        gw.wait_ready()
        status, body, text = admin_call(gw, "POST", "/links", {
            "name": "dr", "source": "east", "destination": "west",
            "config": {"cluster.link.prefix": "dr."},
        })
        assert status == 201, text
        assert body["config"]["cluster.link.prefix"] == "dr."
        yield east, west, gw
    finally:
        gw.process.close()
        east.close()
        west.close()


def mirror(gw, topic, link="dr"):
    status, body, text = admin_call(gw, "POST", "/mirrors", {"topic": topic, "link": link})
    assert status == 201, text
    return body["name"]


def describe(gw, mirror_name):
    status, body, text = admin_call(gw, "GET", f"/mirrors/{mirror_name}")
    assert status == 200, text
    return body


def caught_up(gw, mirror_name, ends: dict[int, int], timeout=60.0):
    """Waits until every partition is mirrored to the given source end offset."""

    def done():
        d = describe(gw, mirror_name)
        got = {p["partition"]: p["mirrored_to"] for p in d["partitions"]}
        return all(got.get(p) == end for p, end in ends.items()) and d["state"] == "ACTIVE"

    wait_for(done, timeout, f"{mirror_name} mirrored to {ends}: {describe(gw, mirror_name)}")


def log_end(addr, topic, partition, timeout=20.0):
    """A partition's high watermark as a Fetch answer reports it (tansu answers
    ListOffsets LATEST with its last batch's first offset plus one)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=addr, enable_auto_commit=False, group_id=None, fetch_max_wait_ms=10)
    tp = TopicPartition(topic, partition)
    try:
        c.assign([tp])
        c.seek_to_beginning(tp)
        deadline = time.monotonic() + timeout
        while c.highwater(tp) is None:
            assert time.monotonic() < deadline, f"no fetch answer for {topic}-{partition}"
            c.poll(timeout_ms=100)
        return c.highwater(tp)
    finally:
        c.close()


def ends_of(addr, topic, partitions):
    return {p: log_end(addr, topic, p) for p in partitions}


def transactions(addr, topic, partition, plan):
    """Runs transactions on one partition: plan is [(tag, count, commit)]."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": addr, "transactional.id": f"tx-{topic}", "linger.ms": 5})
    p.init_transactions(30)
    for tag, n, commit in plan:
        p.begin_transaction()
        for k, v, h in records(n, tag):
            p.produce(topic, key=k, value=v, headers=h, partition=partition)
        p.flush(30)
        if commit:
            p.commit_transaction(30)
        else:
            p.abort_transaction(30)


def test_mirror_holds_every_source_record_at_its_offset(linked):
    east, west, gw = linked
    topic = name("orders")
    east.create_topic(topic, 3)
    # Partition 0: plain and compressed batches, keys and headers.
    recs = records(1500, "p0")
    produce_confluent(gw.addr, topic, recs[:500], codec="zstd", partition=0)
    produce_confluent(gw.addr, topic, recs[500:1000], codec="snappy", partition=0)
    produce_confluent(gw.addr, topic, recs[1000:], codec="none", partition=0)
    # Partition 1: committed and aborted transactions leave offsets without records.
    transactions(gw.addr, topic, 1, [("one", 20, True), ("gone", 15, False), ("two", 10, True), ("gone2", 5, False), ("three", 7, True)])
    produce_confluent(gw.addr, topic, records(180, "p2"), codec="gzip", partition=2)

    mirrored = mirror(gw, topic)
    assert mirrored == f"dr.{topic}"
    ends = ends_of(gw.addr, topic, range(3))
    caught_up(gw, mirrored, ends)

    source = read_partitions(gw.addr, topic, [0, 1, 2], isolation="read_committed")
    copy = read_partitions(gw.addr, mirrored, [0, 1, 2], isolation="read_committed")
    assert len(source[0]) == 1500 and len(source[1]) == 37 and len(source[2]) == 180
    for p in range(3):
        assert copy[p] == source[p], f"partition {p} differs"
    # The gaps really are there: markers and aborted records took offsets.
    offsets = [r[0] for r in copy[1]]
    assert offsets[-1] > 37 and offsets != list(range(37))
    # The end offsets clients see match the source's.
    assert ends_of(gw.addr, mirrored, range(3)) == ends

    # Clients written elsewhere read the same records at the same offsets,
    # skipping the filler between them.
    want = [(o, k, v) for o, k, v, _ in source[1]]
    assert [(o, k, v) for o, k, v, _ in consume_kafka_python(gw.addr, mirrored, 1, 37)] == want

    # New source records follow, at their source offsets.
    produce_confluent(gw.addr, topic, records(40, "later"), codec="gzip", partition=1)
    caught_up(gw, mirrored, ends_of(gw.addr, topic, [1]))
    assert read_partition(gw.addr, mirrored, 1, isolation="read_committed") == read_partition(
        gw.addr, topic, 1, isolation="read_committed")

    # Straight from the destination, the mirror is a normal topic (filler included).
    assert watermarks(west.addr, mirrored, 1)[0] == 0
    assert log_end(west.addr, mirrored, 1) == ends_of(gw.addr, topic, [1])[1]


def test_a_mirror_started_at_the_latest_offset_keeps_the_source_numbering(linked):
    east, west, gw = linked
    status, _, text = admin_call(gw, "POST", "/links", {
        "name": "late", "source": "east", "destination": "west",
        "config": {"cluster.link.prefix": "late.", "mirror.start.offset.spec": "latest"},
    })
    assert status == 201, text
    topic = name("events")
    east.create_topic(topic, 1)
    produce_confluent(gw.addr, topic, records(120, "before"), codec="zstd", partition=0)
    mirrored = mirror(gw, topic, link="late")
    produce_confluent(gw.addr, topic, records(60, "after"), codec="zstd", partition=0)
    caught_up(gw, mirrored, {0: 180})
    got = read_partition(gw.addr, mirrored, 0)
    assert got == read_partition(gw.addr, topic, 0)[120:]
    assert got[0][0] == 120
    assert watermarks(gw.addr, mirrored, 0)[0] == 120 and log_end(gw.addr, mirrored, 0) == 180
    # A consumer asking for an offset before the mirror began is told it is out of
    # range and starts over at the earliest the mirror has.
    assert [o for o, *_ in consume_kafka_python(gw.addr, mirrored, 0, 60)] == list(range(120, 180))


def test_mirror_is_read_only_until_promoted_then_continues_the_source_numbering(linked):
    east, west, gw = linked
    topic = name("accounts")
    east.create_topic(topic, 1)
    transactions(gw.addr, topic, 0, [("a", 30, True), ("b", 4, False)])
    produce_confluent(gw.addr, topic, records(20, "plain"), partition=0)
    mirrored = mirror(gw, topic)
    caught_up(gw, mirrored, ends_of(gw.addr, topic, [0]))
    # kafkajs (no zstd or lz4, hence this plain topic) skips the filler too.
    want = [(o, k, v) for o, k, v, _ in read_partition(gw.addr, topic, 0, isolation="read_committed")]
    assert len(want) == 50
    assert [(o, k, v) for o, k, v, _ in consume_kafkajs(gw.addr, mirrored, 0, 50)] == want

    err, _ = produce_expecting_failure(gw.addr, mirrored)
    assert err is not None and err.name() == "POLICY_VIOLATION", err

    # Promote needs zero lag: paused, with new source records, it is refused.
    status, body, _ = admin_call(gw, "POST", f"/mirrors/{mirrored}/pause")
    assert status == 200 and body["state"] == "PAUSED"
    produce_confluent(gw.addr, topic, records(10, "more"), partition=0)
    status, body, _ = admin_call(gw, "POST", f"/mirrors/{mirrored}/promote")
    assert status == 409 and "lags" in body["error"], body
    status, body, _ = admin_call(gw, "POST", f"/mirrors/{mirrored}/resume")
    assert status == 200, body
    end = ends_of(gw.addr, topic, [0])
    caught_up(gw, mirrored, end)
    status, body, text = admin_call(gw, "POST", f"/mirrors/{mirrored}/promote")
    assert status == 200, text
    assert body["state"] == "STOPPED" and body["reason"] == "promoted"

    # Writable now, and its next offset is the source's next.
    produce_confluent(gw.addr, mirrored, records(5, "after"), partition=0)
    got = read_partition(gw.addr, mirrored, 0, isolation="read_committed")
    assert [o for o, *_ in got[-5:]] == list(range(end[0], end[0] + 5))
    assert [k for _, k, _, _ in got[-5:]] == [k for k, _, _ in records(5, "after")]
    # A stopped mirror cannot be resumed.
    status, body, _ = admin_call(gw, "POST", f"/mirrors/{mirrored}/resume")
    assert status == 409


def test_a_write_behind_the_links_back_fails_the_mirror_and_failover_still_works(linked):
    east, west, gw = linked
    topic = name("ledger")
    east.create_topic(topic, 1)
    produce_confluent(gw.addr, topic, records(10, "a"), partition=0)
    mirrored = mirror(gw, topic)
    caught_up(gw, mirrored, {0: 10})
    # Someone writes to the destination directly, not through Causeway.
    produce_confluent(west.addr, mirrored, records(3, "rogue"), partition=0)
    produce_confluent(gw.addr, topic, records(5, "b"), partition=0)

    def failed():
        return describe(gw, mirrored)["state"] == "FAILED"

    wait_for(failed, 30, f"{mirrored} FAILED")
    d = describe(gw, mirrored)
    assert "written outside the link" in d["last_error"], d
    status, _, body = admin_call(gw, "GET", "/metrics")
    assert f'causeway_mirror_state{{mirror="{mirrored}",state="FAILED"}} 1' in body
    status, body, _ = admin_call(gw, "POST", f"/mirrors/{mirrored}/promote")
    assert status == 409
    status, body, text = admin_call(gw, "POST", f"/mirrors/{mirrored}/failover")
    assert status == 200 and body["state"] == "STOPPED" and body["reason"] == "failed over", text


def commit(addr, group, offsets):
    """Commits {(topic, partition): offset} for `group` without joining it."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": addr, "group.id": group, "enable.auto.commit": False})
    try:
        c.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
    finally:
        c.close()


def consume_as_group(addr, group, topic, partitions, count, timeout=30.0):
    """Reads `count` records per partition from the group's committed offsets."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": addr, "group.id": group, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, p) for p in partitions])
    out = {p: [] for p in partitions}
    deadline = time.monotonic() + timeout
    try:
        while any(len(v) < count[p] for p, v in out.items()):
            assert time.monotonic() < deadline, f"only {[(p, len(v)) for p, v in out.items()]} of {count}"
            m = c.poll(0.2)
            if m is None:
                continue
            assert m.error() is None, m.error()
            out[m.partition()].append((m.offset(), m.key(), m.value(), [(k, v) for k, v in (m.headers() or [])]))
    finally:
        c.close()
    return out


def test_consumer_offsets_follow_and_a_failover_moves_clients_to_the_mirror(linked):
    from clients import committed

    east, west, gw = linked
    status, body, text = admin_call(gw, "POST", "/links", {
        "name": "sync", "source": "east", "destination": "west",
        "config": {"cluster.link.prefix": "s.", "consumer.offset.sync.enable": "true",
                   "consumer.offset.sync.ms": "1000", "consumer.offset.group.filters": "*,!skip-*"},
    })
    assert status == 201, text
    topic = name("billing")
    east.create_topic(topic, 2)
    for p in range(2):
        produce_confluent(gw.addr, topic, records(100, f"b{p}"), codec="snappy", partition=p)
    transactions(gw.addr, topic, 1, [("t", 5, True), ("x", 5, False)])
    mirrored = mirror(gw, topic, link="sync")
    caught_up(gw, mirrored, ends_of(gw.addr, topic, [0, 1]))
    commit(gw.addr, "billing-app", {(topic, 0): 60, (topic, 1): 40})
    commit(gw.addr, "skip-me", {(topic, 0): 10})

    want = {(mirrored, 0): 60, (mirrored, 1): 40}
    wait_for(lambda: committed(gw.addr, "billing-app", list(want)) == want, 20, "offsets synced")
    assert committed(gw.addr, "skip-me", [(mirrored, 0)]) == {(mirrored, 0): None}, "filtered out"
    status, body, _ = admin_call(gw, "GET", "/links/sync")
    assert body["offset_sync"]["last_error"] is None and body["offset_sync"]["rounds"] >= 1, body

    # Fail over and switch the route: clients keep using the source topic's name.
    before = read_partitions(gw.addr, topic, [0, 1], isolation="read_committed")
    status, body, text = admin_call(gw, "POST", f"/mirrors/{mirrored}/failover", {"switch_route": True})
    assert status == 200 and body["route"] == topic, text
    status, routes, _ = admin_call(gw, "GET", "/routes")
    assert routes["routes"][0] == {"topics": topic, "cluster": "west", "rename": {"from": topic, "to": mirrored}}
    # The group goes on where it left off, at the same offsets, on the mirror.
    got = consume_as_group(gw.addr, "billing-app", topic, [0, 1], {0: 40, 1: len(before[1]) - 40})
    assert got[0] == before[0][60:]
    assert got[1] == before[1][40:]
    # Producers write to the mirror now, and offsets carry on from the source's.
    end = ends_of(gw.addr, topic, [0])[0]
    produce_confluent(gw.addr, topic, records(3, "after"), partition=0)
    assert [o for o, *_ in read_partition(gw.addr, topic, 0)[-3:]] == [end, end + 1, end + 2]
    assert log_end(west.addr, mirrored, 0) == 103, "the writes landed on the mirror"
    # Offsets committed on the source now no longer overwrite the mirror's.
    commit(east.addr, "billing-app", {(topic, 0): 5})
    time.sleep(2.5)
    assert committed(gw.addr, "billing-app", [(topic, 0)]) == {(topic, 0): 60}


def topic_configs(addr, topic):
    from confluent_kafka.admin import AdminClient, ConfigResource

    r = ConfigResource(ConfigResource.Type.TOPIC, topic)
    admin = AdminClient({"bootstrap.servers": addr})
    got = admin.describe_configs([r])[r].result(15)
    return {k: v.value for k, v in got.items() if v.value is not None}


def test_mirror_topic_configs_follow_the_source(linked):
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

    east, west, gw = linked
    status, _, text = admin_call(gw, "POST", "/links", {
        "name": "cfg", "source": "east", "destination": "west",
        "config": {"cluster.link.prefix": "c.", "topic.config.sync.ms": "1000"},
    })
    assert status == 201, text
    topic = name("settings")
    admin = AdminClient({"bootstrap.servers": east.addr})
    admin.create_topics([NewTopic(topic, 1, 1, config={
        "retention.ms": "3600000", "max.message.bytes": "2000000", "segment.bytes": "1048576"})])[topic].result(15)
    mirrored = mirror(gw, topic, link="cfg")
    # Created with the source's synced configs; segment.bytes is not one of them.
    have = topic_configs(west.addr, mirrored)
    assert have.get("retention.ms") == "3600000" and have.get("max.message.bytes") == "2000000", have
    assert have.get("segment.bytes") != "1048576", have
    # A change on the source follows.
    r = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([r])[r].result(15)
    wait_for(lambda: topic_configs(west.addr, mirrored).get("retention.ms") == "7200000", 15, "retention.ms synced")
    status, body, _ = admin_call(gw, "GET", "/links/cfg")
    assert body["config_sync"]["configs_set"] >= 1 and body["config_sync"]["last_error"] is None, body
    got, answer, _ = admin_call(gw, "POST", "/links", {"name": "x", "source": "east", "destination": "west",
                                                      "config": {"topic.config.sync.include": "min.insync.replicas"}})
    assert got == 400 and "never synced" in answer["error"]


def test_new_source_topics_matching_the_filters_are_mirrored(linked):
    east, west, gw = linked
    status, _, text = admin_call(gw, "POST", "/links", {
        "name": "auto", "source": "east", "destination": "west",
        "config": {"cluster.link.prefix": "a.", "topic.config.sync.ms": "1000",
                   "auto.create.mirror.topics.enable": "true",
                   "auto.create.mirror.topics.filters": "auto-*,!auto-skip-*"},
    })
    assert status == 201, text
    wanted, skipped = name("auto-orders"), name("auto-skip-orders")
    for t in (wanted, skipped):
        east.create_topic(t, 2)
        produce_confluent(gw.addr, t, records(10, t), partition=1)
    wait_for(lambda: admin_call(gw, "GET", f"/mirrors/a.{wanted}")[0] == 200, 20, "mirror auto-created")
    caught_up(gw, f"a.{wanted}", {0: 0, 1: 10})
    assert read_partition(gw.addr, f"a.{wanted}", 1) == read_partition(gw.addr, wanted, 1)
    _, listed, _ = admin_call(gw, "GET", "/mirrors?link=auto")
    assert [m["source_topic"] for m in listed["mirrors"]] == [wanted], "only what the filters match"


def test_bad_requests_get_clear_answers(linked):
    east, west, gw = linked
    busy = name("busy")
    east.create_topic(busy, 1)
    mirror(gw, busy)  # so that link dr has a mirror copying
    cases = [
        ("POST", "/links", {"name": "x", "source": "east", "destination": "nowhere"}, 400, "no cluster named 'nowhere'"),
        ("POST", "/links", {"name": "x", "source": "east", "destination": "east"}, 400, "different clusters"),
        ("POST", "/links", {"name": "bad name", "source": "east", "destination": "west"}, 400, "link name"),
        ("POST", "/links", {"name": "x", "source": "east", "destination": "west", "config": {"colour": "red"}}, 400, "unknown link option 'colour'"),
        ("POST", "/links", {"name": "dr", "source": "east", "destination": "west"}, 409, "exists"),
        ("POST", "/mirrors", {"topic": "no-such-topic", "link": "dr"}, 404, "has no topic 'no-such-topic'"),
        ("POST", "/mirrors", {"topic": "x", "link": "nope"}, 404, "no link named 'nope'"),
        ("POST", "/mirrors/nope/promote", None, 404, "no mirror named 'nope'"),
        ("DELETE", "/links/dr", None, 409, "still mirrors"),
    ]
    for method, path, body, status, message in cases:
        got, answer, text = admin_call(gw, method, path, body)
        assert got == status and message in answer["error"], (method, path, text)
    got, _, text = admin_call(gw, "POST", "/links", raw=b"{not json")
    assert got == 400 and "not a JSON object" in text

    # A destination topic that already holds records is not taken over.
    topic = name("taken")
    east.create_topic(topic, 1)
    west.create_topic(f"dr.{topic}", 1)
    produce_confluent(west.addr, f"dr.{topic}", records(2, "theirs"), partition=0)
    got, answer, text = admin_call(gw, "POST", "/mirrors", {"topic": topic, "link": "dr"})
    assert got == 409 and "holding records" in answer["error"], text


def test_link_and_mirror_commands(linked):
    east, west, gw = linked
    topic = name("cli")
    east.create_topic(topic, 2)
    produce_confluent(gw.addr, topic, records(25, "cli"), partition=1)

    def run(*args):
        return subprocess.run([str(causeway_bin()), *args, "--admin", gw.admin], capture_output=True, text=True, timeout=60)

    r = run("link", "create", "backup", "--source", "east", "--destination", "west",
            "--config", "cluster.link.prefix=bk.", "--config", "mirror.start.offset.spec=earliest")
    assert r.returncode == 0, r.stderr
    assert "link backup: east -> west" in r.stdout and "cluster.link.prefix = bk." in r.stdout
    r = run("link", "list")
    assert r.returncode == 0 and any(line.split()[:3] == ["backup", "east", "west"] for line in r.stdout.splitlines()), r.stdout
    r = run("mirror", "create", topic, "--link", "backup")
    assert r.returncode == 0, r.stderr
    caught_up(gw, f"bk.{topic}", {0: 0, 1: 25})
    r = run("mirror", "describe", f"bk.{topic}")
    assert r.returncode == 0, r.stderr
    assert f"mirror bk.{topic} of {topic} over link backup: ACTIVE" in r.stdout
    rows = [line.split() for line in r.stdout.splitlines() if line.split()[:1] == ["1"]]
    assert rows and rows[0][1:5] == ["mirroring", "25", "25", "0"], r.stdout
    r = run("mirror", "list", "--link", "backup", "--json")
    assert r.returncode == 0 and f'"name":"bk.{topic}"' in r.stdout
    r = run("link", "delete", "backup")
    assert r.returncode == 1 and "still mirrors" in r.stderr
    r = run("mirror", "failover", f"bk.{topic}")
    assert r.returncode == 0 and "STOPPED (failed over)" in r.stdout, r.stdout + r.stderr
    r = run("link", "delete", "backup")
    assert r.returncode == 0 and "deleted link backup" in r.stdout
    r = run("link", "create", "x", "--source", "east", "--destination", "mars")
    assert r.returncode == 1 and "no cluster named 'mars'" in r.stderr


@pytest.mark.slow
def test_a_restarted_gateway_resumes_with_nothing_lost_or_repeated():
    """100k records over three partitions and codecs, and transactions with aborts,
    written to the source while the mirror runs; the gateway is killed mid-mirror
    and a new one goes on from what the destination holds."""
    import threading

    east, west = Tansu("east"), Tansu("west")
    config = clusters_config({"east": east.addr, "west": west.addr}, ROUTES)
    gw = Gateway(config=config)
    try:
        gw.wait_ready()
        topic = "payments"
        east.create_topic(topic, 3)
        assert admin_call(gw, "POST", "/links", {"name": "dr", "source": "east", "destination": "west",
                                                 "config": {"cluster.link.prefix": "dr."}})[0] == 201
        mirror(gw, topic)

        def write():
            # Straight to the source cluster, so the writes go on while the gateway is down.
            for round in range(4):
                for p, codec in enumerate(["zstd", "lz4", "gzip"]):
                    small = [(f"k{p}-{round}-{i}".encode(), f"v{p}-{i}-".encode() + b"x" * (i % 200), [("i", str(i).encode())])
                             for i in range(8_500)]
                    produce_confluent(east.addr, topic, small, codec=codec, partition=p,
                                      extra={"linger.ms": 20, "batch.num.messages": 500})
                transactions(east.addr, topic, 1, [(f"t{round}", 40, True), (f"a{round}", 30, False)])

        writer = threading.Thread(target=write)
        writer.start()
        wait_for(lambda: describe(gw, "dr.payments")["records"] > 2000, 60, "mirroring under way")
        gw.process.proc.kill()
        gw.process.proc.wait()
        killed_while_writing = writer.is_alive()
        writer.join(120)
        assert killed_while_writing, "the source was still being written when the gateway died"

        # A new gateway reads the link and mirror back from the destination and
        # goes on from where the destination ends.
        gw = Gateway(config=config)
        gw.wait_ready()
        wait_for(lambda: admin_call(gw, "GET", "/mirrors/dr.payments")[0] == 200, 20, "mirror loaded")
        ends = ends_of(gw.addr, topic, range(3))
        caught_up(gw, "dr.payments", ends, timeout=120)
        source = read_partitions(gw.addr, topic, [0, 1, 2], isolation="read_committed", timeout=90)
        copy = read_partitions(gw.addr, "dr.payments", [0, 1, 2], isolation="read_committed", timeout=90)
        assert sum(len(v) for v in source.values()) == 3 * 4 * 8_500 + 4 * 40
        for p in range(3):
            assert copy[p] == source[p], f"partition {p} differs"
    finally:
        gw.process.close()
        east.close()
        west.close()


def test_a_switched_topic_keeps_its_deny_rules_under_the_mirrors_own_name():
    """After a failover that switches `secret` to its mirror, the mirror's own
    name reaches the same records: a rule denying `secret` must hold there too."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    east, west = Tansu("east"), Tansu("west")
    acls = (
        "\n[authorization]\nallow_if_no_acls = true\n\n"
        "[[acls]]\nprincipal = \"User:*\"\nresource = \"topic\"\noperations = [\"all\"]\n\n"
        "[[acls]]\nprincipal = \"User:*\"\nresource = \"topic\"\nname = \"secret\"\n"
        "operations = [\"read\"]\npermission = \"deny\"\n"
    )
    gw = Gateway(config=clusters_config({"east": east.addr, "west": west.addr}, ROUTES) + acls.replace("{", "{{").replace("}", "}}"))
    try:
        gw.wait_ready()
        east.create_topic("secret", 1)
        produce_confluent(gw.addr, "secret", records(5, "s"), partition=0)
        assert admin_call(gw, "POST", "/links", {"name": "dr", "source": "east", "destination": "west",
                                                 "config": {"cluster.link.prefix": "dr."}})[0] == 201
        mirrored = mirror(gw, "secret")
        caught_up(gw, mirrored, {0: 5})
        status, body, text = admin_call(gw, "POST", f"/mirrors/{mirrored}/failover", {"switch_route": True})
        assert status == 200, text

        def read_error(topic):
            c = Consumer({"bootstrap.servers": gw.addr, "group.id": f"g-{topic}", "enable.auto.commit": False})
            c.assign([TopicPartition(topic, 0, 0)])
            try:
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    m = c.poll(0.5)
                    if m is None:
                        continue
                    return m.error().code() if m.error() else "read a record"
                return "nothing"
            finally:
                c.close()

        assert read_error("secret") == KafkaError.TOPIC_AUTHORIZATION_FAILED
        assert read_error(mirrored) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    finally:
        gw.process.close()
        east.close()
        west.close()
