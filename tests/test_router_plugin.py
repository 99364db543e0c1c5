"""A router plugin in the gateway: the tenant-router example built from plugins/,
real librdkafka clients whose client ids name their tenant, and two tansu
clusters. Each tenant produces, consumes, lists, creates topics and commits
offsets under plain names; the backends hold each tenant's data under its own
prefix (or on its own cluster), and no tenant sees or reaches another's."""

import json

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from clients import deliver, group_offsets, list_topics, read_partition, read_to_end
from rig import Gateway, Tansu, clusters_config, plugin_component


def plugins_toml(plugins):
    lines = []
    for p in plugins:
        lines.append("[[plugins]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in p.items()]
    return "\n" + "\n".join(lines).replace("{", "{{").replace("}", "}}") + "\n"


def tenant_router(config, **extra):
    return {"name": "tenants", "kind": "router", "path": plugin_component("tenant-router"),
            "config": json.dumps(config), **extra}


def deliver_as(addr, client_id, topic, values, timeout_ms=10000):
    """Produces `values` to partition 0 as `client_id`; each delivery error (None if ok)."""
    return deliver(addr, topic, values, {"client.id": client_id}, timeout_ms=timeout_ms)


def read_as(addr, client_id, topic, partition=0, timeout=20.0):
    """[(offset, value)] of one partition read from offset 0 to its end, as `client_id`."""
    return read_to_end(addr, topic, {"client.id": client_id}, partition=partition, timeout=timeout)


def topics_as(addr, client_id):
    meta = AdminClient({"bootstrap.servers": addr, "client.id": client_id}).list_topics(timeout=10)
    return {name for name, t in meta.topics.items() if t.error is None}


def values(records):
    return [v for _, _, v, _ in records]


@pytest.fixture(scope="module")
def clusters():
    shared, dedicated = Tansu(), Tansu()
    yield shared, dedicated
    shared.close()
    dedicated.close()


def test_tenants_share_a_cluster_without_seeing_each_other(clusters):
    shared, dedicated = clusters
    for t in ["acme.orders", "globex.orders", "ops.audit"]:
        shared.create_topic(t, 2)
    dedicated.create_topic("bigco.orders", 1)
    config = clusters_config({"shared": shared.addr, "dedicated": dedicated.addr},
                             [{"topics": "*", "cluster": "shared"}])
    config += plugins_toml([tenant_router(
        {"cluster": "shared", "match": "client-id", "clusters": {"bigco": "dedicated"}})])
    gw = Gateway(config=config)
    try:
        gw.wait_ready()
        for tenant in ["acme", "globex", "bigco"]:
            assert deliver_as(gw.addr, f"tenant-{tenant}-app", "orders", [f"{tenant}-1".encode()]) == [None]

        # On the backends each tenant's records sit under its own prefix, and
        # bigco's on its own cluster.
        assert values(read_partition(shared.addr, "acme.orders", 0)) == [b"acme-1"]
        assert values(read_partition(shared.addr, "globex.orders", 0)) == [b"globex-1"]
        assert values(read_partition(dedicated.addr, "bigco.orders", 0)) == [b"bigco-1"]

        # Each reads back its own, at the offsets the backend gave.
        for tenant in ["acme", "globex", "bigco"]:
            assert read_as(gw.addr, f"tenant-{tenant}-reader", "orders") == [(0, f"{tenant}-1".encode())]

        # Naming another tenant's topic stays inside one's own namespace.
        assert deliver_as(gw.addr, "tenant-acme-app", "globex.orders", [b"sneaky"]) == [None]
        assert values(read_partition(shared.addr, "globex.orders", 0)) == [b"globex-1"]
        assert values(read_partition(shared.addr, "acme.globex.orders", 0)) == [b"sneaky"]

        # A listing shows a tenant its own topics under their plain names only.
        acme = topics_as(gw.addr, "tenant-acme-admin")
        assert {"orders", "globex.orders"} <= acme, acme
        assert not any(t.startswith(("acme.", "ops.")) or t == "audit" for t in acme), acme
        assert "bigco.orders" not in acme and "orders" in topics_as(gw.addr, "tenant-bigco-admin")
        assert topics_as(gw.addr, "tenant-bigco-admin") & {"globex.orders", "acme.orders"} == set()
        # A client with no tenant gets the gateway's own routes: all of shared.
        ops = topics_as(gw.addr, "ops-console")
        assert {"acme.orders", "globex.orders", "ops.audit"} <= ops, ops

        # A tenant's new topic is created in its namespace.
        admin = AdminClient({"bootstrap.servers": gw.addr, "client.id": "tenant-globex-admin"})
        futures = admin.create_topics([NewTopic("events", 3, 1)], operation_timeout=10)
        futures["events"].result(timeout=20)
        assert list_topics(shared.addr).get("globex.events") == 3
        assert "events" in topics_as(gw.addr, "tenant-globex-admin")
        assert "events" not in topics_as(gw.addr, "tenant-acme-admin")

        # Offsets a tenant's group commits are on its backend topic, and read
        # back under the plain name.
        c = Consumer({"bootstrap.servers": gw.addr, "client.id": "tenant-acme-c", "group.id": "acme-billing",
                      "enable.auto.commit": False})
        try:
            c.commit(offsets=[TopicPartition("orders", 0, 1)], asynchronous=False)
            got = c.committed([TopicPartition("orders", 0)], timeout=15)
            assert [(tp.topic, tp.offset) for tp in got] == [("orders", 1)]
        finally:
            c.close()
        assert group_offsets(shared.addr, "acme-billing") == {("acme.orders", 0): 1}

        status, body = gw.get("/plugins")
        assert status == 200
        assert {"name": "tenants", "kind": "router"}.items() <= json.loads(body)["plugins"][0].items()
        m = gw.metrics()
        assert m['causeway_plugin_calls_total{plugin="tenants"}'] >= 1
    finally:
        gw.close()


def test_a_router_answering_nonsense_fails_closed(clusters):
    """A router that sends tenants to a cluster the gateway lacks: with the
    default on_error = "reject" a tenant reaches nothing (not the unprefixed
    topics), clients without a tenant are served as before; with "pass" the
    gateway's own routes take over."""
    shared, _ = clusters
    shared.create_topic("plain.events", 1)
    config = clusters_config({"shared": shared.addr}, [])
    broken = {"cluster": "nowhere", "match": "client-id"}
    gw = Gateway(config=config + plugins_toml([tenant_router(broken)]))
    try:
        gw.wait_ready()
        errors = deliver_as(gw.addr, "tenant-acme-app", "plain.events", [b"lost"], timeout_ms=3000)
        assert errors[0] is not None, "a tenant must not reach the unprefixed topic"
        assert topics_as(gw.addr, "tenant-acme-admin") & {"plain.events"} == set()
        assert deliver_as(gw.addr, "ops", "plain.events", [b"ops-1"]) == [None]
        assert values(read_partition(shared.addr, "plain.events", 0)) == [b"ops-1"]
        assert gw.metrics()['causeway_plugin_failures_total{plugin="tenants"}'] >= 1
        assert "not a cluster of this gateway" in gw.process.output()
    finally:
        gw.close()
    gw = Gateway(config=config + plugins_toml([tenant_router(broken, on_error="pass")]))
    try:
        gw.wait_ready()
        assert deliver_as(gw.addr, "tenant-acme-app", "plain.events", [b"acme-1"]) == [None]
        assert values(read_partition(shared.addr, "plain.events", 0)) == [b"ops-1", b"acme-1"]
    finally:
        gw.close()


def test_a_tenant_cannot_make_the_router_back_off_for_others(clusters):
    """Names a tenant picks that Kafka refuses (a space, or one the tenant
    prefix makes too long) are the client's fault: refused for that client,
    never counted against the plugin. Otherwise a few bad requests would back
    the router off, and with on_error = "pass" send every tenant to the
    unprefixed topics."""
    shared, _ = clusters
    config = clusters_config({"shared": shared.addr}, [{"topics": "*", "cluster": "shared"}])
    gw = Gateway(config=config + plugins_toml([tenant_router({"cluster": "shared", "match": "client-id"},
                                                             on_error="pass")]))
    try:
        gw.wait_ready()
        too_long = "x" * 245  # legal, but "acme." + it is 250 characters
        p = Producer({"bootstrap.servers": gw.addr, "client.id": "tenant-acme-app", "linger.ms": 0,
                      "message.timeout.ms": 3000})
        errors = []
        for topic in [too_long, "a b", too_long + "y", "bad topic"] * 2:
            p.produce(topic, value=b"spam", on_delivery=lambda e, m: errors.append(e))
        p.flush(15)
        assert len(errors) == 8 and all(e is not None for e in errors), errors
        assert gw.metrics().get('causeway_plugin_failures_total{plugin="tenants"}', 0) == 0
        assert too_long not in list_topics(shared.addr)

        # Other tenants are still routed by the plugin, into their namespace.
        assert deliver_as(gw.addr, "tenant-globex-app", "payments", [b"globex-1"]) == [None]
        assert values(read_partition(shared.addr, "globex.payments", 0)) == [b"globex-1"]
        assert "payments" not in list_topics(shared.addr)
    finally:
        gw.close()


def test_router_config_mistakes_are_reported_by_check(tmp_path):
    from rig import causeway_check

    path = plugin_component("tenant-router")
    text = (
        '[gateway]\nlisten = "127.0.0.1:0"\n[clusters.main]\nbootstrap = ["127.0.0.1:9"]\n'
        f'[[plugins]]\nname = "a"\nkind = "router"\npath = "{path}"\non = ["fetch"]\nclusters = ["main"]\n'
        f'[[plugins]]\nname = "b"\nkind = "router"\npath = "{path}"\n'
    )
    r = causeway_check(text)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "plugins[0].on" in out and "plugins[0].clusters" in out, out
    assert "plugins[1].kind" in out and "one router plugin" in out, out
