"""The hybrid bridge: an on-prem Causeway dials out over QUIC to a cloud Causeway,
which then reaches the on-prem cluster back through that connection.

Two network namespaces (see netns.py): "onprem" with a tansu broker and a
Causeway, "cloud" with a tansu broker and a Causeway, joined by a veth pair;
onprem's firewall drops every new connection from the cloud side. The tests
run as the cloud's clients, from the host, with real client libraries
(librdkafka, kafka-python, kcat). These tests need root, iproute2 and nft, and
skip with the reason where those are missing.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import netns
from clients import consume_kafka_python, produce_confluent, read_partition, read_partitions, records
from netns import CLOUD_HOST_SIDE_IP, CLOUD_IP, ONPREM_IP
from rig import (
    Process, admin_call, causeway_bin, causeway_check, kcat, make_ca, make_cert, read_frame, tansu_bin, wait_for,
)

ONPREM_BROKER = f"{ONPREM_IP}:19092"
CLOUD_BROKER = f"{CLOUD_HOST_SIDE_IP}:29092"
TUNNEL = f"{CLOUD_IP}:4433"
# The on-prem Causeway's own listener, for on-prem clients.
ONPREM_LOCAL = "127.0.0.1:9092"
PEER = "CN=onprem-a,O=Causeway Tests"

CLOUD_CONFIG = """
[gateway]
listen = "0.0.0.0:9092"
advertised = "{cloud_host}:9092"
cluster_id = "causeway-cloud"

[admin]
listen = "{cloud_host}:9644"

[tunnel]
listen = "{tunnel}"
cert = "{certs}/cloud.pem"
key = "{certs}/cloud-key.pem"
client_ca = "{certs}/ca.pem"
keep_alive_ms = 500
idle_timeout_ms = 3000

[[tunnel.peers]]
identity = "{peer}"
clusters = ["onprem"]

[clusters.onprem]
tunnel = true
bootstrap = ["{onprem_broker}"]
health_interval_ms = 500
connect_timeout_ms = 3000

[clusters.cloud]
bootstrap = ["{cloud_broker}"]
health_interval_ms = 500

[[routes]]
topics = "dr.*"
cluster = "cloud"

[[routes]]
topics = "*"
cluster = "onprem"
"""

ONPREM_CONFIG = """
[gateway]
listen = "127.0.0.1:{port}"

[admin]
listen = "127.0.0.1:{admin_port}"

[tunnel]
connect = ["{tunnel}"]
server_name = "localhost"
cert = "{certs}/{name}.pem"
key = "{certs}/{name}-key.pem"
ca = "{certs}/{ca}.pem"
expose = ["onprem"]
keep_alive_ms = 500
idle_timeout_ms = 3000
backoff_max_ms = 1000
{extra}

