"""Connection limits and the idle timeout, with raw sockets and librdkafka: a
connection over max_connections_per_ip or max_connections is closed at once
and counted, a closed connection frees its place, an idle connection is
closed after idle_timeout_ms, and clients that keep talking are not. And
worker_threads: how many threads serve connections."""

import os
import socket
import time

import pytest
from confluent_kafka import Producer

from clients import read_partition
from rig import Gateway, Tansu, causeway_check, wait_for


@pytest.fixture(scope="module")
def broker():
    b = Tansu()
    yield b
    b.close()


def limited_gateway(broker, limits):
    config = (
        '[gateway]\nlisten = "{listen}"\n' + limits + "\n"
        '[admin]\nlisten = "{admin}"\n'
        f'[clusters.main]\nbootstrap = ["{broker.addr}"]\nhealth_interval_ms = 500\n'
    )
    gw = Gateway(config=config)
    gw.wait_ready()
    # Starting, the rig checks the Kafka port with a connection of its own: it
    # holds a place until the gateway has seen it close.
    wait_for(lambda: gw.metrics().get("causeway_client_connections", 1.0) == 0.0, 10, "the start-up probe to close")
    return gw


def connect(addr):
    host, port = addr.split(":")
    s = socket.create_connection((host, int(port)), timeout=5)
    s.settimeout(0.5)
    return s


def closed_by_peer(s, within=3.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if s.recv(1) == b"":
                return True
        except socket.timeout:
            continue
        except ConnectionResetError:
            return True
    return False


def test_connections_over_the_limits_are_closed_and_places_come_back(broker):
    gw = limited_gateway(broker, "max_connections = 5\nmax_connections_per_ip = 3")
    try:
        held = [connect(gw.addr) for _ in range(3)]
        extra = connect(gw.addr)
        assert closed_by_peer(extra), "a fourth connection from one address is closed"
        assert not any(closed_by_peer(s, within=0.5) for s in held), "the first three stay open"
        held.pop().close()
        time.sleep(0.5)  # the gateway sees the close
        again = connect(gw.addr)
        assert not closed_by_peer(again, within=1.0), "a closed connection frees its place"
        m = gw.metrics()
        assert m['causeway_client_connections_refused_total{limit="max_connections_per_ip"}'] >= 1
        for s in held + [again, extra]:
            s.close()
    finally:
        gw.close()
    # The total limit: 127.0.0.2 is another address on the loopback device.
    gw = limited_gateway(broker, "max_connections = 2")
    try:
        a = connect(gw.addr)
        host, port = gw.addr.split(":")
        b = socket.create_connection((host, int(port)), timeout=5, source_address=("127.0.0.2", 0))
        b.settimeout(0.5)
        c = connect(gw.addr)
        assert closed_by_peer(c)
        assert not closed_by_peer(a, within=0.5) and not closed_by_peer(b, within=0.5)
        assert gw.metrics()['causeway_client_connections_refused_total{limit="max_connections"}'] >= 1
        for s in (a, b, c):
            s.close()
    finally:
        gw.close()


def test_idle_connections_are_closed_and_busy_ones_are_not(broker):
    broker.create_topic("limits.busy", 1)
    gw = limited_gateway(broker, "idle_timeout_ms = 1500")
    try:
        quiet = connect(gw.addr)
        started = time.monotonic()
        assert closed_by_peer(quiet, within=6.0), "an idle connection is closed"
        assert time.monotonic() - started >= 1.2, "not before its time"
        wait_for(lambda: gw.metrics().get("causeway_client_idle_closed_total", 0) >= 1, 5, "idle close counted")
        # A producer sending every 0.5 s for 4 s keeps its connection.
        p = Producer({"bootstrap.servers": gw.addr, "linger.ms": 0})
        for i in range(8):
            p.produce("limits.busy", value=str(i).encode(), partition=0)
            p.flush(10)
            time.sleep(0.5)
        assert [v for _, _, v, _ in read_partition(broker.addr, "limits.busy", 0)] == [str(i).encode() for i in range(8)]
        assert gw.metrics()["causeway_client_connections_accepted_total"] <= 4, "no reconnects while busy"
    finally:
        gw.close()


def test_limit_mistakes_are_reported_by_check():
    r = causeway_check('[gateway]\nlisten = "127.0.0.1:0"\nmax_connections = 0\nmax_connections_per_ip = 0\n'
                       'idle_timeout_ms = 10\nworker_threads = 0\n[clusters.main]\nbootstrap = ["127.0.0.1:9"]\n')
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    for field in ("gateway.max_connections:", "gateway.max_connections_per_ip", "gateway.idle_timeout_ms",
                  "gateway.worker_threads: 0 is outside 1..=1024"):
        assert field in out, out


def worker_threads(pid: int) -> int:
    """Threads of `pid` that tokio's runtime runs connections on (as `ps -L` names them)."""
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            names.append(f.read().strip())
    return names.count("tokio-rt-worker")


def test_worker_threads_sets_the_threads_serving_connections(broker):
    broker.create_topic("limits.workers", 1)
    default = limited_gateway(broker, "")
    one = limited_gateway(broker, "worker_threads = 1")
    three = limited_gateway(broker, "worker_threads = 3")
    try:
        assert worker_threads(default.process.pid()) == len(os.sched_getaffinity(default.process.pid()))
        assert worker_threads(one.process.pid()) == 1
        assert worker_threads(three.process.pid()) == 3
        # One thread still serves producers and consumers on several connections.
        producers = [Producer({"bootstrap.servers": one.addr, "linger.ms": 0}) for _ in range(3)]
        for i in range(30):
            producers[i % 3].produce("limits.workers", value=str(i).encode(), partition=0)
        for p in producers:
            assert p.flush(10) == 0
        got = sorted(int(v) for _, _, v, _ in read_partition(one.addr, "limits.workers", 0))
        assert got == list(range(30))
    finally:
        for gw in (default, one, three):
            gw.close()
