"""Authorization at the gateway with real clients (librdkafka, kafka-python, kcat):
SCRAM users and a role, ACL rules from the config, deny winning over allow, the
Kafka error codes a denied client gets for a topic, a group, a transactional id
and the cluster, listings showing only what a principal may describe, super
users, audit lines and metrics, and config mistakes reported by `causeway check`."""

import subprocess
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from clients import list_topics, read_partition
from rig import Gateway, Tansu, causeway_bin, causeway_check, kcat, wait_for

ACLS = """
[authorization]
super_users = ["User:admin"]
[authorization.roles]
payments = ["User:alice"]

[[acls]]
principal = "Role:payments"
resource = "topic"
name = "pay."
pattern = "prefixed"
operations = ["read", "write", "create"]

[[acls]]
principal = "Role:payments"
resource = "group"
name = "pay-"
pattern = "prefixed"
operations = ["read"]

# Deny wins: nobody but a super user touches the vault, whatever else allows it.
[[acls]]
principal = "User:*"
resource = "topic"
name = "pay.vault"
operations = ["all"]
permission = "deny"

[[acls]]
principal = "User:bob"
resource = "topic"
name = "pay.ledger"
operations = ["read"]

[[acls]]
principal = "User:bob"
resource = "group"
name = "bob-readers"
operations = ["read"]
"""


