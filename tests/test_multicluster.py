"""Several backend clusters behind one Causeway bootstrap: topic routes (one of them
renaming), consumer groups and transactions that span clusters, and one cluster going
down. Every check also reads straight from the backends, so a record that went to the
wrong cluster, or to two, cannot hide behind the gateway's answers."""

import fnmatch
import itertools
import json
import subprocess
import time

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from clients import (
    committed,
    consume_kafkajs,
    group_offsets,
    list_topics,
    produce_aiokafka,
    produce_confluent,
    produce_confluent_many,
    produce_expecting_failure,
    produce_kafka_python_many,
    produce_kafkajs,
    produce_kcat,
    consume_kcat,
    read_partition,
    read_topic,
    records,
    watermarks,
)
from rig import Gateway, Tansu, clusters_config, kcat, wait_for

CLUSTERS = ["archive", "cloud", "onprem"]

# No catch-all topic route, so some names are unrouted; groups and transactional ids
# no route matches therefore live on the first route's cluster, onprem. The renamed
# route has its cluster to itself: every archive topic is visible as legacy.NAME.
ROUTES = [
    {"topics": "orders.*", "cluster": "onprem"},
    {"topics": "audit-??-*", "cluster": "onprem"},
    {"topics": "events.*", "cluster": "cloud"},
    {"topics": "legacy.*", "cluster": "archive", "rename": {"from": "legacy.", "to": ""}},
    {"groups": "cloudgrp-*", "cluster": "cloud"},
    {"transactional_ids": "etl-*", "cluster": "onprem"},
    {"transactional_ids": "cloudtx-*", "cluster": "cloud"},
]

_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


# --- what the routes say, worked out here independently of the gateway ---------------------


def placement(client_name):
    """(cluster, backend name) the first matching topic route gives, or None."""
    for r in ROUTES:
        if "topics" in r and fnmatch.fnmatchcase(client_name, r["topics"]):
            rename = r.get("rename")
            backend = client_name
            if rename:
                backend = rename["to"] + client_name[len(rename["from"]):]
            return r["cluster"], backend
    return None


def visible(listings):
    """{client name: partitions} clients should see, given each backend's topics."""
    out = {}
    for cluster, topics in listings.items():
        for backend, partitions in topics.items():
            for r in ROUTES:
                if r.get("cluster") != cluster or "topics" not in r:
                    continue
                rename = r.get("rename", {"from": "", "to": ""})
                if not backend.startswith(rename["to"]):
                    continue
                client = rename["from"] + backend[len(rename["to"]):]
                if placement(client) == (cluster, backend):
                    out[client] = partitions
    return out


# --- the processes ----------------------------------------------------------------------------


class MultiCluster:
    def __init__(self, brokers: dict, gw: Gateway):
        self.brokers = brokers
        self.gw = gw

    def addr(self, cluster: str) -> str:
        return self.brokers[cluster].addr

    def create(self, cluster: str, name: str, partitions: int = 1) -> None:
        self.brokers[cluster].create_topic(name, partitions)

    def wait_visible(self, names, timeout: float = 15.0) -> None:
        wait_for(lambda: set(names) <= set(list_topics(self.gw.addr)), timeout,
                 f"{sorted(names)} to be visible through the gateway")


@pytest.fixture(scope="module")
def mc():
    started = []
    try:
        brokers = {}
        for name in CLUSTERS:
            brokers[name] = Tansu(name)
            started.append(brokers[name])
        gw = Gateway(config=clusters_config({n: b.addr for n, b in brokers.items()}, ROUTES))
        started.append(gw)
        gw.wait_ready()
        yield MultiCluster(brokers, gw)
    finally:
        for p in reversed(started):
            p.close()


def group_consumer(addr, group, **extra):
    conf = {
        "bootstrap.servers": addr,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        # tansu completes a join after about half the session timeout; 6 s is the
        # usual broker minimum.
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "partition.assignment.strategy": "range",
    }
    conf.update(extra)
    return Consumer(conf)


