"""Admin operations through Causeway with three client libraries."""

import time

from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from clients import kafkajs


def test_confluent_admin_create_describe_delete(gateway, backend):
    admin = AdminClient({"bootstrap.servers": gateway.addr})
    name = f"admin-confluent-{time.monotonic_ns()}"
    topic = NewTopic(name, num_partitions=3, replication_factor=1, config={"cleanup.policy": "compact", "retention.ms": "12345"})
    admin.create_topics([topic])[name].result(timeout=15)

    meta = admin.list_topics(timeout=10)
    assert name in meta.topics
    assert sorted(meta.topics[name].partitions) == [0, 1, 2]
    assert all(p.leader == 0 for p in meta.topics[name].partitions.values())

    # The topic exists on the backend, not just in the gateway's answer.
    direct = AdminClient({"bootstrap.servers": backend.addr}).list_topics(timeout=10)
    assert len(direct.topics[name].partitions) == 3

    res = ConfigResource(ConfigResource.Type.TOPIC, name)
    configs = admin.describe_configs([res])[res].result(timeout=15)
    assert configs["cleanup.policy"].value == "compact"
    assert configs["retention.ms"].value == "12345"

    # Broker configs are asked of Causeway's node id and answered by a backend broker.
    broker = ConfigResource(ConfigResource.Type.BROKER, "0")
    admin.describe_configs([broker])[broker].result(timeout=15)

    admin.delete_topics([name])[name].result(timeout=15)
    deadline = time.monotonic() + 10
    while name in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.2)
    assert name not in admin.list_topics(timeout=10).topics
    assert name not in AdminClient({"bootstrap.servers": backend.addr}).list_topics(timeout=10).topics


def test_kafka_python_admin(gateway):
    from kafka.admin import KafkaAdminClient, NewTopic as KNewTopic

    admin = KafkaAdminClient(bootstrap_servers=gateway.addr)
    name = f"admin-kafka-python-{time.monotonic_ns()}"
    admin.create_topics([KNewTopic(name, num_partitions=2, replication_factor=1)])
    assert name in admin.list_topics()
    described = admin.describe_topics([name])
    assert len(described[0]["partitions"]) == 2
    cluster = admin.describe_cluster()
    assert [(b["broker_id"], b["host"], b["port"]) for b in cluster["brokers"]] == [(0, "127.0.0.1", gateway.port)]
    admin.delete_topics([name])
    admin.close()


def test_kafkajs_admin(gateway):
    name = f"admin-kafkajs-{time.monotonic_ns()}"
    out = kafkajs({"op": "admin", "brokers": [gateway.addr], "topic": name, "partitions": 4})
    assert out["created"] is True
    assert name in out["listed"]
    assert out["partitions"] == 4
    assert sorted(int(o["partition"]) for o in out["offsets"]) == [0, 1, 2, 3]
    assert name not in out["after"]