[clusters.onprem]
bootstrap = ["{onprem_broker}"]
"""

_names = iter(range(10_000))


def name(tag: str) -> str:
    return f"{tag}-{next(_names)}"


@pytest.fixture(scope="module")
def bridge():
    why = netns.missing()
    if why is not None:
        pytest.skip(f"hybrid bridge tests: {why}")
    sites = netns.Sites()
    certs = Path(tempfile.mkdtemp(prefix="causeway-bridge-"))
    make_ca(certs, "ca")
    make_ca(certs, "evil")
    make_cert(certs, "cloud", "/O=Causeway Tests/CN=cloud-gw", "ca", server=True)
    make_cert(certs, "onprem-a", "/O=Causeway Tests/CN=onprem-a", "ca")
    make_cert(certs, "intruder", "/O=Causeway Tests/CN=intruder", "ca")
    make_cert(certs, "forged", "/O=Causeway Tests/CN=onprem-a", "evil")
    started = []

    def start(ns, label, args, env=None):
        p = Process(label, sites.exec(ns, *args), env=env)
        started.append(p)
        return p

    def tansu(ns, addr, cluster_id):
        url = f"tcp://{addr}"
        p = start(ns, f"tansu-{cluster_id}", [str(tansu_bin()), "broker", "--cluster-id", cluster_id,
                                               "--listener-url", url, "--advertised-listener-url", url,
                                               "--storage-engine", "memory://tansu/"],
                  env={"RUST_LOG": "warn"})
        host, port = addr.split(":")
        sites.wait_port(ns, host, int(port), process=p)
        return p

    def gateway(ns, label, text, port_host, port):
        f = certs / f"{label}.toml"
        f.write_text(text)
        p = start(ns, label, [str(causeway_bin()), "run", "--config", str(f)], env={"CAUSEWAY_LOG": "info"})
        sites.wait_port(ns, port_host, port, process=p)
        return p

    try:
        tansu(sites.onprem, ONPREM_BROKER, "onprem")
        tansu(sites.cloud, CLOUD_BROKER, "cloud")
        cloud = gateway(sites.cloud, "cloud", CLOUD_CONFIG.format(
            cloud_host=CLOUD_HOST_SIDE_IP, tunnel=TUNNEL, certs=certs, peer=PEER,
            onprem_broker=ONPREM_BROKER, cloud_broker=CLOUD_BROKER), CLOUD_HOST_SIDE_IP, 9092)
        onprem = gateway(sites.onprem, "onprem", onprem_config(certs, "onprem-a", "ca", 9092),
                         "127.0.0.1", 9092)

        class Bridge:
            pass

        b = Bridge()
        b.sites, b.certs, b.start, b.gateway = sites, certs, start, gateway
        b.cloud, b.onprem = cloud, onprem
        b.addr = f"{CLOUD_HOST_SIDE_IP}:9092"
        b.admin = f"{CLOUD_HOST_SIDE_IP}:9644"
        wait_for(lambda: ready(b), 30, "the cloud gateway to reach both clusters")
        yield b
    finally:
        for p in reversed(started):
            p.close()
        sites.close()


def onprem_config(certs, cert, ca, port, extra=""):
    return ONPREM_CONFIG.format(tunnel=TUNNEL, certs=certs, name=cert, ca=ca, port=port,
                                admin_port=port + 552, onprem_broker=ONPREM_BROKER, extra=extra)


def ready(b) -> bool:
    status, body, _ = admin_call(b, "GET", "/readyz")
    return status == 200 and body.get("ready") is True and body.get("degraded") is False


def tunnel_status(b, ns=None, admin=None) -> dict:
    """`causeway tunnel status --json`, run where the gateway's admin endpoint is."""
    args = [str(causeway_bin()), "tunnel", "status", "--json", "--admin", admin or b.admin]
    if ns is not None:
        args = b.sites.exec(ns, *args)
    r = subprocess.run(args, capture_output=True, text=True, timeout=20, check=True)
    return json.loads(r.stdout)


def onprem_create_topic(b, topic, partitions):
    subprocess.run(b.sites.exec(b.sites.onprem, str(tansu_bin()), "topic", "create", topic, "--partitions",
                                str(partitions), "--broker", f"tcp://{ONPREM_BROKER}"),
                   check=True, capture_output=True, timeout=30)


