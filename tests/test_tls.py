"""TLS on the client listener, with certificates made by openssl and real clients
(librdkafka, kafka-python, kafkajs): produce and consume over TLS, plaintext refused,
mutual TLS with the principal taken from the client certificate (and used by a
router plugin to isolate tenants), untrusted and missing client certificates
refused, a renewed certificate served without a restart, and mistakes in the TLS
config reported by `causeway check`."""

import json
import shutil
import socket
import ssl
import time

import pytest
from confluent_kafka.admin import AdminClient

from clients import deliver, read_partition, read_to_end
from rig import Gateway, Tansu, causeway_check, make_ca, make_cert, plugin_component, wait_for


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, _ = make_ca(d, "ca")
    make_cert(d, "server", "/O=Causeway Tests/CN=gateway", "ca", server=True)
    make_cert(d, "acme", "/O=Causeway Tests/CN=tenant-acme", "ca")
    make_cert(d, "globex", "/O=Causeway Tests/CN=tenant-globex", "ca")
    make_ca(d, "rogue-ca")
    make_cert(d, "rogue", "/O=Causeway Tests/CN=tenant-acme", "rogue-ca")
    make_cert(d, "expired", "/O=Causeway Tests/CN=tenant-acme", "ca", expired=True)
    # The same subject as globex's, written as BMPString (UTF-16) as some
    # Windows CAs do: it must name the same principal.
    make_cert(d, "globex-bmp", "/O=Causeway Tests/CN=tenant-globex", "ca", utf8_strings="MASK:0x800")
    # Trusted, but with no subject at all: there is no principal to name.
    make_cert(d, "nameless", "/", "ca")
    return d


@pytest.fixture(scope="module")
def broker():
    b = Tansu()
    yield b
    b.close()


def tls_gateway(broker, pki, extra="", plugins=""):
    config = (
        '[gateway]\nlisten = "{listen}"\n'
        "[gateway.tls]\n"
        f'cert = "{pki / "server.pem"}"\nkey = "{pki / "server-key.pem"}"\n{extra}\n'
        '[admin]\nlisten = "{admin}"\n'
        f'[clusters.main]\nbootstrap = ["{broker.addr}"]\nhealth_interval_ms = 500\n'
    )
    gw = Gateway(config=config + plugins)
    gw.wait_ready()
    return gw


def ssl_conf(pki, cert=None):
    conf = {"security.protocol": "SSL", "ssl.ca.location": str(pki / "ca.pem")}
    if cert:
        conf["ssl.certificate.location"] = str(pki / f"{cert}.pem")
        conf["ssl.key.location"] = str(pki / f"{cert}-key.pem")
    return conf


def served_cert(addr) -> bytes:
    """The DER certificate the gateway presents."""
    host, port = addr.split(":")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=5) as s, ctx.wrap_socket(s) as t:
        return t.getpeercert(binary_form=True)