def drain(consumers: dict, want: int, timeout: float = 45.0, settle: float = 1.0):
    """Polls every consumer until `want` records arrived, then `settle` seconds more so
    a duplicate or stray record would show. Returns [(member, topic, partition, offset,
    value)]."""
    got, errors = [], []
    deadline = time.monotonic() + timeout
    settle_until = None
    while time.monotonic() < deadline:
        if settle_until is None and len(got) >= want:
            settle_until = time.monotonic() + settle
        if settle_until is not None and time.monotonic() >= settle_until:
            break
        for name, c in consumers.items():
            m = c.poll(0.1)
            if m is None:
                continue
            if m.error():
                # Transient client-side events (a reconnect, say) are not records;
                # the checks on what arrived decide whether anything went wrong.
                errors.append((name, m.error()))
                continue
            got.append((name, m.topic(), m.partition(), m.offset(), m.value()))
    assert len(got) >= want, f"{len(got)} of {want} records after {timeout}s; errors: {errors}"
    return got


def assigned(c):
    return {(tp.topic, tp.partition) for tp in c.assignment()}


def values(rows):
    """The values of records read back: rows of (offset, key, value, headers)."""
    return [r[2] for r in rows]


def sent_values(recs):
    """The values of records to send: (key, value, headers)."""
    return [v for _, v, _ in recs]


ONE_RECORD_PER_BATCH = {"linger.ms": 0, "batch.num.messages": 1}
"""tansu reports a partition's high watermark as its last batch's base offset + 1, so
tests that compare committed offsets with end offsets write one record per batch."""


# --- 1. where records land ---------------------------------------------------------------------


def test_records_land_on_the_routed_cluster_and_nowhere_else(mc):
    orders, events, ledger = unique("orders.land-"), unique("events.land-"), unique("ledger-land-")
    legacy = "legacy." + ledger
    homes = {orders: ("onprem", orders), events: ("cloud", events), legacy: ("archive", ledger)}
    for client, (cluster, backend) in homes.items():
        assert placement(client) == (cluster, backend)
        mc.create(cluster, backend, partitions=2)
    # The same names on clusters no route sends them to: they must stay empty.
    decoys = {("cloud", orders), ("onprem", events), ("onprem", ledger), ("cloud", legacy)}
    for cluster, name in decoys:
        mc.create(cluster, name, partitions=2)
    mc.wait_visible(homes)

    # One bootstrap, one producer per library, writing to all three clusters at once;
    # the acks name the client's topics. kafka-python 3 is idempotent by default (as
    # the Java client is), so the producer id it gets must be good on every cluster.
    sent = {client: {0: records(4, f"confluent-{client}"), 1: records(3, f"kafka-python-{client}")} for client in homes}
    acks = produce_confluent_many(mc.gw.addr, [(t, 0, sent[t][0]) for t in homes])
    assert acks == [[(t, 0, i) for i in range(4)] for t in homes]
    acks = produce_kafka_python_many(mc.gw.addr, [(t, 1, sent[t][1]) for t in homes])
    assert acks == [[(t, 1, i) for i in range(3)] for t in homes]

    for client, (cluster, backend) in homes.items():
        want = {p: [(i, k, v, h) for i, (k, v, h) in enumerate(recs)] for p, recs in sent[client].items()}
        assert read_topic(mc.addr(cluster), backend) == want, f"{client} on {cluster} as {backend}"
    for cluster, name in decoys:
        assert read_topic(mc.addr(cluster), name) == {0: [], 1: []}, f"stray records in {name} on {cluster}"

    # Nothing was created on the way: each name exists only where this test made it.
    made = set(homes.values()) | decoys
    names = set(homes) | {n for _, n in made}
    for cluster in CLUSTERS:
        assert set(list_topics(mc.addr(cluster))) & names == {n for c, n in made if c == cluster}, cluster


# --- 2. metadata -------------------------------------------------------------------------------


