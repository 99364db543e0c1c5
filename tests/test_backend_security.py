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
            '[clusters.main.sasl]\nmechanism = "GSSAPI"\nusername = "svc"\npassword_env = "UNSET_PASSWORD_VAR"\n')
    r = causeway_check(text)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    for field in ("clusters.main.tls.ca", "clusters.main.sasl.mechanism", "clusters.main.sasl.password_env"):
        assert field in out, out