def pem_to_der(path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_clients_produce_and_consume_over_tls_and_plaintext_is_refused(broker, pki):
    broker.create_topic("tls.orders", 1)
    gw = tls_gateway(broker, pki)
    try:
        assert deliver(gw.addr, "tls.orders", [b"one", b"two"], ssl_conf(pki)) == [None, None]
        assert read_to_end(gw.addr, "tls.orders", ssl_conf(pki)) == [(0, b"one"), (1, b"two")]
        assert [v for _, _, v, _ in read_partition(broker.addr, "tls.orders", 0)] == [b"one", b"two"]

        # kafka-python over TLS too.
        from kafka import KafkaConsumer, TopicPartition as KTP
        kc = KafkaConsumer(bootstrap_servers=gw.addr, security_protocol="SSL", ssl_cafile=str(pki / "ca.pem"),
                           consumer_timeout_ms=5000, enable_auto_commit=False)
        kc.assign([KTP("tls.orders", 0)])
        kc.seek(KTP("tls.orders", 0), 0)
        assert [m.value for m in kc][:2] == [b"one", b"two"]
        kc.close()

        # kafkajs over TLS.
        from clients import kafkajs
        kafkajs({"op": "produce", "brokers": [gw.addr], "topic": "tls.orders", "partition": 0,
                 "records": [{"key": "k", "value": "js"}], "sslCa": str(pki / "ca.pem")})
        assert [v for _, _, v, _ in read_partition(broker.addr, "tls.orders", 0)] == [b"one", b"two", b"js"]

        # A client speaking plaintext to the TLS port gets nowhere, and the
        # gateway keeps serving.
        plain = AdminClient({"bootstrap.servers": gw.addr, "socket.timeout.ms": 2000})
        with pytest.raises(Exception):
            plain.list_topics(timeout=3)
        wait_for(lambda: gw.metrics().get('causeway_client_tls_handshake_failures_total{reason="refused"}', 0) >= 1,
                 10, "a refused handshake counted")
        assert deliver(gw.addr, "tls.orders", [b"three"], ssl_conf(pki)) == [None]
        assert read_to_end(gw.addr, "tls.orders", ssl_conf(pki)) == [(0, b"one"), (1, b"two"), (2, b"js"), (3, b"three")]
    finally:
        gw.close()


def test_mutual_tls_names_the_principal_a_router_isolates_by(broker, pki):
    """Client certificates are required; the principal is the subject DN
    (User:CN=tenant-acme,O=Causeway Tests), which the tenant router reads."""
    broker.create_topic("acme.ledger", 1)
    broker.create_topic("globex.ledger", 1)
    router = {
        "name": "tenants", "kind": "router", "path": plugin_component("tenant-router"),
        "config": json.dumps({"cluster": "main", "match": "principal", "id_prefix": "CN=tenant-"}),
    }
    plugins = "[[plugins]]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in router.items()) + "\n"
    plugins = plugins.replace("{", "{{").replace("}", "}}")
    gw = tls_gateway(broker, pki, extra=f'client_ca = "{pki / "ca.pem"}"', plugins=plugins)
    try:
        assert deliver(gw.addr, "ledger", [b"acme-1"], ssl_conf(pki, "acme")) == [None]
        assert deliver(gw.addr, "ledger", [b"globex-1"], ssl_conf(pki, "globex")) == [None]
        assert [v for _, _, v, _ in read_partition(broker.addr, "acme.ledger", 0)] == [b"acme-1"]
        assert [v for _, _, v, _ in read_partition(broker.addr, "globex.ledger", 0)] == [b"globex-1"]
        assert read_to_end(gw.addr, "ledger", ssl_conf(pki, "globex")) == [(0, b"globex-1")]
        assert read_to_end(gw.addr, "ledger", ssl_conf(pki, "globex-bmp")) == [(0, b"globex-1")]

        before = gw.metrics().get('causeway_client_tls_handshake_failures_total{reason="refused"}', 0)
        # No certificate, one from a CA the gateway does not trust, or one
        # that expired: refused.
        for conf in (ssl_conf(pki), ssl_conf(pki, "rogue"), ssl_conf(pki, "expired")):
            errors = deliver(gw.addr, "ledger", [b"intruder"], conf, timeout_ms=3000)
            assert errors[0] is not None, conf
        assert gw.metrics()['causeway_client_tls_handshake_failures_total{reason="refused"}'] >= before + 3
        # A trusted certificate without a subject is not taken as anonymous.
        errors = deliver(gw.addr, "ledger", [b"nameless"], ssl_conf(pki, "nameless"), timeout_ms=3000)
        assert errors[0] is not None
        assert gw.metrics()['causeway_client_tls_handshake_failures_total{reason="no_principal"}'] >= 1
        assert [v for _, _, v, _ in read_partition(broker.addr, "acme.ledger", 0)] == [b"acme-1"]
    finally:
        gw.close()


def test_a_renewed_certificate_is_served_without_a_restart(broker, pki, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    for f in ("server.pem", "server-key.pem"):
        shutil.copy(pki / f, live / f)
    config = (
        '[gateway]\nlisten = "{listen}"\n'
        f'[gateway.tls]\ncert = "{live / "server.pem"}"\nkey = "{live / "server-key.pem"}"\n'
        '[admin]\nlisten = "{admin}"\n'
        f'[clusters.main]\nbootstrap = ["{broker.addr}"]\n'
    )
    gw = Gateway(config=config)
    try:
        gw.wait_ready()
        assert served_cert(gw.addr) == pem_to_der(pki / "server.pem")
        renewed, key = make_cert(pki, "server2", "/O=Causeway Tests/CN=gateway", "ca", server=True)
        # A broken file first: the old certificate stays and clients keep working.
        (live / "server.pem").write_text("not a certificate\n")
        time.sleep(3)
        assert served_cert(gw.addr) == pem_to_der(pki / "server.pem")
        assert "changed TLS files not loaded" in gw.process.output()
        shutil.copy(key, live / "server-key.pem")
        shutil.copy(renewed, live / "server.pem")
        wait_for(lambda: served_cert(gw.addr) == pem_to_der(renewed), 10, "the renewed certificate served")
        broker.create_topic("tls.renewed", 1)
        assert deliver(gw.addr, "tls.renewed", [b"after"], ssl_conf(pki)) == [None]
    finally:
        gw.close()


def test_tls_config_mistakes_are_reported_by_check(pki):
    text = (
        '[gateway]\nlisten = "127.0.0.1:0"\n'
        f'[gateway.tls]\ncert = "{pki / "server.pem"}"\nkey = "{pki / "acme-key.pem"}"\n'
        'client_auth = "optional"\n'
        '[clusters.main]\nbootstrap = ["127.0.0.1:9"]\n'
    )
    r = causeway_check(text)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "gateway.tls.key" in out and "does not fit the certificate" in out, out
    assert "gateway.tls.client_auth" in out, out
    r = causeway_check(text.replace(str(pki / "acme-key.pem"), "/nonexistent.pem").replace('client_auth = "optional"\n', ""))
    assert r.returncode == 1 and "gateway.tls.key" in r.stdout + r.stderr, r.stdout + r.stderr