def test_metadata_lists_exactly_the_routed_topics(mc):
    from kafka.admin import KafkaAdminClient

    orders, audit, events, ledger = unique("orders.meta-"), unique("audit-eu-meta-"), unique("events.meta-"), unique("ledger-meta-")
    mc.create("onprem", orders, 3)
    mc.create("onprem", audit, 1)  # routed by the glob audit-??-*
    mc.create("cloud", events, 2)
    mc.create("archive", ledger, 2)  # visible as legacy.<ledger>
    hidden, near, elsewhere = unique("hidden-meta-"), unique("audit-eur-meta-"), unique("events.meta-")
    mc.create("onprem", hidden)  # no route at all
    mc.create("cloud", hidden)
    mc.create("onprem", near)  # one letter too many for audit-??-*
    mc.create("onprem", elsewhere)  # its route says cloud, which does not have it
    wanted = {orders: 3, audit: 1, events: 2, "legacy." + ledger: 2}
    assert all(placement(n) is not None for n in wanted)
    assert placement(hidden) is None and placement(near) is None

    def expected():
        return visible({c: list_topics(mc.addr(c)) for c in CLUSTERS})

    # Topics made on the backends just now may take a metadata refresh to show.
    wait_for(lambda: list_topics(mc.gw.addr) == expected(), 15, "the gateway to list the routed topics")
    through = list_topics(mc.gw.addr)
    assert through == expected()
    for name, partitions in wanted.items():
        assert through[name] == partitions, name
    for name in (ledger, hidden, near, elsewhere):
        assert name not in through, f"{name} is visible but no route maps it"

    meta = AdminClient({"bootstrap.servers": mc.gw.addr}).list_topics(timeout=10)
    assert {b.id: (b.host, b.port) for b in meta.brokers.values()} == {0: ("127.0.0.1", mc.gw.port)}
    for name in wanted:
        assert all(p.leader == 0 and p.replicas == [0] for p in meta.topics[name].partitions.values())

    # A second client library sees the same topic list.
    admin = KafkaAdminClient(bootstrap_servers=mc.gw.addr)
    try:
        assert set(admin.list_topics()) == set(through)
    finally:
        admin.close()

    # Asking for an unrouted name by name: unknown, and nothing gets auto-created.
    nowhere = unique("nowhere-meta-")
    one = AdminClient({"bootstrap.servers": mc.gw.addr}).list_topics(topic=nowhere, timeout=10)
    assert one.topics[nowhere].error is not None
    assert one.topics[nowhere].error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    for cluster in CLUSTERS:
        assert nowhere not in list_topics(mc.addr(cluster)), f"{nowhere} was created on {cluster}"


# --- 3. one group, topics on three clusters ------------------------------------------------------


