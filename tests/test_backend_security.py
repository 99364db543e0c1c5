"""TLS and SASL towards a backend: a Causeway that accepts only TLS + SASL
(SCRAM-SHA-512 and PLAIN) stands in front of tansu, and a second Causeway uses it
as its backend cluster with [clusters.NAME.tls] and [clusters.NAME.sasl]. Plain
clients of the second produce and consume through both; a wrong backend
password keeps the cluster down and says why, without the password."""

import subprocess
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from clients import read_partition
from rig import Gateway, Tansu, causeway_bin, causeway_check, make_ca, make_cert


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """(tansu, the secured gateway in front of it, the CA file)."""
    d = tmp_path_factory.mktemp("backend-pki")
    make_ca(d, "ca")
    make_cert(d, "server", "/O=Causeway Tests/CN=secured", "ca", server=True)
    users = d / "users.toml"
    r = subprocess.run([str(causeway_bin()), "sasl-user", "svc"], input="svc-secret\n",
                       capture_output=True, text=True, timeout=30, check=True)
    users.write_text(r.stdout)
    broker = Tansu()
    config = (
        '[gateway]\nlisten = "{listen}"\n'
        f'[gateway.tls]\ncert = "{d / "server.pem"}"\nkey = "{d / "server-key.pem"}"\n'
        f'[gateway.sasl]\nmechanisms = ["SCRAM-SHA-512", "PLAIN"]\ncredentials = "{users}"\n'
        '[admin]\nlisten = "{admin}"\n'
        f'[clusters.main]\nbootstrap = ["{broker.addr}"]\nhealth_interval_ms = 500\n'
    )
    front = Gateway(config=config)
    front.wait_ready()
    yield broker, front, d / "ca.pem"
    front.close()
    broker.close()


def chained(front, ca, mechanism, password, ready=True):
    config = (
        '[gateway]\nlisten = "{listen}"\n[admin]\nlisten = "{admin}"\n'
        f'[clusters.secure]\nbootstrap = ["{front.addr}"]\nhealth_interval_ms = 500\n'
        f'[clusters.secure.tls]\nca = "{ca}"\n'
        f'[clusters.secure.sasl]\nmechanism = "{mechanism}"\nusername = "svc"\npassword_env = "SVC_PASSWORD"\n'
    )
    gw = Gateway(config=config, extra_env={"SVC_PASSWORD": password})
    if ready:
        gw.wait_ready()
    return gw


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_a_backend_requiring_tls_and_sasl(secured, mechanism):
    broker, front, ca = secured
    topic = f"chained.{mechanism.lower()}"
    broker.create_topic(topic, 1)
    logins_before = front.metrics().get('causeway_client_sasl_logins_total{outcome="ok"}', 0)
    gw = chained(front, ca, mechanism, "svc-secret")
    try:
        p = Producer({"bootstrap.servers": gw.addr, "linger.ms": 0, "message.timeout.ms": 10000})
        for i in range(3):
            p.produce(topic, value=f"v{i}".encode(), partition=0)
        assert p.flush(15) == 0
        assert [v for _, _, v, _ in read_partition(broker.addr, topic, 0)] == [b"v0", b"v1", b"v2"]
        c = Consumer({"bootstrap.servers": gw.addr, "group.id": f"chained-{mechanism}", "enable.partition.eof": True,
                      "auto.offset.reset": "earliest"})
        c.assign([TopicPartition(topic, 0, 0)])
        got, deadline = [], time.monotonic() + 20
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                break
            got.append(m.value())
        c.close()
        assert got == [b"v0", b"v1", b"v2"]
        assert front.metrics()['causeway_client_sasl_logins_total{outcome="ok"}'] > logins_before
    finally:
        gw.close()


def test_a_wrong_backend_password_keeps_the_cluster_down_and_says_why(secured):
    _, front, ca = secured
    gw = chained(front, ca, "SCRAM-SHA-512", "not-the-password", ready=False)
    try:
        time.sleep(3)
        status, body = gw.get("/readyz")
        assert status != 200 or '"ready":false' in body.replace(" ", ""), body
        out = gw.process.output()
        assert "SASL SCRAM-SHA-512 login" in out and "as svc" in out, out[-2000:]
        assert "not-the-password" not in out
    finally:
        gw.close()


