"""Request buffers: a large request is read into one buffer of its declared
size while `gateway.request_buffer_max_bytes` has room across all connections,
and the room comes back when the request has arrived or its client has gone.
Past the budget a request's buffer grows with the bytes received, so a client
that only declares a length never sets memory aside. Either way, every record
reaches the broker with its bytes."""

import socket
import struct
import time

import pytest

from clients import consume_confluent, produce_confluent
from rig import Gateway, wait_for

RESERVED = "causeway_request_buffer_bytes_reserved"
DECLARED = 4 << 20
SENT = 256 << 10


def gateway_with(backend, budget: int | None) -> Gateway:
    setting = "" if budget is None else f"request_buffer_max_bytes = {budget}\n"
    config = (
        '[gateway]\nlisten = "{listen}"\n' + setting + '[admin]\nlisten = "{admin}"\n'
        f'[clusters.main]\nbootstrap = ["{backend.addr}"]\n'
    )
    gw = Gateway(config=config)
    gw.wait_ready()
    return gw


def reserved(gw: Gateway) -> float:
    return gw.metrics().get(RESERVED, 0.0)


def start_a_request(gw: Gateway) -> socket.socket:
    """A Produce v9 frame declaring DECLARED bytes, of which SENT are sent."""
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    client_id = b"trickle"
    header = struct.pack(">hhih", 0, 9, 1, len(client_id)) + client_id + b"\x00"
    s.sendall(struct.pack(">i", DECLARED) + header + b"\x00" * (SENT - len(header)))
    return s


def test_a_request_still_arriving_holds_its_declared_size_until_its_client_goes(backend):
    gw = gateway_with(backend, None)
    try:
        s = start_a_request(gw)
        # All of it that had not arrived when its buffer was made.
        wait_for(lambda: DECLARED + 4 - SENT <= reserved(gw) <= DECLARED + 4, 10, "the request's buffer set aside")
        s.close()
        wait_for(lambda: reserved(gw) == 0, 10, "the reservation given back")
    finally:
        gw.close()


def test_past_the_budget_a_declared_length_sets_nothing_aside(backend):
    gw = gateway_with(backend, 1 << 20)
    try:
        s = start_a_request(gw)
        # The gateway has read what was sent: the bytes-received counter moved.
        wait_for(lambda: gw.metrics().get("causeway_client_bytes_received_total", 0) >= SENT, 10, "the bytes read")
        time.sleep(0.3)
        assert reserved(gw) == 0
        assert gw.process.alive()
        s.close()
    finally:
        gw.close()


@pytest.mark.parametrize("budget", [None, 0], ids=["default-budget", "no-budget"])
def test_large_requests_arrive_whole_with_or_without_the_budget(backend, new_topic, budget):
    gw = gateway_with(backend, budget)
    try:
        topic = new_topic()
        # About 300 KiB each, distinct: librdkafka packs up to 1 MB per request.
        sent = [(f"k{i}".encode(), bytes([97 + i % 26]) * (300_000 + i), []) for i in range(12)]
        produce_confluent(gw.addr, topic, sent, extra={"linger.ms": 50})
        got = consume_confluent(gw.addr, topic, 0, len(sent))
        assert [(g[1], g[2]) for g in got] == [(k, v) for k, v, _ in sent]
        assert reserved(gw) == 0
    finally:
        gw.close()