@pytest.mark.slow
def test_group_spans_clusters_and_resumes_from_committed_offsets(mc):
    from kafka.admin import KafkaAdminClient

    group = unique("mc-group-")  # no groups route matches: its home is onprem
    orders, events, ledger = unique("orders.grp-"), unique("events.grp-"), unique("ledger-grp-")
    legacy = "legacy." + ledger
    mc.create("onprem", orders, 2)
    mc.create("cloud", events, 1)
    mc.create("archive", ledger, 1)
    mc.wait_visible([orders, events, legacy])
    parts = [(orders, 0), (orders, 1), (events, 0), (legacy, 0)]

    first = {tp: records(3, f"first-{tp[0]}-{tp[1]}") for tp in parts}
    for (topic, p), recs in first.items():
        produce_confluent(mc.gw.addr, topic, recs, partition=p, extra=ONE_RECORD_PER_BATCH)

    c = group_consumer(mc.gw.addr, group)
    try:
        c.subscribe([orders, events, legacy])
        got = drain({"c": c}, 12)
        assert sorted(g[1:] for g in got) == sorted(
            (t, p, i, v) for (t, p), recs in first.items() for i, (_, v, _) in enumerate(recs)
        )
        c.commit(asynchronous=False)
    finally:
        c.close()

    # Each topic's offsets are in its own cluster, under the backend name, and only there.
    assert group_offsets(mc.addr("onprem"), group) == {(orders, 0): 3, (orders, 1): 3}
    assert group_offsets(mc.addr("cloud"), group) == {(events, 0): 3}
    assert group_offsets(mc.addr("archive"), group) == {(ledger, 0): 3}
    # The same through a consumer that only asks (OffsetFetch), never joins.
    assert committed(mc.addr("archive"), group, [(ledger, 0)]) == {(ledger, 0): 3}

    second = {tp: records(2, f"second-{tp[0]}-{tp[1]}") for tp in parts}
    for (topic, p), recs in second.items():
        produce_confluent(mc.gw.addr, topic, recs, partition=p, extra=ONE_RECORD_PER_BATCH)

    c2 = group_consumer(mc.gw.addr, group)
    try:
        c2.subscribe([orders, events, legacy])
        got = drain({"c2": c2}, 8, settle=1.5)
        # Exactly the new records, on every cluster: it resumed where the group left off.
        assert sorted(g[1:] for g in got) == sorted(
            (t, p, 3 + i, v) for (t, p), recs in second.items() for i, (_, v, _) in enumerate(recs)
        )

        kadmin = KafkaAdminClient(bootstrap_servers=mc.gw.addr)
        admin = AdminClient({"bootstrap.servers": mc.gw.addr})
        try:
            listed = [g["group_id"] for g in kadmin.list_groups()]
            assert listed.count(group) == 1, "listed once, though three clusters know it"
            described = admin.describe_consumer_groups([group])[group].result(timeout=15)
            assert described.group_id == group
            assert len(described.members) == 1
            assert (described.coordinator.host, described.coordinator.port) == ("127.0.0.1", mc.gw.port)

            c2.commit(asynchronous=False)
            # Lag as a tool computes it through the gateway: every committed offset
            # (OffsetFetch for all topics, under the client names) against the end
            # offsets, with librdkafka's admin client.
            offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(timeout=15)
            through = {(tp.topic, tp.partition): tp.offset for tp in offsets.topic_partitions}
            assert through == {tp: 5 for tp in parts}
            ends = {tp: watermarks(mc.gw.addr, *tp)[1] for tp in parts}
            assert ends == {tp: 5 for tp in parts}
            assert {tp: ends[tp] - through[tp] for tp in parts} == {tp: 0 for tp in parts}
        finally:
            kadmin.close()
    finally:
        c2.close()
    assert group_offsets(mc.addr("onprem"), group) == {(orders, 0): 5, (orders, 1): 5}
    assert group_offsets(mc.addr("cloud"), group) == {(events, 0): 5}
    assert group_offsets(mc.addr("archive"), group) == {(ledger, 0): 5}
    # kafka-python 3 sees the same offsets through the gateway (batched FindCoordinator,
    # then OffsetFetch v8+ for all topics).
    assert group_offsets(mc.gw.addr, group) == through


# --- 4. two members, partitions on two clusters -------------------------------------------------


@pytest.mark.slow
def test_two_members_split_partitions_across_clusters(mc):
    group = unique("cloudgrp-split-")  # the groups route puts its membership on cloud
    orders, events = unique("orders.split-"), unique("events.split-")
    mc.create("onprem", orders, 2)
    mc.create("cloud", events, 2)
    mc.wait_visible([orders, events])
    everything = {(orders, 0), (orders, 1), (events, 0), (events, 1)}

    a, b = group_consumer(mc.gw.addr, group), group_consumer(mc.gw.addr, group)
    try:
        a.subscribe([orders, events])
        b.subscribe([orders, events])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for c in (a, b):
                m = c.poll(0.1)
                assert m is None or m.error(), "no records yet, so nothing to consume"
            if assigned(a) and assigned(b) and assigned(a) | assigned(b) == everything:
                break
        assert assigned(a) | assigned(b) == everything, (assigned(a), assigned(b))
        assert not assigned(a) & assigned(b), "no partition has two owners"
        # range assigns per topic: each member holds a partition on each cluster.
        assert {t for t, _ in assigned(a)} == {orders, events}
        assert {t for t, _ in assigned(b)} == {orders, events}

        sent = {tp: records(4, f"{tp[0]}-{tp[1]}") for tp in sorted(everything)}
        for (topic, p), recs in sent.items():
            produce_confluent(mc.gw.addr, topic, recs, partition=p)
        got = drain({"a": a, "b": b}, 16, settle=1.5)

        seen = [(t, p, o) for _, t, p, o, _ in got]
        assert len(seen) == len(set(seen)) == 16, "each record consumed exactly once"
        assert sorted((t, p, o, v) for _, t, p, o, v in got) == sorted(
            (t, p, i, v) for (t, p), recs in sent.items() for i, (_, v, _) in enumerate(recs)
        )
        owners = {"a": assigned(a), "b": assigned(b)}
        assert all((t, p) in owners[name] for name, t, p, _, _ in got), "only owners consume"
        a.commit(asynchronous=False)
        b.commit(asynchronous=False)
    finally:
        a.close()
        b.close()
    assert committed(mc.addr("onprem"), group, [(orders, 0), (orders, 1)]) == {(orders, 0): 4, (orders, 1): 4}
    assert committed(mc.addr("cloud"), group, [(events, 0), (events, 1)]) == {(events, 0): 4, (events, 1): 4}