def test_backend_security_mistakes_are_reported_by_check(tmp_path):
    text = ('[gateway]\nlisten = "127.0.0.1:0"\n[clusters.main]\nbootstrap = ["127.0.0.1:9"]\n'
            '[clusters.main.tls]\nca = "/nonexistent/ca.pem"\ncert = "/nonexistent/c.pem"\n'
            '[clusters.main.sasl]\nmechanism = "GSSAPI"\nusername = "svc"\npassword_env = "UNSET_PASSWORD_VAR"\n'
            '[clusters.main.sasl.principals.alice]\nusername = ""\npassword_env = "UNSET_ALICE_VAR"\n')
    r = causeway_check(text)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    for field in ("clusters.main.tls.ca", "clusters.main.sasl.mechanism", "clusters.main.sasl.password_env",
                  'clusters.main.sasl.principals."alice"', 'clusters.main.sasl.principals."alice".username',
                  'clusters.main.sasl.principals."alice".password_env'):
        assert field in out, out


def scram_users(path, *names):
    out = ""
    for name in names:
        r = subprocess.run([str(causeway_bin()), "sasl-user", name, "--iterations", "4096"],
                           input=f"{name}-secret\n", capture_output=True, text=True, timeout=30, check=True)
        out += r.stdout
    path.write_text(out)
    return path


def test_client_principals_log_in_to_the_backend_as_themselves(tmp_path):
    """[clusters.NAME.sasl.principals]: alice and bob reach the backend with
    their own logins, so the backend's ACLs (here a Causeway authorizing by
    rules) judge them, not Causeway's service account; a principal without an
    entry uses the service account."""
    make_ca(tmp_path, "ca")
    make_cert(tmp_path, "server", "/O=Causeway Tests/CN=secured", "ca", server=True)
    backend_users = scram_users(tmp_path / "backend-users.toml", "svc", "alice-svc", "bob-svc")
    client_users = scram_users(tmp_path / "client-users.toml", "alice", "bob", "carol")
    broker = Tansu()
    broker.create_topic("priv.ledger", 1)
    backend_config = (
        '[gateway]\nlisten = "{listen}"\n'
        f'[gateway.tls]\ncert = "{tmp_path / "server.pem"}"\nkey = "{tmp_path / "server-key.pem"}"\n'
        f'[gateway.sasl]\nmechanisms = ["SCRAM-SHA-512"]\ncredentials = "{backend_users}"\n'
        '[admin]\nlisten = "{admin}"\n'
        f'[clusters.main]\nbootstrap = ["{broker.addr}"]\nhealth_interval_ms = 500\n'
        '[authorization]\nsuper_users = ["User:svc"]\n'
        '[[acls]]\nprincipal = "User:alice-svc"\nresource = "topic"\nname = "priv."\npattern = "prefixed"\n'
        'operations = ["read", "write"]\n'
    )
    backend = Gateway(config=backend_config)
    front = None
    try:
        backend.wait_ready()
        front_config = (
            '[gateway]\nlisten = "{listen}"\n'
            f'[gateway.sasl]\nmechanisms = ["SCRAM-SHA-256"]\ncredentials = "{client_users}"\n'
            '[admin]\nlisten = "{admin}"\n'
            f'[clusters.secure]\nbootstrap = ["{backend.addr}"]\nhealth_interval_ms = 500\n'
            f'[clusters.secure.tls]\nca = "{tmp_path / "ca.pem"}"\n'
            '[clusters.secure.sasl]\nmechanism = "SCRAM-SHA-512"\nusername = "svc"\npassword_env = "SVC_PASSWORD"\n'
            '[clusters.secure.sasl.principals."User:alice"]\nusername = "alice-svc"\npassword_env = "ALICE_SVC"\n'
            '[clusters.secure.sasl.principals."User:bob"]\nusername = "bob-svc"\npassword_env = "BOB_SVC"\n'
        )
        front = Gateway(config=front_config, extra_env={
            "SVC_PASSWORD": "svc-secret", "ALICE_SVC": "alice-svc-secret", "BOB_SVC": "bob-svc-secret"})
        front.wait_ready()

        def deliver(user, value):
            p = Producer({"bootstrap.servers": front.addr, "linger.ms": 0, "message.timeout.ms": 5000,
                          "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-256",
                          "sasl.username": user, "sasl.password": f"{user}-secret"})
            errors = []
            p.produce("priv.ledger", value=value, partition=0, on_delivery=lambda e, m: errors.append(e))
            p.flush(15)
            assert len(errors) == 1
            return errors[0]

        assert deliver("alice", b"from-alice") is None
        err = deliver("bob", b"from-bob")
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
        assert deliver("carol", b"from-carol") is None  # no entry: the service account
        assert [v for _, _, v, _ in read_partition(broker.addr, "priv.ledger", 0)] == [b"from-alice", b"from-carol"]
        out = backend.process.output()
        assert "principal=User:bob-svc" in out and 'decision="deny"' in out, out[-2000:]
        assert "bob-svc-secret" not in front.process.output()
    finally:
        if front is not None:
            front.close()
        backend.close()
        broker.close()


