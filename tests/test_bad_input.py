"""Hostile and broken input: each case gets a protocol error or a clean close, the
gateway keeps running, and other clients keep working."""

import socket
import struct
import time

import pytest

from clients import consume_confluent, produce_confluent, records
from rig import read_frame


def connect(gateway):
    s = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
    s.settimeout(5)
    return s


def request(api_key, version, correlation_id, body=b"", client_id=b"bad-input", flexible=False):
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    if flexible:
        header += b"\x00"  # request header v2: no tagged fields
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def assert_closed(s, within=5.0):
    """The gateway closed the connection (read returns EOF or reset) without answering."""
    s.settimeout(within)
    try:
        data = s.recv(1024)
    except ConnectionResetError:
        return
    assert data == b"", f"expected a close, got {data!r}"


def protocol_errors(gateway, kind):
    return gateway.metrics().get(f'causeway_client_protocol_errors_total{{kind="{kind}"}}', 0.0)


@pytest.fixture
def still_works(gateway, new_topic):
    """After each case, a real client can still produce and consume."""
    yield
    assert gateway.process.alive(), gateway.process.output()[-3000:]
    topic = new_topic()
    sent = records(3, "after")
    produce_confluent(gateway.addr, topic, sent)
    got = consume_confluent(gateway.addr, topic, 0, 3)
    assert [(g[1], g[2]) for g in got] == [(k, v) for k, v, _ in sent]


def test_garbage_bytes_close_the_connection(gateway, still_works):
    before = protocol_errors(gateway, "unknown_api")
    s = connect(gateway)
    s.sendall(b"\x00\x00\x00\x10GARBAGE-GARBAGE!")
    assert_closed(s)
    assert protocol_errors(gateway, "unknown_api") == before + 1


def test_oversized_frame_is_refused_before_it_is_read(gateway, still_works):
    before = protocol_errors(gateway, "frame_too_large")
    s = connect(gateway)
    # Declare 2 GiB and send nothing more: the gateway must not wait for or reserve it.
    s.sendall(struct.pack(">i", 0x7FFFFFFF))
    assert_closed(s, within=2.0)
    assert protocol_errors(gateway, "frame_too_large") == before + 1


def test_negative_length_closes(gateway, still_works):
    s = connect(gateway)
    s.sendall(struct.pack(">i", -5) + b"abcd")
    assert_closed(s)


def test_unknown_api_key_closes(gateway, still_works):
    s = connect(gateway)
    s.sendall(request(9999, 0, 1))
    assert_closed(s)


@pytest.mark.parametrize("flexible", [True, False])
def test_unsupported_api_versions_version_gets_error_35_with_the_version_list(gateway, still_works, flexible):
    s = connect(gateway)
    s.sendall(request(18, 99, 77, flexible=flexible))
    frame = read_frame(s)
    correlation_id, error_code = struct.unpack(">ih", frame[:6])
    assert correlation_id == 77
    assert error_code == 35  # UNSUPPORTED_VERSION, in the v0 layout
    (count,) = struct.unpack(">i", frame[6:10])
    keys = [struct.unpack(">hhh", frame[10 + 6 * i : 16 + 6 * i]) for i in range(count)]
    assert (18, 0, 4) in keys
    assert any(k[0] == 0 for k in keys), "Produce is offered"


def test_unsupported_version_of_another_api_closes(gateway, still_works):
    before = protocol_errors(gateway, "unsupported_version")
    s = connect(gateway)
    s.sendall(request(3, 99, 1, flexible=True))  # Metadata v99, well-formed header
    assert_closed(s)
    assert protocol_errors(gateway, "unsupported_version") == before + 1


def test_unoffered_api_closes(gateway, still_works):
    s = connect(gateway)
    s.sendall(request(4, 7, 1))  # LeaderAndIsr: broker-to-broker, never offered
    assert_closed(s)


def test_header_shorter_than_eight_bytes_closes(gateway, still_works):
    s = connect(gateway)
    s.sendall(struct.pack(">i", 3) + b"\x00\x03\x00")
    assert_closed(s)


def test_array_length_bomb_is_an_error_not_an_abort(gateway, still_works):
    # Metadata v0 with a topic array declaring 2^31-1 entries and no data.
    s = connect(gateway)
    s.sendall(request(3, 0, 1, body=struct.pack(">i", 0x7FFFFFFF)))
    assert_closed(s)


def test_malformed_body_closes(gateway, still_works):
    s = connect(gateway)
    s.sendall(request(0, 9, 1, body=b"\xff" * 3))  # Produce v9 with a broken body
    assert_closed(s)


def test_truncated_frame_then_disconnect(gateway, still_works):
    before = protocol_errors(gateway, "truncated_frame")
    s = connect(gateway)
    s.sendall(struct.pack(">i", 100) + b"\x00\x03\x00\x09")
    s.close()
    deadline = time.monotonic() + 5
    while protocol_errors(gateway, "truncated_frame") != before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert protocol_errors(gateway, "truncated_frame") == before + 1


def test_client_vanishing_mid_long_poll(gateway, new_topic, still_works):
    """A client sends a long-poll fetch and disappears before the answer."""
    topic = new_topic()
    s = connect(gateway)
    s.sendall(request(18, 0, 1))
    read_frame(s)
    # Fetch v4: replica -1, max_wait 3000 ms, min_bytes 1, max_bytes 1 MiB,
    # isolation 0, one topic with partition 0 at offset 0.
    name = topic.encode()
    body = struct.pack(">iiiib", -1, 3000, 1, 1 << 20, 0)
    body += struct.pack(">ih", 1, len(name)) + name
    body += struct.pack(">iiqi", 1, 0, 0, 1 << 20)
    s.sendall(request(1, 4, 2, body=body))
    time.sleep(0.2)
    s.close()
    time.sleep(3.5)  # the backend answers after max_wait into a closed session


def test_pipelined_requests_are_answered_in_order(gateway, still_works):
    s = connect(gateway)
    ids = list(range(100, 140))
    blob = b"".join(request(18 if i % 2 else 3, 0, i, body=b"" if i % 2 else struct.pack(">i", 0)) for i in ids)
    s.sendall(blob)
    got = [struct.unpack(">i", read_frame(s)[:4])[0] for _ in ids]
    assert got == ids