# --- 5. a renamed topic --------------------------------------------------------------------------


def test_renamed_topic_is_the_client_name_at_the_gateway_and_the_backend_name_on_the_cluster(mc):
    ledger = unique("ledger-ren-")
    legacy = "legacy." + ledger
    admin = AdminClient({"bootstrap.servers": mc.gw.addr})
    admin.create_topics([NewTopic(legacy, num_partitions=3, replication_factor=1)])[legacy].result(timeout=15)

    assert list_topics(mc.addr("archive")).get(ledger) == 3, "created on archive under the backend name"
    for cluster in CLUSTERS:
        assert legacy not in list_topics(mc.addr(cluster)), f"the client name reached {cluster}"
    assert ledger not in list_topics(mc.addr("onprem")) and ledger not in list_topics(mc.addr("cloud"))
    mc.wait_visible([legacy])
    through = list_topics(mc.gw.addr)
    assert through[legacy] == 3
    assert ledger not in through

    # Produced under the client name (aiokafka), read back under it (librdkafka).
    sent = records(5, "renamed")
    produce_aiokafka(mc.gw.addr, legacy, sent, partition=2)
    c = Consumer({"bootstrap.servers": mc.gw.addr, "group.id": unique("ren-reader-"),
                  "enable.auto.commit": False})
    c.assign([TopicPartition(legacy, 2, 0)])
    got = []
    deadline = time.monotonic() + 20
    try:
        while len(got) < 5 and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            assert m.error() is None, m.error()
            got.append((m.topic(), m.offset(), m.key(), m.value(), m.headers() or []))
    finally:
        c.close()
    assert got == [(legacy, i, k, v, h) for i, (k, v, h) in enumerate(sent)]
    # On the backend it is the backend name, same offsets and bytes.
    assert read_partition(mc.addr("archive"), ledger, 2) == [(i, k, v, h) for i, (k, v, h) in enumerate(sent)]
    assert watermarks(mc.gw.addr, legacy, 2) == watermarks(mc.addr("archive"), ledger, 2)

    # And the other way: written on the backend, read through the gateway.
    direct = records(2, "backend-side")
    produce_confluent(mc.addr("archive"), ledger, direct, partition=0)
    assert [r[:3] for r in read_partition(mc.gw.addr, legacy, 0)] == [(i, k, v) for i, (k, v, _) in enumerate(direct)]
    assert read_partition(mc.gw.addr, legacy, 1) == []


# --- 6. a name no route matches ------------------------------------------------------------------


def test_unrouted_topic_is_refused(mc):
    nowhere, near, hidden = unique("nowhere-"), unique("audit-eur-"), unique("hidden-")
    mc.create("onprem", hidden)  # exists on a backend, but no route leads to it
    for name in (nowhere, near, hidden):
        assert placement(name) is None

    for name in (nowhere, near, hidden):
        err, elapsed = produce_expecting_failure(
            mc.gw.addr, name,
            extra={"message.timeout.ms": 10000, "topic.metadata.propagation.max.ms": 0},
        )
        assert err is not None and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, (name, err)
        assert elapsed < 8, f"{name}: {elapsed:.1f}s to fail"

    admin = AdminClient({"bootstrap.servers": mc.gw.addr})
    for name in (nowhere, near):
        future = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name]
        with pytest.raises(KafkaException) as refused:
            future.result(timeout=15)
        err = refused.value.args[0]
        assert err.code() == KafkaError.TOPIC_EXCEPTION == 17, err
        assert "no route" in err.str(), err.str()

    for cluster in CLUSTERS:
        on_backend = set(list_topics(mc.addr(cluster)))
        assert nowhere not in on_backend and near not in on_backend, f"created on {cluster}"
    assert hidden in list_topics(mc.addr("onprem")) and hidden not in list_topics(mc.gw.addr)

    # Control: a name the glob does route is created on its cluster.
    routed = unique("audit-eu-")
    admin.create_topics([NewTopic(routed, num_partitions=2, replication_factor=1)])[routed].result(timeout=15)
    assert list_topics(mc.addr("onprem")).get(routed) == 2
    assert routed not in list_topics(mc.addr("cloud")) and routed not in list_topics(mc.addr("archive"))