def test_connections_to_a_backend_with_a_login_lifetime_are_renewed(tmp_path):
    """A backend that limits logins (KIP-368 session_lifetime_ms; here a
    Causeway with a 2 s lifetime, which closes a connection whose login ran
    out at its next request): Causeway retires each connection before its
    login runs out and logs in afresh, so a producer sending all the while
    never loses a request, even with retries off."""
    make_ca(tmp_path, "ca")
    make_cert(tmp_path, "server", "/O=Causeway Tests/CN=secured", "ca", server=True)
    users = scram_users(tmp_path / "users.toml", "svc")
    broker = Tansu()
    broker.create_topic("renewed", 1)
    backend = Gateway(config=(
        '[gateway]\nlisten = "{listen}"\n'
        f'[gateway.tls]\ncert = "{tmp_path / "server.pem"}"\nkey = "{tmp_path / "server-key.pem"}"\n'
        f'[gateway.sasl]\nmechanisms = ["SCRAM-SHA-512"]\ncredentials = "{users}"\nsession_lifetime_ms = 2000\n'
        '[admin]\nlisten = "{admin}"\n'
        f'[clusters.main]\nbootstrap = ["{broker.addr}"]\nhealth_interval_ms = 500\n'
    ))
    front = None
    try:
        backend.wait_ready()
        front = Gateway(config=(
            '[gateway]\nlisten = "{listen}"\n[admin]\nlisten = "{admin}"\n'
            f'[clusters.secure]\nbootstrap = ["{backend.addr}"]\nhealth_interval_ms = 500\n'
            f'[clusters.secure.tls]\nca = "{tmp_path / "ca.pem"}"\n'
            '[clusters.secure.sasl]\nmechanism = "SCRAM-SHA-512"\nusername = "svc"\npassword_env = "SVC_PASSWORD"\n'
        ), extra_env={"SVC_PASSWORD": "svc-secret"})
        front.wait_ready()
        logins = backend.metrics().get('causeway_client_sasl_logins_total{outcome="ok"}', 0)
        p = Producer({"bootstrap.servers": front.addr, "linger.ms": 0, "retries": 0, "message.timeout.ms": 5000})
        errors, sent = [], 0
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline:
            p.produce("renewed", value=f"v{sent}".encode(), partition=0, on_delivery=lambda e, m: errors.append(e))
            sent += 1
            p.poll(0.2)
        p.flush(15)
        assert len(errors) == sent and all(e is None for e in errors), [e for e in errors if e][:3]
        assert len(read_partition(broker.addr, "renewed", 0)) == sent
        m = backend.metrics()
        assert m.get('causeway_client_protocol_errors_total{kind="login_expired"}', 0) == 0
        assert m['causeway_client_sasl_logins_total{outcome="ok"}'] >= logins + 3, "connections logged in afresh"
        assert front.metrics().get('causeway_backend_errors_total{cluster="secure",kind="disconnected"}', 0) == 0
    finally:
        if front is not None:
            front.close()
        backend.close()
        broker.close()


def test_a_backend_checked_against_the_system_ca_bundle(secured):
    """`ca = "system"` reads the operating system's CA bundle ($SSL_CERT_FILE
    first, as OpenSSL does): here the test CA stands in for it."""
    broker, front, ca = secured
    broker.create_topic("chained.system", 1)
    config = (
        '[gateway]\nlisten = "{listen}"\n[admin]\nlisten = "{admin}"\n'
        f'[clusters.secure]\nbootstrap = ["{front.addr}"]\nhealth_interval_ms = 500\n'
        '[clusters.secure.tls]\nca = "system"\n'
        '[clusters.secure.sasl]\nmechanism = "SCRAM-SHA-512"\nusername = "svc"\npassword_env = "SVC_PASSWORD"\n'
    )
    gw = Gateway(config=config, extra_env={"SVC_PASSWORD": "svc-secret", "SSL_CERT_FILE": str(ca)})
    try:
        gw.wait_ready()
        p = Producer({"bootstrap.servers": gw.addr, "linger.ms": 0, "message.timeout.ms": 10000})
        p.produce("chained.system", value=b"via-system-roots", partition=0)
        assert p.flush(15) == 0
        assert [v for _, _, v, _ in read_partition(broker.addr, "chained.system", 0)] == [b"via-system-roots"]
    finally:
        gw.close()
    # Without the test CA among the system roots, the backend is not trusted.
    gw = Gateway(config=config, extra_env={"SVC_PASSWORD": "svc-secret"})
    try:
        time.sleep(3)
        status, body = gw.get("/readyz")
        assert status != 200, body
        assert "certificate" in gw.process.output().lower()
    finally:
        gw.close()