def onprem_produce(b, topic, partition, values: list[str]):
    """kcat, inside the onprem namespace, through the on-prem Causeway (Debian's
    kcat cannot read tansu's own ApiVersions answer)."""
    r = subprocess.run(b.sites.exec(b.sites.onprem, kcat(), "-b", ONPREM_LOCAL, "-P", "-t", topic, "-p",
                                    str(partition), "-z", "gzip"),
                       input="\n".join(values) + "\n", text=True, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr


def onprem_read(b, topic, partition, count) -> list[tuple[int, str]]:
    """(offset, value) read by kcat inside the onprem namespace, on-prem."""
    r = subprocess.run(b.sites.exec(b.sites.onprem, kcat(), "-b", ONPREM_LOCAL, "-C", "-t", topic, "-p",
                                    str(partition), "-o", "beginning", "-c", str(count), "-e", "-f", "%o %s\\n"),
                       check=True, capture_output=True, text=True, timeout=60)
    return [(int(o), v) for o, v in (line.split(" ", 1) for line in r.stdout.splitlines())]


def test_the_cloud_cannot_dial_onprem_yet_reads_and_writes_through_the_tunnel(bridge):
    b = bridge
    # The broker is there (onprem reaches it), but a direct connection from the
    # cloud side is dropped by the firewall.
    assert b.sites.can_connect(b.sites.onprem, ONPREM_IP, 19092)
    dropped = b.sites.dropped()
    assert not b.sites.can_connect(b.sites.cloud, ONPREM_IP, 19092, timeout=2)
    assert b.sites.dropped() > dropped

    topic = name("orders")
    onprem_create_topic(b, topic, 2)
    values = [f"onprem-{i}" for i in range(300)]
    onprem_produce(b, topic, 0, values)

    # A cloud client reads the on-prem topic through the cloud gateway.
    got = read_partition(b.addr, topic, 0)
    assert [(o, v) for o, _, v, _ in got] == [(i, v.encode()) for i, v in enumerate(values)]
    # ... with a second client library too.
    assert [(o, v) for o, _, v, _ in consume_kafka_python(b.addr, topic, 0, 300)][-1] == (299, b"onprem-299")

    # A cloud client writes to the on-prem topic; the records land on-prem.
    produce_confluent(b.addr, topic, records(50, "cloud"), codec="lz4", partition=1)
    landed = onprem_read(b, topic, 1, 50)
    assert [o for o, _ in landed] == list(range(50))
    assert [v for _, v in landed] == [v.decode() for _, v, _ in records(50, "cloud")]

    # Both sides show the connections; the cloud side names the peer by its certificate.
    cloud = tunnel_status(b)
    assert cloud["role"] == "cloud"
    peers = {c["peer"] for c in cloud["connections"]}
    assert peers == {PEER}
    assert all(c["state"] == "connected" and c["clusters"] == ["onprem"] for c in cloud["connections"])
    assert len(cloud["connections"]) == 2  # `connections` defaults to 2
    onprem = tunnel_status(b, ns=b.sites.onprem, admin="127.0.0.1:9644")
    assert onprem["role"] == "on-prem"
    assert [c["state"] for c in onprem["connections"]] == ["connected", "connected"]
    assert all(c["rtt_ms"] is not None for c in onprem["connections"])

    metrics = metrics_of(b)
    assert metrics.get(f'causeway_tunnel_streams_total{{cluster="onprem",outcome="ok"}}', 0) >= 1
    assert any(k.startswith("causeway_tunnel_rtt_seconds{") for k in metrics)
    assert any(k.startswith(f'causeway_tunnel_received_bytes_total{{peer="{PEER}"') and v > 0 for k, v in metrics.items())


def metrics_of(b) -> dict[str, float]:
    status, _, text = admin_call(b, "GET", "/metrics")
    assert status == 200
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def mirrored_to(b, mirror) -> dict[int, int]:
    status, body, text = admin_call(b, "GET", f"/mirrors/{mirror}")
    assert status == 200, text
    return {p["partition"]: p["mirrored_to"] for p in body["partitions"]}, body["state"]


def test_a_mirror_over_the_tunnel_survives_a_cut_link_with_nothing_lost_or_repeated(bridge):
    b = bridge
    status, _, text = admin_call(b, "POST", "/links", {
        "name": "bridge", "source": "onprem", "destination": "cloud",
        "config": {"cluster.link.prefix": "dr."},
    })
    assert status == 201, text
    topic = name("events")
    onprem_create_topic(b, topic, 2)
    for p in (0, 1):
        onprem_produce(b, topic, p, [f"before-{p}-{i}" for i in range(400)])
    status, body, text = admin_call(b, "POST", "/mirrors", {"topic": topic, "link": "bridge"})
    assert status == 201, text
    mirror = body["name"]
    wait_for(lambda: mirrored_to(b, mirror) == ({0: 400, 1: 400}, "ACTIVE"), 60, "the first records mirrored")

    # The WAN goes away for longer than the idle timeout: the connections die.
    b.sites.link(up=False)
    try:
        for p in (0, 1):
            onprem_produce(b, topic, p, [f"during-{p}-{i}" for i in range(300)])
        wait_for(lambda: tunnel_status(b)["connections"] == [], 15, "the cloud side to see the connections gone")
        time.sleep(2)
    finally:
        b.sites.link(up=True)
    for p in (0, 1):
        onprem_produce(b, topic, p, [f"after-{p}-{i}" for i in range(100)])

    # The on-prem side dials again by itself, and the mirror catches up.
    wait_for(lambda: len(tunnel_status(b)["connections"]) == 2, 30, "the on-prem side to reconnect")
    wait_for(lambda: mirrored_to(b, mirror) == ({0: 800, 1: 800}, "ACTIVE"), 90, "the mirror to catch up")

    # Every record exactly once, at its source offset.
    source = read_partitions(b.addr, topic, [0, 1])
    copy = read_partitions(b.addr, mirror, [0, 1])
    for p in (0, 1):
        assert len(source[p]) == 800
        assert copy[p] == source[p], f"partition {p} differs"
        values = [v.decode() for _, _, v, _ in copy[p]]
        assert values[400] == f"during-{p}-0" and values[-1] == f"after-{p}-99"
    onprem = tunnel_status(b, ns=b.sites.onprem, admin="127.0.0.1:9644")
    assert sum(c["reconnects"] for c in onprem["connections"]) >= 2
    assert metrics_of(b).get(f'causeway_tunnel_peers_refused_total{{reason="identity"}}', 0) == 0


def test_clients_ride_out_a_cut_link_with_nothing_lost_or_repeated(bridge):
    """An idempotent producer and a consumer, both in the cloud, keep going
    through the cloud gateway while the WAN is down for several seconds."""
    import threading

    from confluent_kafka import Consumer, Producer, TopicPartition

    b = bridge
    topic = name("flaky")
    onprem_create_topic(b, topic, 1)
    total = 1500
    producer = Producer({"bootstrap.servers": b.addr, "enable.idempotence": True, "linger.ms": 5,
                         "message.timeout.ms": 120000})
    delivered, errors = [], []

    def report(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered.append((int(msg.value()[1:]), msg.offset()))

    received = []
    stop = threading.Event()

    def consume():
        c = Consumer({"bootstrap.servers": b.addr, "group.id": name("reader"), "enable.auto.commit": False,
                      "fetch.wait.max.ms": 100})
        c.assign([TopicPartition(topic, 0, 0)])
        try:
            while not stop.is_set() and len(received) < total:
                m = c.poll(0.2)
                if m is not None and not m.error():
                    received.append((m.offset(), m.value()))
        finally:
            c.close()

    reader = threading.Thread(target=consume)
    reader.start()
    try:
        for i in range(total):
            producer.produce(topic, value=f"r{i}".encode(), partition=0, on_delivery=report)
            producer.poll(0)
            if i == total // 3:
                b.sites.link(up=False)
                cut = time.monotonic()
            if i == 2 * total // 3:
                # Keep the link down for several seconds in all.
                time.sleep(max(0.0, 6 - (time.monotonic() - cut)))
                b.sites.link(up=True)
            time.sleep(0.002)
        assert producer.flush(120) == 0
        reader.join(90)
    finally:
        b.sites.link(up=True)
        stop.set()
        reader.join(10)
    assert not errors, errors
    # Every record once, in order, at consecutive offsets: on-prem and as read from the cloud.
    want = [(i, f"r{i}".encode()) for i in range(total)]
    # Each record reported once, at its own offset. A batch whose answer was
    # lost with the link is sent again by the client; the broker knows its
    # sequence and answers DUPLICATE_SEQUENCE_NUMBER with base offset -1, which
    # librdkafka reports as delivered and numbers from there: -1 (None), 0, 1...
    # The reads below place those records.
    delivered.sort()
    assert [i for i, _ in delivered] == list(range(total))
    wrong, dup_start = [], None
    for i, o in delivered:
        if o is None:
            dup_start = i
        elif o != i and (dup_start is None or o != i - dup_start - 1):
            wrong.append((i, o))
    assert wrong == []
    assert received == want
    assert [(o, v.encode()) for o, v in onprem_read(b, topic, 0, total)] == want


def test_a_second_onprem_gateway_shares_the_streams_and_drains_on_shutdown(bridge):
    b = bridge
    port = 9392
    second = b.gateway(b.sites.onprem, "onprem-b", onprem_config(b.certs, "onprem-a", "ca", port,
                                                                 extra="drain_timeout_ms = 1500"), "127.0.0.1", port)
    try:
        wait_for(lambda: len(tunnel_status(b)["connections"]) == 4, 20, "four connections from two on-prem gateways")
        assert len({c["remote"] for c in tunnel_status(b)["connections"]}) == 2
        topic = name("shared")
        onprem_create_topic(b, topic, 3)
        for p in range(3):
            onprem_produce(b, topic, p, [f"{p}-{i}" for i in range(100)])
        # Reading partitions on fresh connections spreads streams over both gateways.
        for _ in range(3):
            assert [len(v) for v in read_partitions(b.addr, topic, [0, 1, 2]).values()] == [100, 100, 100]
        used = [c for c in tunnel_status(b, ns=b.sites.onprem, admin=f"127.0.0.1:{port + 552}")["connections"]]
        assert all(c["state"] == "connected" for c in used)

        # SIGTERM: the cloud side hears it is draining, the gateway leaves within its drain timeout.
        t0 = time.monotonic()
        second.proc.terminate()
        second.proc.wait(timeout=10)
        assert second.proc.returncode == 0
        assert time.monotonic() - t0 < 6
        wait_for(lambda: "tunnel peer draining" in b.cloud.output(), 10, "the cloud side to log the drain")
        wait_for(lambda: len(tunnel_status(b)["connections"]) == 2, 20, "the drained gateway's connections gone")
        # Clients carry on through the first on-prem gateway.
        assert [len(v) for v in read_partitions(b.addr, topic, [0, 1, 2]).values()] == [100, 100, 100]
    finally:
        second.close()


def fetch_frame(topic: str, partition: int, offset: int, max_wait_ms: int) -> bytes:
    """Fetch v4 (sessionless): one partition from `offset`, long-polling up to max_wait_ms."""
    name = topic.encode()
    body = struct.pack(">iiiib", -1, max_wait_ms, 1, 1 << 20, 0)
    body += struct.pack(">ih", 1, len(name)) + name
    body += struct.pack(">iiqi", 1, partition, offset, 1 << 20)
    payload = struct.pack(">hhih", 1, 4, 7, 5) + b"tests" + body
    return struct.pack(">i", len(payload)) + payload


def fetch_answer(s: socket.socket) -> tuple[int, int, bytes]:
    """(error code, base offset of the first batch or -1, record bytes) of a Fetch v4 answer."""
    frame = read_frame(s)
    at = 4 + 4 + 4  # correlation id, throttle time, topic count
    (n,) = struct.unpack_from(">h", frame, at)
    at += 2 + n + 4  # topic name, partition count
    _, error, _, _ = struct.unpack_from(">ihqq", frame, at)
    at += 22
    (aborted,) = struct.unpack_from(">i", frame, at)
    at += 4 + max(aborted, 0) * 16
    (length,) = struct.unpack_from(">i", frame, at)
    recs = frame[at + 4:at + 4 + max(length, 0)]
    base = struct.unpack_from(">q", recs)[0] if len(recs) >= 8 else -1
    return error, base, recs


def test_reads_and_idempotent_writes_in_flight_on_a_lost_connection_are_sent_again(bridge):
    """An on-prem gateway dies with long-poll fetches in flight on its
    connections: the cloud side sends them again over the other gateway's, and
    every client gets its records, not an error."""
    b = bridge
    port = 9392
    second = b.gateway(b.sites.onprem, "onprem-b", onprem_config(b.certs, "onprem-a", "ca", port),
                       "127.0.0.1", port)
    sockets = []
    try:
        wait_for(lambda: len(tunnel_status(b)["connections"]) == 4, 20, "four connections from two on-prem gateways")
        topic = name("lost")
        onprem_create_topic(b, topic, 1)
        onprem_produce(b, topic, 0, [f"before-{i}" for i in range(5)])
        resent = lambda outcome: metrics_of(b).get(  # noqa: E731
            f'causeway_backend_resends_total{{cluster="onprem",outcome="{outcome}"}}', 0)
        before = resent("answered"), resent("failed")
        # More sessions than the idle pool holds: new streams, spread over all four connections.
        host, cport = b.addr.split(":")
        for _ in range(40):
            s = socket.create_connection((host, int(cport)), timeout=5)
            s.settimeout(30)
            s.sendall(fetch_frame(topic, 0, 5, 10_000))
            sockets.append(s)
        time.sleep(1.5)
        busy = sum(c["open_streams"] for c in tunnel_status(b, ns=b.sites.onprem,
                                                       admin=f"127.0.0.1:{port + 552}")["connections"])
        assert busy > 0, "no stream went through the second gateway"

        second.proc.kill()  # no goodbye: the cloud side finds out at the idle timeout
        second.proc.wait(timeout=10)
        produce_confluent(b.addr, topic, records(1, "after-the-loss"),
                          extra={"enable.idempotence": True, "message.timeout.ms": 30000})
        answers = [fetch_answer(s) for s in sockets]
        assert [(e, base) for e, base, _ in answers] == [(0, 5)] * len(sockets)
        assert all(b"value-after-the-loss-0-" in recs for _, _, recs in answers)
        assert resent("answered") > before[0], "no request was sent again"
        assert resent("failed") == before[1]
        # Nothing written twice: the record is there once, at offset 5.
        assert [v for _, v in onprem_read(b, topic, 0, 6)][5] == "value-after-the-loss-0-"
        assert len(onprem_read(b, topic, 0, 100)) == 6
    finally:
        for s in sockets:
            s.close()
        second.close()


@pytest.mark.parametrize("cert,ca,reason", [("forged", "ca", "handshake"), ("intruder", "ca", "identity")])
def test_a_peer_with_a_wrong_certificate_gets_nothing(bridge, cert, ca, reason):
    """`forged` claims the right name under another CA; `intruder` has a good
    certificate whose identity is not in [[tunnel.peers]]."""
    b = bridge
    # The forged certificate's key is the forger's; the CA it trusts is fine.
    port = 9192 if cert == "forged" else 9292
    key = f'causeway_tunnel_peers_refused_total{{reason="{reason}"}}'
    before = metrics_of(b).get(key, 0)
    rogue = b.gateway(b.sites.onprem, f"rogue-{cert}", onprem_config(b.certs, cert, ca, port), "127.0.0.1", port)
    try:
        wait_for(lambda: metrics_of(b).get(key, 0) >= before + 2, 20, f"the cloud side to refuse {cert}")
        status = tunnel_status(b, ns=b.sites.onprem, admin=f"127.0.0.1:{port + 552}")
        assert all(c["state"] != "connected" for c in status["connections"])
        assert all(c["last_error"] for c in status["connections"])
        # The cloud side still lists only the real peer.
        assert {c["peer"] for c in tunnel_status(b)["connections"]} == {PEER}
    finally:
        rogue.close()
    assert "tunnel peer refused" in b.cloud.output()


def refused(b, reason) -> float:
    return metrics_of(b).get(f'causeway_tunnel_peers_refused_total{{reason="{reason}"}}', 0)


def test_a_handshake_flood_gets_stateless_retries_and_the_real_peer_keeps_working(bridge):
    """Sixteen connections with an accepted certificate that never say hello hold
    every handshake slot; the next ones must first prove their address with a
    stateless retry, then still connect, and the registered peer carries on."""
    b = bridge
    retries = refused(b, "retry")
    silent = lambda: refused(b, "hello") + refused(b, "timeout")  # noqa: E731
    before = silent()
    topic = name("flood")
    onprem_create_topic(b, topic, 1)
    onprem_produce(b, topic, 0, ["during the flood"])
    flood = subprocess.Popen(
        b.sites.exec(b.sites.onprem, sys.executable, str(Path(__file__).with_name("quic_flood.py")),
                     CLOUD_IP, "4433", str(b.certs / "onprem-a.pem"), str(b.certs / "onprem-a-key.pem"),
                     str(b.certs / "ca.pem"), "16", "4", "2"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The peer that said hello is untouched while the flood holds the slots.
        wait_for(lambda: refused(b, "retry") - retries >= 4, 20, "four stateless retries")
        assert [(o, v) for o, _, v, _ in read_partition(b.addr, topic, 0)] == [(0, b"during the flood")]
        out, err = flood.communicate(timeout=60)
    finally:
        flood.kill()
    assert flood.returncode == 0, err
    result = json.loads(out)
    # Retried is not refused: the later wave proved its address and connected.
    assert result == {"connected": {"first": 16, "then": 4}, "errors": []}
    # None of them ever became a peer; each is refused for saying no hello.
    assert len(tunnel_status(b)["connections"]) == 2
    wait_for(lambda: silent() - before == 20, 30, "the silent connections refused")


def test_a_peer_may_expose_only_the_clusters_its_identity_allows(bridge):
    """onprem-a may expose "onprem" only. A gateway with its certificate that offers
    "cloud" (the cloud side's own cluster's name) is refused and never a peer."""
    b = bridge
    port = 9492
    before = refused(b, "clusters")
    text = onprem_config(b.certs, "onprem-a", "ca", port).replace(
        'expose = ["onprem"]', 'expose = ["cloud"]').replace("[clusters.onprem]", "[clusters.cloud]")
    rogue = b.gateway(b.sites.onprem, "onprem-hijack", text, "127.0.0.1", port)
    try:
        wait_for(lambda: refused(b, "clusters") > before, 20, "the cloud side to refuse the cluster")
        assert "may not expose this cluster" in b.cloud.output()
        assert "the cloud side refused to take this cluster" in rogue.output()
        status = tunnel_status(b)["connections"]
        assert len(status) == 2 and all(c["clusters"] == ["onprem"] for c in status)
    finally:
        rogue.close()


def test_tunnel_config_mistakes_are_named():
    certs = Path(tempfile.mkdtemp(prefix="causeway-bridge-check-"))
    make_ca(certs, "ca")
    make_cert(certs, "gw", "/O=Causeway Tests/CN=gw", "ca", server=True)
    head = '[gateway]\nlisten = "127.0.0.1:9092"\n[clusters.local]\nbootstrap = ["127.0.0.1:19092"]\n'
    both = head + f'[tunnel]\nlisten = "0.0.0.0:4433"\nconnect = ["c:4433"]\ncert = "{certs}/gw.pem"\nkey = "{certs}/gw-key.pem"\n'
    r = causeway_check(both)
    assert r.returncode == 1 and "tunnel.connect: a gateway is either the on-prem side" in r.stderr, r.stderr
    onprem = head + (f'[tunnel]\nconnect = ["cloud:4433"]\ncert = "{certs}/gw.pem"\nkey = "{certs}/nope.pem"\n'
                     f'ca = "{certs}/ca.pem"\nexpose = ["local", "ghost"]\nkeep_alive_ms = 40000\n')
    r = causeway_check(onprem)
    assert r.returncode == 1
    for want in ("tunnel.expose: 'ghost' is not a cluster here", "tunnel.key: cannot read a PEM private key",
                 "tunnel.keep_alive_ms: 40000 is not below idle_timeout_ms"):
        assert want in r.stderr, r.stderr
    cloud = head + (f'[tunnel]\nlisten = "0.0.0.0:4433"\ncert = "{certs}/gw.pem"\nkey = "{certs}/gw-key.pem"\n'
                    '[clusters.remote]\nbootstrap = ["10.0.0.5:9092"]\ntunnel = true\n')
    r = causeway_check(cloud)
    assert r.returncode == 1
    for want in ("tunnel.client_ca: required on the cloud side", "tunnel.peers: no peer may connect",
                 "clusters.remote.tunnel: no [[tunnel.peers]] may expose 'remote'"):
        assert want in r.stderr, r.stderr


def test_the_example_bridge_configs_are_valid():
    """config/bridge/{onprem,cloud}.toml check clean once their certificates exist."""
    root = Path(__file__).resolve().parent.parent
    work = Path(tempfile.mkdtemp(prefix="causeway-bridge-example-"))
    certs = work / "certs"
    certs.mkdir()
    make_ca(certs, "bridge-ca")
    make_cert(certs, "cloud", "/O=Acme/CN=cloud-gw.example.com", "bridge-ca", server=True)
    make_cert(certs, "onprem", "/O=Acme/CN=onprem-a", "bridge-ca")
    for side in ("onprem", "cloud"):
        config = work / f"{side}.toml"
        config.write_text((root / "config" / "bridge" / f"{side}.toml").read_text())
        r = subprocess.run([str(causeway_bin()), "check", "--config", str(config)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