# --- 7. transactions ------------------------------------------------------------------------------


def txn_producer(addr, txn_id):
    p = Producer({"bootstrap.servers": addr, "transactional.id": txn_id, "linger.ms": 5})
    p.init_transactions(30)
    return p


def committed_txn(p, topic, recs):
    p.begin_transaction()
    for k, v, h in recs:
        p.produce(topic, key=k, value=v, headers=h, partition=0)
    p.commit_transaction(30)


@pytest.mark.slow
def test_transactions_are_pinned_to_one_cluster(mc):
    orders, events = unique("orders.tx-"), unique("events.tx-")
    mc.create("onprem", orders)
    mc.create("cloud", events)
    mc.wait_visible([orders, events])
    etl = unique("etl-")  # pinned to onprem

    one, two_here, two_there, three = records(3, "one"), records(2, "two-onprem"), records(2, "two-cloud"), records(2, "three")
    p = txn_producer(mc.gw.addr, etl)
    committed_txn(p, orders, one)
    assert values(read_partition(mc.gw.addr, orders, 0, isolation="read_committed")) == sent_values(one)

    # A transaction that reaches into the cloud cluster fails as a whole.
    p.begin_transaction()
    for k, v, h in two_here:
        p.produce(orders, key=k, value=v, headers=h, partition=0)
    p.flush(30)  # these reached onprem inside the open transaction
    for k, v, h in two_there:
        p.produce(events, key=k, value=v, headers=h, partition=0)
    with pytest.raises(KafkaException) as failed:
        p.commit_transaction(30)
    err = failed.value.args[0]
    # AddPartitionsToTxn was answered INVALID_TXN_STATE for the cloud partition.
    assert err.code() == KafkaError.INVALID_TXN_STATE == 48, err
    del p

    assert values(read_partition(mc.gw.addr, orders, 0, isolation="read_committed")) == sent_values(one)
    assert read_partition(mc.gw.addr, events, 0, isolation="read_committed") == []
    assert read_partition(mc.addr("cloud"), events, 0) == [], "nothing of it reached the cloud cluster"

    # The id keeps working: a new producer takes it over and commits, and the failed
    # transaction's records never become visible.
    p2 = txn_producer(mc.gw.addr, etl)
    committed_txn(p2, orders, three)
    assert values(read_partition(mc.gw.addr, orders, 0, isolation="read_committed")) == sent_values(one + three)
    on_onprem = values(read_partition(mc.addr("onprem"), orders, 0))
    assert on_onprem[:3] == sent_values(one) and on_onprem[-2:] == sent_values(three)
    del p2

    # An id pinned to cloud commits to the cloud topic.
    four = records(3, "four")
    p3 = txn_producer(mc.gw.addr, unique("cloudtx-"))
    committed_txn(p3, events, four)
    del p3
    assert values(read_partition(mc.gw.addr, events, 0, isolation="read_committed")) == sent_values(four)
    assert values(read_partition(mc.addr("cloud"), events, 0)) == sent_values(four)


# --- 8. one cluster down ----------------------------------------------------------------------------


def readyz(gw):
    status, body = gw.get("/readyz")
    return status, json.loads(body)


def crash(broker: Tansu) -> None:
    """Kills a broker outright, as a crash would (no graceful shutdown)."""
    broker.process.proc.kill()
    broker.process.proc.wait(timeout=10)
    broker.close()