def sasl_user(name, password):
    r = subprocess.run([str(causeway_bin()), "sasl-user", name, "--iterations", "4096"],
                       input=password + "\n", capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def broker():
    b = Tansu()
    for t in ["pay.orders", "pay.ledger", "pay.vault", "hr.salaries"]:
        b.create_topic(t, 1)
    yield b
    b.close()


@pytest.fixture(scope="module")
def gw(broker, tmp_path_factory):
    creds = tmp_path_factory.mktemp("authz") / "users.toml"
    creds.write_text("".join(sasl_user(u, f"{u}-secret") for u in ["alice", "bob", "admin"]))
    config = (
        '[gateway]\nlisten = "{listen}"\n'
        f'[gateway.sasl]\nmechanisms = ["SCRAM-SHA-256"]\ncredentials = "{creds}"\n'
        '[admin]\nlisten = "{admin}"\n'
        f'[clusters.main]\nbootstrap = ["{broker.addr}"]\nhealth_interval_ms = 500\n'
        + ACLS.replace("{", "{{").replace("}", "}}")
    )
    g = Gateway(config=config)
    g.wait_ready()
    yield g
    g.close()


def as_user(user):
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": user, "sasl.password": f"{user}-secret"}


def deliver(addr, topic, value, user, **extra):
    p = Producer({"bootstrap.servers": addr, "linger.ms": 0, "message.timeout.ms": 5000, **as_user(user), **extra})
    errors = []
    p.produce(topic, value=value, partition=0, on_delivery=lambda e, m: errors.append(e))
    p.flush(15)
    assert len(errors) == 1
    return errors[0]


def consume(addr, topic, group, user, timeout=20.0):
    """Subscribes as a group member: the records, or the first error."""
    c = Consumer({"bootstrap.servers": addr, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "enable.partition.eof": True, "session.timeout.ms": 10000,
                  "heartbeat.interval.ms": 500, "partition.assignment.strategy": "range", **as_user(user)})
    c.subscribe([topic])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    c.commit(asynchronous=False)
                    return out
                return m.error()
            out.append(m.value())
    finally:
        c.close()
    raise AssertionError(f"no end of {topic} for {user}")


def visible(addr, user):
    meta = AdminClient({"bootstrap.servers": addr, **as_user(user)}).list_topics(timeout=10)
    return {name for name, t in meta.topics.items() if t.error is None}


def test_a_role_may_use_its_topics_and_groups_and_nothing_else(gw, broker):
    assert deliver(gw.addr, "pay.orders", b"order-1", "alice") is None
    assert [v for _, _, v, _ in read_partition(broker.addr, "pay.orders", 0)] == [b"order-1"]
    assert consume(gw.addr, "pay.orders", "pay-billing", "alice") == [b"order-1"]

    err = deliver(gw.addr, "hr.salaries", b"raise", "alice")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    # A topic that does not exist and may not be created: refused the same way.
    err = deliver(gw.addr, "hr.new", b"x", "alice")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    assert "hr.new" not in list_topics(broker.addr)
    # Deny wins over the role's prefix.
    err = deliver(gw.addr, "pay.vault", b"gold", "alice")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    assert read_partition(broker.addr, "pay.vault", 0) == []
    assert read_partition(broker.addr, "hr.salaries", 0) == []

    # A group outside the role's prefix.
    err = consume(gw.addr, "pay.orders", "marketing", "alice")
    assert isinstance(err, KafkaError) and err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, err


def test_a_reader_may_read_but_not_write_and_only_in_its_group(gw, broker):
    assert deliver(gw.addr, "pay.ledger", b"entry-1", "alice") is None
    assert consume(gw.addr, "pay.ledger", "bob-readers", "bob") == [b"entry-1"]
    err = deliver(gw.addr, "pay.ledger", b"forged", "bob")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    err = consume(gw.addr, "pay.ledger", "pay-billing", "bob")
    assert isinstance(err, KafkaError) and err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, err
    err = consume(gw.addr, "pay.orders", "bob-readers", "bob")
    assert isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    assert [v for _, _, v, _ in read_partition(broker.addr, "pay.ledger", 0)] == [b"entry-1"]

    # kafkajs: alice writes, bob is refused with the topic named.
    from clients import kafkajs
    scram = lambda user: {"mechanism": "scram-sha-256", "username": user, "password": f"{user}-secret"}
    kafkajs({"op": "produce", "brokers": [gw.addr], "topic": "pay.ledger", "partition": 0,
             "records": [{"key": "k", "value": "entry-js"}], "sasl": scram("alice")})
    with pytest.raises(AssertionError) as e:
        kafkajs({"op": "produce", "brokers": [gw.addr], "topic": "pay.ledger", "partition": 0,
                 "records": [{"key": "k", "value": "forged-js"}], "sasl": scram("bob")})
    assert "not authorized" in str(e.value).lower(), str(e.value)[-500:]
    assert [v for _, _, v, _ in read_partition(broker.addr, "pay.ledger", 0)] == [b"entry-1", b"entry-js"]

    # kafka-python gets the same answer.
    from kafka import KafkaProducer
    from kafka.errors import TopicAuthorizationFailedError
    kp = KafkaProducer(bootstrap_servers=gw.addr, security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
                       sasl_plain_username="bob", sasl_plain_password="bob-secret", max_block_ms=10000)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            kp.send("pay.orders", b"forged").get(timeout=10)
    finally:
        kp.close()


def test_listings_show_only_what_a_principal_may_describe(gw):
    assert visible(gw.addr, "bob") & {"pay.orders", "pay.ledger", "pay.vault", "hr.salaries"} == {"pay.ledger"}
    alice = visible(gw.addr, "alice")
    assert {"pay.orders", "pay.ledger"} <= alice and not alice & {"pay.vault", "hr.salaries"}, alice
    assert {"pay.orders", "pay.ledger", "pay.vault", "hr.salaries"} <= visible(gw.addr, "admin")
    # kcat (librdkafka 2.0) lists the same.
    out = subprocess.run([kcat(), "-b", gw.addr, "-L", "-J", "-X", "security.protocol=SASL_PLAINTEXT",
                          "-X", "sasl.mechanisms=SCRAM-SHA-256", "-X", "sasl.username=bob",
                          "-X", "sasl.password=bob-secret"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert '"pay.ledger"' in out.stdout and '"pay.orders"' not in out.stdout and '"hr.salaries"' not in out.stdout
    # Asking by name for a topic one may not describe says so.
    md = AdminClient({"bootstrap.servers": gw.addr, **as_user("bob")}).list_topics(topic="hr.salaries", timeout=10)
    assert md.topics["hr.salaries"].error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_authorized_operations_are_the_principals_own(gw):
    """What describe-with-authorized-operations reports comes from the
    gateway's rules for the client, not from the backend (which would
    describe the gateway's own login)."""
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AclOperation
    bob = AdminClient({"bootstrap.servers": gw.addr, **as_user("bob")})
    desc = bob.describe_topics(TopicCollection(["pay.ledger"]), include_authorized_operations=True)
    ops = set(desc["pay.ledger"].result(timeout=20).authorized_operations)
    assert ops == {AclOperation.READ, AclOperation.DESCRIBE}, ops
    cluster = bob.describe_cluster(include_authorized_operations=True).result(timeout=20)
    assert not cluster.authorized_operations, cluster.authorized_operations
    admin = AdminClient({"bootstrap.servers": gw.addr, **as_user("admin")})
    cluster = admin.describe_cluster(include_authorized_operations=True).result(timeout=20)
    assert {AclOperation.ALTER, AclOperation.DESCRIBE, AclOperation.CREATE} <= set(cluster.authorized_operations)


def test_transactions_need_the_transactional_id(gw):
    p = Producer({"bootstrap.servers": gw.addr, "transactional.id": "pay-tx-1", **as_user("alice")})
    with pytest.raises(KafkaException) as e:
        p.init_transactions(10)
    assert e.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, e.value


def test_cluster_operations_are_for_super_users(gw, broker):
    admin = AdminClient({"bootstrap.servers": gw.addr, **as_user("alice")})
    # Creating topics: within the role's prefix only.
    futures = admin.create_topics([NewTopic("pay.refunds", 1, 1), NewTopic("hr.bonus", 1, 1)], operation_timeout=10)
    futures["pay.refunds"].result(timeout=20)
    with pytest.raises(KafkaException) as e:
        futures["hr.bonus"].result(timeout=20)
    assert e.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert "pay.refunds" in list_topics(broker.addr) and "hr.bonus" not in list_topics(broker.addr)
    # Deleting is not granted.
    with pytest.raises(KafkaException) as e:
        admin.delete_topics(["pay.refunds"], operation_timeout=10)["pay.refunds"].result(timeout=20)
    assert e.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # The backend's ACLs are the cluster's: not for alice (kafka-python's
    # admin client reports the error; librdkafka's hides a DescribeAcls error).
    from kafka.admin import (ACL, ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType,
                             KafkaAdminClient, ResourcePattern, ResourcePatternFilter)
    from kafka.admin import ResourceType as KResourceType
    from kafka.errors import ClusterAuthorizationFailedError
    ka = KafkaAdminClient(bootstrap_servers=gw.addr, security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
                          sasl_plain_username="alice", sasl_plain_password="alice-secret")
    try:
        with pytest.raises(ClusterAuthorizationFailedError):
            ka.describe_acls(ACLFilter(principal=None, host="*", operation=ACLOperation.ANY,
                                       permission_type=ACLPermissionType.ANY,
                                       resource_pattern=ResourcePatternFilter(KResourceType.ANY, None,
                                                                              ACLResourcePatternType.ANY)))
        grant = ACL(principal="User:alice", host="*", operation=ACLOperation.ALL,
                    permission_type=ACLPermissionType.ALLOW,
                    resource_pattern=ResourcePattern(KResourceType.TOPIC, "hr.salaries"))
        result = ka.create_acls([grant])
        assert result["failed"] == [ClusterAuthorizationFailedError] and result["succeeded"] == [], result
    finally:
        ka.close()
    # A super user may do anything.
    root = AdminClient({"bootstrap.servers": gw.addr, **as_user("admin")})
    root.delete_topics(["pay.refunds"], operation_timeout=10)["pay.refunds"].result(timeout=20)
    wait_for(lambda: "pay.refunds" not in list_topics(broker.addr), 10, "pay.refunds deleted")


def test_denials_are_audited_and_counted(gw):
    # bob may describe the ledger (read implies it), so librdkafka sends the
    # produce, and the gateway refuses it.
    err = deliver(gw.addr, "pay.ledger", b"again", "bob")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # A topic bob may not even describe is refused at Metadata already.
    err = deliver(gw.addr, "hr.salaries", b"again", "bob")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    wait_for(lambda: "principal=User:bob" in gw.process.output(), 10, "an audit line for bob")
    lines = [l for l in gw.process.output().splitlines() if " authorization " in l and "User:bob" in l]
    expected = [
        'api="Produce request" operation="write" resource="topic" name="pay.ledger" decision="deny"',
        'api="Metadata" operation="describe" resource="topic" name="hr.salaries" decision="deny"',
    ]
    for e in expected:
        assert any(e in l for l in lines), (e, lines[-5:])
    # Allowed decisions are not audited by default, only counted.
    assert not any('decision="allow"' in l for l in lines)
    m = gw.metrics()
    assert m['causeway_authorization_decisions_total{resource="topic",decision="deny"}'] >= 1
    assert m['causeway_authorization_decisions_total{resource="topic",decision="allow"}'] >= 1


def test_acl_mistakes_are_reported_by_check():
    r = causeway_check(
        '[gateway]\nlisten = "127.0.0.1:9092"\n[clusters.main]\nbootstrap = ["127.0.0.1:19092"]\n'
        '[authorization]\naudit = "loud"\n'
        '[[acls]]\nprincipal = "Role:ghosts"\nresource = "topics"\noperations = ["read", "peek"]\n'
        'permission = "maybe"\n'
    )
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout + r.stderr
    for field in ["authorization.audit", "acls[0].principal", "acls[0].resource", "acls[0].operations[1]",
                  "acls[0].permission"]:
        assert field in out, out


def test_an_acl_mapper_plugin_gives_roles_and_decides(broker, tmp_path):
    """The example acl-mapper maps SASL users to roles and allows by role; the
    config's rules still apply on top: a deny there wins over the plugin's
    allow, and a rule may grant a role the plugin gave."""
    import json
    from rig import plugin_component
    for t in ["orders.new", "orders.frozen", "ledger"]:
        broker.create_topic(t, 1)
    creds = tmp_path / "users.toml"
    creds.write_text("".join(sasl_user(u, f"{u}-secret") for u in ["alice", "bob", "mallory"]))
    mapper = {
        "principals": {"alice": ["orders-writer"], "bob": ["auditor"]},
        "rules": [
            {"role": "orders-writer", "operations": ["write", "create"], "resource": "topic", "prefix": "orders."},
            {"role": "auditor", "operations": ["read"], "resource": "topic", "prefix": "orders."},
            {"role": "auditor", "operations": ["read"], "resource": "group", "prefix": "audit-"},
        ],
    }
    plugin = (
        "[[plugins]]\nname = \"roles\"\nkind = \"acl-mapper\"\n"
        f"path = {json.dumps(plugin_component('acl-mapper'))}\nconfig = {json.dumps(json.dumps(mapper))}\n"
    )
    rules = """
[[acls]]
principal = "User:alice"
resource = "topic"
name = "orders.frozen"
operations = ["write"]
permission = "deny"

[[acls]]
principal = "Role:auditor"
resource = "topic"
name = "ledger"
operations = ["read"]
"""
    config = (
        '[gateway]\nlisten = "{listen}"\n'
        f'[gateway.sasl]\nmechanisms = ["SCRAM-SHA-256"]\ncredentials = "{creds}"\n'
        '[admin]\nlisten = "{admin}"\n'
        f'[clusters.main]\nbootstrap = ["{broker.addr}"]\nhealth_interval_ms = 500\n'
        + (plugin + rules).replace("{", "{{").replace("}", "}}")
    )
    g = Gateway(config=config)
    try:
        g.wait_ready()
        assert deliver(g.addr, "orders.new", b"o-1", "alice") is None
        assert deliver(g.addr, "ledger", b"l-1", "alice").code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
        # The plugin allows orders.*, the config denies orders.frozen: denied.
        assert deliver(g.addr, "orders.frozen", b"x", "alice").code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
        assert read_partition(broker.addr, "orders.frozen", 0) == []

        assert consume(g.addr, "orders.new", "audit-1", "bob") == [b"o-1"]
        assert deliver(g.addr, "orders.new", b"forged", "bob").code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
        err = consume(g.addr, "orders.new", "billing", "bob")
        assert isinstance(err, KafkaError) and err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, err
        # A config rule for a role the plugin gave.
        from clients import produce_confluent
        produce_confluent(broker.addr, "ledger", [(b"k", b"l-0", [])])
        assert consume(g.addr, "ledger", "audit-2", "bob") == [b"l-0"]

        # A user the plugin gives no roles may do nothing.
        assert deliver(g.addr, "orders.new", b"m", "mallory").code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
        assert visible(g.addr, "mallory") & {"orders.new", "ledger"} == set()

        m = g.metrics()
        assert m['causeway_plugin_calls_total{plugin="roles"}'] >= 3
        out = g.process.output()
        assert 'principal=User:alice' in out and 'name="orders.frozen" decision="deny"' in out
        status, body = g.get("/plugins")
        assert status == 200 and '"acl-mapper"' in body
    finally:
        g.close()
