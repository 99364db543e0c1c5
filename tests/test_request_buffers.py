"""Request buffers: a large request is read into one buffer of its declared
size while `gateway.request_buffer_max_bytes` has room across all connections,
and the room comes back when the request has arrived or its client has gone.
Past the budget a request's buffer grows with the bytes received, so a client
that only declares a length never sets memory aside. Either way, every record
reaches the broker with its bytes."""

import socket
import struct

import pytest

from clients import consume_confluent, produce_confluent
from rig import Gateway, read_frame, wait_for

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


def metadata_frame(size: int, correlation_id: int) -> bytes:
    """A Metadata v0 request for every topic, padded to `size` bytes after
    its length prefix (the body's reader stops at its last field)."""
    client_id = b"trickle"
    body = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id + struct.pack(">i", 0)
    return struct.pack(">i", size) + body + b"\x00" * (size - len(body))


def start_a_request(gw: Gateway, declared: int = DECLARED) -> tuple[socket.socket, bytes]:
    """A frame declaring `declared` bytes, of which SENT are sent; the rest is returned."""
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    frame = metadata_frame(declared, 1)
    s.sendall(frame[:SENT])
    return s, frame[SENT:]


def vm_data_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1])
    raise AssertionError("no VmData")


def test_a_request_holds_its_declared_size_until_it_has_arrived(backend):
    gw = gateway_with(backend, None)
    try:
        s, rest = start_a_request(gw)
        # All of it that had not arrived when its buffer was made.
        wait_for(lambda: DECLARED + 4 - SENT <= reserved(gw) <= DECLARED + 4, 10, "the request's buffer set aside")
        # The rest, and a second request behind it: both answered, in order,
        # and the reservation given back while the connection stays open.
        s.sendall(rest + metadata_frame(64, 2))
        assert struct.unpack(">i", read_frame(s)[:4]) == (1,)
        assert struct.unpack(">i", read_frame(s)[:4]) == (2,)
        assert reserved(gw) == 0
        s.close()
    finally:
        gw.close()


def test_a_request_given_up_gives_its_reservation_back(backend):
    gw = gateway_with(backend, None)
    try:
        s, _ = start_a_request(gw)
        wait_for(lambda: reserved(gw) > 0, 10, "the request's buffer set aside")
        s.close()
        wait_for(lambda: reserved(gw) == 0, 10, "the reservation given back")
    finally:
        gw.close()


def test_declared_lengths_past_a_share_of_the_budget_set_no_memory_aside(backend):
    # 64 MiB declared on each of four connections, against a 1 MiB budget:
    # the gateway's memory grows with what was sent, not what was declared.
    gw = gateway_with(backend, 1 << 20)
    try:
        pid = gw.process.pid()
        before = vm_data_kib(pid)
        received = gw.metrics().get("causeway_client_bytes_received_total", 0)
        sockets = [start_a_request(gw, 64 << 20)[0] for _ in range(4)]
        wait_for(lambda: gw.metrics().get("causeway_client_bytes_received_total", 0) >= received + 4 * SENT, 10,
                 "the bytes read")
        assert reserved(gw) == 0
        grown_mib = (vm_data_kib(pid) - before) / 1024
        assert grown_mib < 64, f"the gateway's data grew by {grown_mib:.0f} MiB"
        for s in sockets:
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