def cluster_ready(gw):
    return {c["name"]: c["ready"] for c in readyz(gw)[1]["clusters"]}


def test_one_cluster_down_the_other_keeps_serving():
    procs = []
    try:
        east = Tansu("east")
        procs.append(east)
        west = Tansu("west")
        procs.append(west)
        routes = [{"topics": "east.*", "cluster": "east"}, {"topics": "west.*", "cluster": "west"}]
        gw = Gateway(config=clusters_config({"east": east.addr, "west": west.addr}, routes, health_interval_ms=300))
        procs.append(gw)
        gw.wait_ready()
        east.create_topic("east.live", 1)
        west.create_topic("west.doomed", 1)
        assert readyz(gw) == (200, {"ready": True, "degraded": False, "clusters": [
            {"name": "east", "ready": True}, {"name": "west", "ready": True}]})

        # One client connection serves both clusters' topics.
        p = Producer({"bootstrap.servers": gw.addr, "linger.ms": 0, "message.timeout.ms": 3000})
        acks = []
        p.produce("east.live", b"e0", partition=0, on_delivery=lambda e, m: acks.append(("east", e, m.offset())))
        p.produce("west.doomed", b"w0", partition=0, on_delivery=lambda e, m: acks.append(("west", e, m.offset())))
        assert p.flush(30) == 0
        assert sorted(acks) == [("east", None, 0), ("west", None, 0)]

        crash(west)
        wait_for(lambda: not cluster_ready(gw)["west"], 10, "/readyz to report west down")
        assert readyz(gw) == (200, {"ready": True, "degraded": True, "clusters": [
            {"name": "east", "ready": True}, {"name": "west", "ready": False}]})
        metrics = gw.metrics()
        assert metrics['causeway_backend_cluster_up{cluster="east"}'] == 1
        assert metrics['causeway_backend_cluster_up{cluster="west"}'] == 0

        # The same producer: east's record is delivered, west's fails within its own
        # timeout; nothing hangs. A new producer's record for west fails the same way.
        acks.clear()
        started = time.monotonic()
        fresh = Producer({"bootstrap.servers": gw.addr, "linger.ms": 0, "message.timeout.ms": 3000})
        fresh.produce("west.doomed", b"w2", partition=0, on_delivery=lambda e, m: acks.append(("fresh", e, None)))
        p.produce("east.live", b"e1", partition=0, on_delivery=lambda e, m: acks.append(("east", e, m.offset())))
        p.produce("west.doomed", b"w1", partition=0, on_delivery=lambda e, m: acks.append(("west", e, None)))
        assert p.flush(15) == 0
        assert fresh.flush(15) == 0
        assert time.monotonic() - started < 10
        by = {who: (e, o) for who, e, o in acks}
        assert by["east"] == (None, 1)
        assert by["west"][0] is not None, "west's record must fail, not vanish"
        assert by["fresh"][0] is not None
        del p, fresh

        # New clients: produce and consume on east within seconds; west fails promptly.
        started = time.monotonic()
        sent = records(3, "while-west-is-down")
        produce_confluent(gw.addr, "east.live", sent)
        got = read_partition(gw.addr, "east.live", 0)
        assert time.monotonic() - started < 10
        assert [(o, v) for o, _, v, _ in got] == [(0, b"e0"), (1, b"e1")] + [(2 + i, v) for i, (_, v, _) in enumerate(sent)]
        assert [(o, v) for o, _, v, _ in read_partition(east.addr, "east.live", 0)] == [(o, v) for o, _, v, _ in got]
        assert gw.process.alive()

        crash(east)
        wait_for(lambda: readyz(gw)[0] == 503, 10, "/readyz to report every cluster down")
        status, body = readyz(gw)
        assert body["ready"] is False
        assert body["clusters"] == [{"name": "east", "ready": False}, {"name": "west", "ready": False}]
        metrics = gw.metrics()
        assert metrics['causeway_backend_cluster_up{cluster="east"}'] == 0
        assert metrics['causeway_backend_cluster_up{cluster="west"}'] == 0
        assert gw.process.alive()
    finally:
        for proc in reversed(procs):
            proc.close()


