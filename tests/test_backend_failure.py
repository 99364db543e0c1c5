"""A backend that goes away and comes back: Causeway reports it, clients get errors
promptly instead of hanging, and everything works again once it returns."""

import json
import time

from confluent_kafka import Producer

from clients import consume_confluent, produce_confluent, records
from rig import Gateway, Tansu


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_backend_down_then_back():
    broker = Tansu()
    gw = Gateway([broker.addr])
    try:
        gw.wait_ready()
        broker.create_topic("survivor", 1)
        produce_confluent(gw.addr, "survivor", records(2, "before"))

        port = broker.port
        broker.close()
        wait_for(lambda: gw.get("/readyz")[0] == 503, 10, "/readyz to report the cluster down")
        status, body = gw.get("/readyz")
        assert json.loads(body) == {"ready": False, "degraded": True, "clusters": [{"name": "main", "ready": False}]}
        assert gw.metrics()['causeway_backend_cluster_up{cluster="main"}'] == 0

        # A producer gets a delivery error within its own timeout; nothing hangs.
        p = Producer({"bootstrap.servers": gw.addr, "message.timeout.ms": 3000})
        errors = []
        p.produce("survivor", b"lost", on_delivery=lambda e, m: errors.append(e))
        started = time.monotonic()
        p.flush(15)
        assert time.monotonic() - started < 10
        assert len(errors) == 1 and errors[0] is not None
        assert gw.process.alive()
        del p

        broker = Tansu(port=port)  # empty: tansu keeps data in memory
        wait_for(lambda: gw.get("/readyz")[0] == 200, 15, "/readyz to report the cluster back")
        broker.create_topic("returned", 1)
        sent = records(3, "after")
        produce_confluent(gw.addr, "returned", sent)
        got = consume_confluent(gw.addr, "returned", 0, 3)
        assert [(g[0], g[2]) for g in got] == [(i, v) for i, (_, v, _) in enumerate(sent)]
    finally:
        gw.close()
        broker.close()
