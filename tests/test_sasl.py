"""SASL at the gateway with real clients: SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN
from librdkafka, kafka-python, kafkajs and kcat, over plain TCP and over TLS; wrong passwords and
unknown users refused; a request before authentication closes the connection;
the authenticated principal reaches plugins; KIP-368 re-authentication keeps a
long-lived producer going; and `causeway sasl-user` writes credentials the
gateway accepts."""

import json
import socket
import struct
import subprocess
import time

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from clients import deliver, kafkajs, read_partition, read_to_end
from rig import Gateway, Tansu, causeway_bin, causeway_check, kcat, make_ca, make_cert, plugin_component, wait_for


def sasl_user(name, password, iterations=4096):
    r = subprocess.run([str(causeway_bin()), "sasl-user", name, "--iterations", str(iterations)],
                       input=password + "\n", capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert password not in r.stdout
    return r.stdout


@pytest.fixture(scope="module")
def broker():
    b = Tansu()
    yield b
    b.close()


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    d = tmp_path_factory.mktemp("sasl")
    path = d / "users.toml"
    path.write_text(sasl_user("alice", "alice-secret") + '\n[users.bob]\npassword_env = "BOB_PASSWORD"\n')
    return path


def sasl_gateway(broker, creds, sasl_extra="", tls=None, plugins=""):
    config = '[gateway]\nlisten = "{listen}"\n'
    if tls:
        config += f'[gateway.tls]\ncert = "{tls / "server.pem"}"\nkey = "{tls / "server-key.pem"}"\n'
    config += (
        f'[gateway.sasl]\nmechanisms = ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]\ncredentials = "{creds}"\n{sasl_extra}\n'
        '[admin]\nlisten = "{admin}"\n'
        f'[clusters.main]\nbootstrap = ["{broker.addr}"]\nhealth_interval_ms = 500\n'
    )
    gw = Gateway(config=config + plugins, extra_env={"BOB_PASSWORD": "bob-secret"})
    gw.wait_ready()
    return gw


def login(mechanism, user, password, protocol="SASL_PLAINTEXT", **extra):
    return {"security.protocol": protocol, "sasl.mechanism": mechanism,
            "sasl.username": user, "sasl.password": password, **extra}


def test_scram_and_plain_logins_from_every_client(broker, creds):
    broker.create_topic("sasl.orders", 1)
    gw = sasl_gateway(broker, creds)
    try:
        sent = []
        for i, (mech, user, pw) in enumerate([("SCRAM-SHA-512", "alice", "alice-secret"),
                                              ("SCRAM-SHA-256", "alice", "alice-secret"),
                                              ("PLAIN", "alice", "alice-secret"),
                                              ("SCRAM-SHA-256", "bob", "bob-secret"),
                                              ("PLAIN", "bob", "bob-secret")]):
            value = f"{i}-{mech}-{user}".encode()
            assert deliver(gw.addr, "sasl.orders", [value], login(mech, user, pw)) == [None], (mech, user)
            sent.append(value)
        assert [v for _, v in read_to_end(gw.addr, "sasl.orders", login("SCRAM-SHA-512", "bob", "bob-secret"))] == sent
        assert [v for _, _, v, _ in read_partition(broker.addr, "sasl.orders", 0)] == sent

        from kafka import KafkaConsumer, TopicPartition as KTP
        kc = KafkaConsumer(bootstrap_servers=gw.addr, security_protocol="SASL_PLAINTEXT",
                           sasl_mechanism="SCRAM-SHA-256", sasl_plain_username="alice",
                           sasl_plain_password="alice-secret", consumer_timeout_ms=5000, enable_auto_commit=False)
        kc.assign([KTP("sasl.orders", 0)])
        kc.seek(KTP("sasl.orders", 0), 0)
        assert [m.value for m in kc] == sent
        kc.close()

        # kafkajs (SCRAM and PLAIN) and kcat (SCRAM-SHA-512).
        for i, mechanism in enumerate(["scram-sha-256", "scram-sha-512", "plain"]):
            kafkajs({"op": "produce", "brokers": [gw.addr], "topic": "sasl.orders", "partition": 0,
                     "records": [{"key": "k", "value": f"js-{mechanism}"}],
                     "sasl": {"mechanism": mechanism, "username": "bob", "password": "bob-secret"}})
            sent.append(f"js-{mechanism}".encode())
        r = subprocess.run([kcat(), "-b", gw.addr, "-P", "-t", "sasl.orders", "-p", "0",
                            "-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanism=SCRAM-SHA-512",
                            "-X", "sasl.username=alice", "-X", "sasl.password=alice-secret"],
                           input=b"kcat-1\n", timeout=30, capture_output=True)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        sent.append(b"kcat-1")
        r = subprocess.run([kcat(), "-b", gw.addr, "-C", "-t", "sasl.orders", "-p", "0", "-o", "beginning", "-e",
                            "-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanism=SCRAM-SHA-256",
                            "-X", "sasl.username=bob", "-X", "sasl.password=bob-secret"],
                           check=True, timeout=30, capture_output=True)
        assert r.stdout.decode().splitlines() == [v.decode() for v in sent]
        got = kafkajs({"op": "consume", "brokers": [gw.addr], "topic": "sasl.orders", "partition": 0,
                       "count": len(sent), "sasl": {"mechanism": "scram-sha-512", "username": "alice",
                                                    "password": "alice-secret"}})
        assert [m["value"].encode() for m in got["messages"]] == sent
        assert gw.metrics()['causeway_client_sasl_logins_total{outcome="ok"}'] >= 7
    finally:
        gw.close()


def test_wrong_credentials_are_refused_and_nothing_lands(broker, creds):
    broker.create_topic("sasl.locked", 1)
    gw = sasl_gateway(broker, creds)
    try:
        for conf in (login("SCRAM-SHA-256", "alice", "wrong"), login("PLAIN", "alice", "wrong"),
                     login("SCRAM-SHA-512", "mallory", "alice-secret"), login("PLAIN", "mallory", "x")):
            errors = deliver(gw.addr, "sasl.locked", [b"intruder"], conf, timeout_ms=3000)
            assert errors[0] is not None, conf
        admin = AdminClient({"bootstrap.servers": gw.addr, **login("SCRAM-SHA-256", "alice", "wrong")})
        with pytest.raises(Exception):
            admin.list_topics(timeout=5)
        assert [v for _, _, v, _ in read_partition(broker.addr, "sasl.locked", 0)] == []
        assert gw.metrics()['causeway_client_sasl_logins_total{outcome="refused"}'] >= 4
        out = gw.process.output()
        assert "alice-secret" not in out and "wrong" not in out.replace("wrong_", ""), "no password in the log"
        # A client without SASL at all: its first non-ApiVersions request closes the connection.
        assert raw_metadata_is_refused(gw.addr)
        # Before a login, a frame larger than 512 KiB is refused on its length alone.
        host, port = gw.addr.split(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(struct.pack(">i", 1 << 20) + b"\0" * 64)
            s.settimeout(5)
            assert s.recv(4) == b"", "a 1 MiB frame before login closes the connection"
        assert deliver(gw.addr, "sasl.locked", [b"ok"], login("SCRAM-SHA-512", "alice", "alice-secret")) == [None]
    finally:
        gw.close()


def test_a_client_that_never_logs_in_is_closed(broker, creds):
    """ApiVersions is allowed before a login, but not for ever: with
    login_timeout_ms the connection closes whatever the client keeps sending,
    and one that sends requests without reading the answers is closed too."""
    broker.create_topic("sasl.late", 1)
    gw = sasl_gateway(broker, creds, sasl_extra="login_timeout_ms = 1500")
    try:
        host, port = gw.addr.split(":")
        client = b"loiterer"
        api_versions = struct.pack(">hhih", 18, 0, 1, len(client)) + client
        frame = struct.pack(">i", len(api_versions)) + api_versions
        started = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.settimeout(0.25)
            closed = False
            while time.monotonic() - started < 8 and not closed:
                try:
                    s.sendall(frame)
                    while True:
                        if s.recv(65536) == b"":
                            closed = True
                            break
                except socket.timeout:
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
        elapsed = time.monotonic() - started
        assert closed and 1.0 < elapsed < 6, f"closed={closed} after {elapsed:.1f}s"

        # Pipelining without reading: the answers pile up in the socket, and
        # the connection still goes at the deadline.
        started = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(0.5)
            try:
                while time.monotonic() - started < 8:
                    s.sendall(frame * 200)
            except (socket.timeout, ConnectionResetError, BrokenPipeError):
                pass
            # The gateway stopped reading once its writes stalled; it closes
            # the connection at the deadline, not when the client goes.
            wait_for(lambda: gw.metrics().get('causeway_client_protocol_errors_total{kind="write_stalled"}', 0) >= 1,
                     10, "the non-reading connection closed")
        assert gw.metrics().get('causeway_client_protocol_errors_total{kind="login_timeout"}', 0) >= 1
        # A client that logs in is not affected.
        assert deliver(gw.addr, "sasl.late", [b"ok"], login("SCRAM-SHA-512", "alice", "alice-secret")) == [None]
    finally:
        gw.close()


def raw_metadata_is_refused(addr) -> bool:
    """Sends Metadata v1 (all topics) with no login; True if the gateway closes
    the connection without answering."""
    host, port = addr.split(":")
    client = b"raw"
    body = struct.pack(">i", -1)  # topics: null = all
    header = struct.pack(">hhih", 3, 1, 7, len(client)) + client
    frame = header + body
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(struct.pack(">i", len(frame)) + frame)
        s.settimeout(5)
        try:
            return s.recv(4) == b""
        except ConnectionResetError:
            return True


def test_the_principal_reaches_plugins(broker, creds):
    """A masking filter scoped to User:alice masks alice's records, not bob's."""
    broker.create_topic("sasl.profiles", 1)
    mask = {"name": "alice-only", "kind": "record-filter", "path": plugin_component("pii-mask"),
            "config": json.dumps({"fields": ["email"]}), "principals": ["User:alice"]}
    plugins = ("[[plugins]]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in mask.items()) + "\n")
    gw = sasl_gateway(broker, creds, plugins=plugins.replace("{", "{{").replace("}", "}}"))
    try:
        doc = json.dumps({"email": "a@b.io"}).encode()
        assert deliver(gw.addr, "sasl.profiles", [doc], login("SCRAM-SHA-256", "alice", "alice-secret")) == [None]
        assert deliver(gw.addr, "sasl.profiles", [doc], login("SCRAM-SHA-256", "bob", "bob-secret")) == [None]
        stored = [json.loads(v)["email"] for _, _, v, _ in read_partition(broker.addr, "sasl.profiles", 0)]
        assert stored == ["***", "a@b.io"]
    finally:
        gw.close()


def test_scram_over_tls(broker, creds, tmp_path):
    make_ca(tmp_path, "ca")
    make_cert(tmp_path, "server", "/O=Causeway Tests/CN=gateway", "ca", server=True)
    broker.create_topic("sasl.tls", 1)
    gw = sasl_gateway(broker, creds, tls=tmp_path)
    try:
        conf = login("SCRAM-SHA-512", "alice", "alice-secret", protocol="SASL_SSL",
                     **{"ssl.ca.location": str(tmp_path / "ca.pem")})
        assert deliver(gw.addr, "sasl.tls", [b"secure"], conf) == [None]
        assert read_to_end(gw.addr, "sasl.tls", conf) == [(0, b"secure")]
    finally:
        gw.close()


def test_clients_log_in_again_before_their_session_runs_out(broker, creds):
    """KIP-368: with a 2 s session lifetime, a producer sending for 7 s logs in
    again on its connection and never loses a record."""
    broker.create_topic("sasl.reauth", 1)
    gw = sasl_gateway(broker, creds, sasl_extra="session_lifetime_ms = 2000")
    try:
        p = Producer({"bootstrap.servers": gw.addr, "linger.ms": 0, "message.timeout.ms": 10000,
                      **login("SCRAM-SHA-256", "alice", "alice-secret")})
        errors = []
        for i in range(14):
            p.produce("sasl.reauth", value=str(i).encode(), partition=0, on_delivery=lambda e, m: errors.append(e))
            p.flush(10)
            time.sleep(0.5)
        assert errors == [None] * 14
        assert [v for _, _, v, _ in read_partition(broker.addr, "sasl.reauth", 0)] == [str(i).encode() for i in range(14)]
        m = gw.metrics()
        logins = m['causeway_client_sasl_logins_total{outcome="ok"}']
        connections = m["causeway_client_connections_accepted_total"]
        assert logins >= 4, f"only {logins} logins: the producer did not re-authenticate"
        assert logins > connections, f"{logins} logins over {connections} connections: new connections, not re-logins"
        assert "authentication ran out" not in gw.process.output()
    finally:
        gw.close()


def test_credential_file_mistakes_are_reported_by_check(tmp_path):
    users = tmp_path / "users.toml"
    users.write_text('[users.alice]\nscram-sha-256 = "iterations=10,salt=AAAA,stored_key=AA==,server_key=AA=="\n'
                     '[users.carol]\npassword_env = "CAROL_PASSWORD_UNSET"\n[users.dave]\n')
    text = ('[gateway]\nlisten = "127.0.0.1:0"\n'
            f'[gateway.sasl]\nmechanisms = ["SCRAM-SHA-256", "GSSAPI"]\ncredentials = "{users}"\n'
            '[clusters.main]\nbootstrap = ["127.0.0.1:9"]\n')
    r = causeway_check(text)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "gateway.sasl.mechanisms[1]" in out and "GSSAPI" in out, out
    assert "users.alice" in out and "iterations 10" in out, out
    assert "users.carol" in out and "CAROL_PASSWORD_UNSET" in out, out
    assert "users.dave" in out and "has no credential" in out, out
