"""Clients see Causeway and only Causeway: its node, its address, its leadership.
A recording relay proves no backend address reaches a client in any response."""

import json
import socket
import struct
import subprocess
import threading

from confluent_kafka.admin import AdminClient

from clients import consume_confluent, kafkajs, produce_confluent, records
from rig import Gateway, free_port, kcat


def test_confluent_sees_one_broker_leading_everything(gateway, new_topic):
    topic = new_topic(partitions=3)
    meta = AdminClient({"bootstrap.servers": gateway.addr}).list_topics(timeout=10)
    assert {b.id: (b.host, b.port) for b in meta.brokers.values()} == {0: ("127.0.0.1", gateway.port)}
    assert meta.controller_id == 0
    parts = meta.topics[topic].partitions.values()
    assert sorted(p.id for p in parts) == [0, 1, 2]
    assert all(p.leader == 0 and p.replicas == [0] and p.isrs == [0] for p in parts)


def test_kcat_sees_only_the_gateway(gateway, new_topic):
    topic = new_topic(partitions=2)
    out = subprocess.run([kcat(), "-b", gateway.addr, "-L", "-J", "-t", topic], check=True, capture_output=True, timeout=30)
    meta = json.loads(out.stdout)
    assert [(b["id"], b["name"]) for b in meta["brokers"]] == [(0, f"127.0.0.1:{gateway.port}")]
    assert [p["leader"] for p in meta["topics"][0]["partitions"]] == [0, 0]


def test_aiokafka_and_kafkajs_see_only_the_gateway(gateway):
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def describe():
        admin = AIOKafkaAdminClient(bootstrap_servers=gateway.addr)
        await admin.start()
        try:
            return await admin.describe_cluster()
        finally:
            await admin.close()

    cluster = asyncio.run(describe())
    assert [(b["node_id"], b["host"], b["port"]) for b in cluster["brokers"]] == [(0, "127.0.0.1", gateway.port)]

    js = kafkajs({"op": "cluster", "brokers": [gateway.addr]})
    assert [(b["nodeId"], b["host"], b["port"]) for b in js["brokers"]] == [(0, "127.0.0.1", gateway.port)]
    assert js["controller"] == 0


class RecordingRelay:
    """Forwards TCP to a target and records every byte sent back to the client."""

    def __init__(self, port, target_port):
        self.port = port
        self.target_port = target_port
        self.received = bytearray()
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src, dst, record):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record:
                    with self.lock:
                        self.received += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.server.close()


def test_no_backend_address_in_any_response(backend, new_topic):
    relay_port = free_port()
    gw = Gateway([backend.addr], advertised=f"127.0.0.1:{relay_port}")
    gw.wait_ready()
    relay = RecordingRelay(relay_port, gw.port)
    try:
        addr = f"127.0.0.1:{relay_port}"
        topic = new_topic(partitions=2)
        produce_confluent(addr, topic, records(5, "leak"), partition=1)
        assert len(consume_confluent(addr, topic, 1, 5)) == 5
        AdminClient({"bootstrap.servers": addr}).list_topics(timeout=10)
        subprocess.run([kcat(), "-b", addr, "-L"], check=True, capture_output=True, timeout=30)
        from test_groups import consumer, poll_until

        c = consumer(addr, f"leak-{topic}")
        c.subscribe([topic])
        poll_until({"c": c}, 5, {})
        c.close()
        kafkajs({"op": "cluster", "brokers": [addr]})

        seen = bytes(relay.received)
        assert len(seen) > 1000, "the relay saw the traffic"
        assert struct.pack(">i", backend.port) not in seen, "backend port leaked as an int"
        assert str(backend.port).encode() not in seen, "backend port leaked as text"
        assert struct.pack(">i", relay_port) in seen, "the advertised port is what clients see"
    finally:
        relay.close()
        gw.close()