# --- 9. kcat and kafkajs across clusters --------------------------------------------------------


@pytest.mark.slow
def test_kcat_and_kafkajs_across_clusters(mc):
    orders, events, ledger = unique("orders.js-"), unique("events.js-"), unique("ledger-js-")
    legacy = "legacy." + ledger
    mc.create("onprem", orders)
    mc.create("cloud", events)
    mc.create("archive", ledger)
    mc.wait_visible([orders, events, legacy])

    by_kcat, by_kafkajs = records(3, "kcat"), records(3, "kafkajs")
    produce_kcat(mc.gw.addr, orders, by_kcat)
    produce_kcat(mc.gw.addr, legacy, by_kcat)
    produce_kafkajs(mc.gw.addr, events, by_kafkajs)
    produce_kafkajs(mc.gw.addr, orders, by_kafkajs)

    # Each library reads what the other wrote, through the gateway.
    want_kafkajs = [(i, k, v, h) for i, (k, v, h) in enumerate(by_kafkajs)]
    want_kcat = [(i, k, v, h) for i, (k, v, h) in enumerate(by_kcat)]
    assert consume_kcat(mc.gw.addr, events, 0, 3) == want_kafkajs
    assert consume_kafkajs(mc.gw.addr, legacy, 0, 3) == want_kcat

    # On the backends: where the routes say, under the backend names.
    both = by_kcat + by_kafkajs
    assert read_partition(mc.addr("onprem"), orders, 0) == [(i, k, v, h) for i, (k, v, h) in enumerate(both)]
    assert read_partition(mc.addr("cloud"), events, 0) == want_kafkajs
    assert read_partition(mc.addr("archive"), ledger, 0) == want_kcat

    meta = json.loads(subprocess.run([kcat(), "-b", mc.gw.addr, "-L", "-J"], check=True,
                                     capture_output=True, timeout=30).stdout)
    assert [(b["id"], b["name"]) for b in meta["brokers"]] == [(0, f"127.0.0.1:{mc.gw.port}")]
    listed = {t["topic"] for t in meta["topics"]}
    assert {orders, events, legacy} <= listed
    assert ledger not in listed


def test_idempotent_producer_ids_never_collide_across_clusters():
    """Every cluster hands out producer ids from the same start, so an id issued by
    the default cluster is, on another cluster, some other producer's id. Causeway
    gives the gateway's producer an id of that cluster's own there: two idempotent
    producers, one through Causeway and one direct, interleave on one partition of
    the non-default cluster and every record of both lands exactly once."""
    one, two = Tansu("one"), Tansu("two")
    config = clusters_config(
        {"one": one.addr, "two": two.addr},
        [{"topics": "a.*", "cluster": "one"}, {"topics": "*", "cluster": "two"}],
    )
    gw = Gateway(config=config)
    try:
        gw.wait_ready()
        one.create_topic("a.shared", 1)
        # Both fresh clusters issue id 1 first: the direct producer takes it on
        # cluster one, the gateway's producer gets it from cluster two (the default).
        direct = Producer({"bootstrap.servers": one.addr, "enable.idempotence": True})
        via = Producer({"bootstrap.servers": gw.addr, "enable.idempotence": True})
        errors = []

        def report(err, _msg):
            if err is not None:
                errors.append(err)

        for i in range(20):
            direct.produce("a.shared", value=f"direct-{i}".encode(), partition=0, on_delivery=report)
            direct.flush(10)
            via.produce("a.shared", value=f"gateway-{i}".encode(), partition=0, on_delivery=report)
            via.flush(10)
        assert errors == []
        got = [v for _, _, v, _ in read_partition(one.addr, "a.shared", 0)]
        assert sorted(got) == sorted([f"direct-{i}".encode() for i in range(20)] + [f"gateway-{i}".encode() for i in range(20)])
        assert [g for g in got if g.startswith(b"direct")] == [f"direct-{i}".encode() for i in range(20)]
        assert [g for g in got if g.startswith(b"gateway")] == [f"gateway-{i}".encode() for i in range(20)]
    finally:
        gw.close()
        one.close()
        two.close()
