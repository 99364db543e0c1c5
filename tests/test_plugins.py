"""WebAssembly record filters in the gateway, with real components built from
plugins/ (scripts/build-plugins.sh) and real clients: PII masked before it reaches
the backend, batches rejected with the plugin's message, fetch answers filtered,
plugins that loop, eat memory or panic contained, a plugin swapped while a
producer stays connected, and the other verdicts: an array fanned out into one
record per element, records replaced with stamped headers."""

import json
import shutil
import tempfile
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from clients import consume_kafka_python, read_partition
from rig import Gateway, Tansu, plugin_component, wait_for

MASK_CONFIG = json.dumps({"fields": ["email", "ssn"], "mask": "***"})


def gateway_with(broker, plugins, extra_env=None):
    """A Causeway in front of `broker` running `plugins` ([[plugins]] tables as dicts)."""
    lines = [
        "[gateway]", 'listen = "{listen}"', "[admin]", 'listen = "{admin}"',
        "[clusters.main]", f'bootstrap = ["{broker.addr}"]', "health_interval_ms = 500",
    ]
    for p in plugins:
        lines.append("[[plugins]]")
        for k, v in p.items():
            lines.append(f"{k} = {json.dumps(v)}")
    text = "\n".join(lines).replace("{", "{{").replace("}", "}}")
    text = text.replace("{{listen}}", "{listen}").replace("{{admin}}", "{admin}")
    gw = Gateway(config=text, extra_env=extra_env)
    gw.wait_ready()
    return gw


def deliver(addr, topic, values, headers=None, **conf):
    """Produces `values` to partition 0; the delivery error of each (None if ok)."""
    p = Producer({"bootstrap.servers": addr, "linger.ms": 0, "message.timeout.ms": 10000, **conf})
    errors = []
    for v in values:
        p.produce(topic, value=v, partition=0, headers=headers, on_delivery=lambda e, m: errors.append(e))
    assert p.flush(20) == 0
    return errors


@pytest.fixture(scope="module")
def broker():
    b = Tansu()
    yield b
    b.close()


def test_pii_is_masked_before_it_reaches_the_backend(broker):
    broker.create_topic("users.masked", 1)
    broker.create_topic("other.raw", 1)
    gw = gateway_with(broker, [{
        "name": "pii", "kind": "record-filter", "path": plugin_component("pii-mask"),
        "config": MASK_CONFIG, "topics": "users.*",
    }])
    try:
        doc = json.dumps({"name": "ada", "email": "ada@example.com", "ssn": "123-45-6789"}).encode()
        plain = b"not json at all"
        # Kafka allows a header key to repeat; a masked record keeps them all.
        headers = [("trace", b"a"), ("trace", b"b"), ("empty", None)]
        assert deliver(gw.addr, "users.masked", [doc, plain], headers=headers) == [None, None]
        assert deliver(gw.addr, "other.raw", [doc]) == [None]
        stored = read_partition(broker.addr, "users.masked", 0)
        masked = json.loads(stored[0][2])
        assert masked == {"name": "ada", "email": "***", "ssn": "***"}
        assert [(k, v) for k, v in stored[0][3]] == headers
        assert stored[1][2] == plain, "records the plugin passes keep their bytes"
        assert read_partition(broker.addr, "other.raw", 0)[0][2] == doc, "out of scope: untouched"
        m = gw.metrics()
        assert m['causeway_plugin_calls_total{plugin="pii"}'] >= 1
        assert m['causeway_plugin_changed_batches_total{direction="produce"}'] >= 1
        # The plugin's own counters, kept through the host interface.
        assert m['causeway_plugin_counter_total{plugin="pii",name="records_masked"}'] == 1
        assert m['causeway_plugin_counter_total{plugin="pii",name="values_masked"}'] == 2
        # Records by the plugin's verdict: the JSON one changed, the other passed.
        assert m['causeway_plugin_records_total{plugin="pii",verdict="changed"}'] == 1
        assert m['causeway_plugin_records_total{plugin="pii",verdict="passed"}'] == 1
    finally:
        gw.close()


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_masked_batches_keep_codec_order_and_idempotence(broker, codec):
    # Masking rewrites the batch's bytes: each record keeps its key, headers
    # and place in every codec, and an idempotent producer's sequence numbers
    # still line up with what the broker expects (its second send follows on).
    topic = f"users.codec-{codec}"
    broker.create_topic(topic, 1)
    gw = gateway_with(broker, [{
        "name": "pii", "kind": "record-filter", "path": plugin_component("pii-mask"),
        "config": MASK_CONFIG, "topics": "users.*",
    }])
    try:
        docs = [
            json.dumps({"n": i, "email": f"u{i}@example.com"}).encode() if i % 3 else f"plain {i}".encode()
            for i in range(60)
        ]
        conf = {"compression.type": codec, "enable.idempotence": True, "linger.ms": 50}
        for half in (docs[:30], docs[30:]):
            assert deliver(gw.addr, topic, half, headers=[("h", b"v")], **conf) == [None] * 30
        stored = read_partition(broker.addr, topic, 0)
        assert [r[0] for r in stored] == list(range(60))
        for i, r in enumerate(stored):
            if i % 3:
                assert json.loads(r[2]) == {"n": i, "email": "***"}
            else:
                assert r[2] == docs[i], "records the plugin passes keep their bytes"
            assert r[1] is None
            assert [(k, v) for k, v in r[3]] == [("h", b"v")]
    finally:
        gw.close()


def test_each_filter_of_a_chain_sees_what_the_one_before_left(broker):
    # Two maskers in a row, each for one field: had the second been handed the
    # records as the client sent them, its answer would bring back what the
    # first masked.
    broker.create_topic("users.chained", 1)
    gw = gateway_with(broker, [
        {"name": "emails", "kind": "record-filter", "path": plugin_component("pii-mask"),
         "config": json.dumps({"fields": ["email"], "mask": "E"}), "topics": "users.*"},
        {"name": "names", "kind": "record-filter", "path": plugin_component("pii-mask"),
         "config": json.dumps({"fields": ["name"], "mask": "N"}), "topics": "users.*"},
    ])
    try:
        docs = [json.dumps({"name": f"user {i}", "email": f"u{i}@example.com", "n": i}).encode() for i in range(3)]
        assert deliver(gw.addr, "users.chained", docs) == [None] * 3
        stored = [json.loads(r[2]) for r in read_partition(broker.addr, "users.chained", 0)]
        assert stored == [{"name": "N", "email": "E", "n": i} for i in range(3)]
        m = gw.metrics()
        assert m['causeway_plugin_records_total{plugin="emails",verdict="changed"}'] == 3
        assert m['causeway_plugin_records_total{plugin="names",verdict="changed"}'] == 3
    finally:
        gw.close()


def test_a_rejected_batch_gets_policy_violation_and_never_lands(broker):
    broker.create_topic("orders.checked", 1)
    gw = gateway_with(broker, [{
        "name": "validate", "kind": "record-filter", "path": plugin_component("validate"),
        "config": json.dumps({"required": ["id", "amount"]}), "topics": "orders.*",
    }])
    try:
        good = json.dumps({"id": 1, "amount": 5}).encode()
        bad = json.dumps({"id": 2}).encode()
        errors = deliver(gw.addr, "orders.checked", [good])
        assert errors == [None]
        errors = deliver(gw.addr, "orders.checked", [bad])
        assert errors[0] is not None
        assert errors[0].code() == KafkaError.POLICY_VIOLATION, errors[0]
        stored = [v for _, _, v, _ in read_partition(broker.addr, "orders.checked", 0)]
        assert stored == [good], "the rejected record never reached the backend"
        assert gw.metrics()['causeway_plugin_rejected_batches_total{plugin="validate"}'] >= 1
    finally:
        gw.close()


def test_fetch_answers_are_filtered_and_offsets_kept(broker):
    broker.create_topic("audit.log", 1)
    doc = json.dumps({"email": "x@y.z", "n": 1}).encode()
    # Written straight to the backend: the raw data is there.
    p = Producer({"bootstrap.servers": broker.addr})
    for _ in range(3):
        p.produce("audit.log", value=doc, partition=0)
    p.flush(10)
    gw = gateway_with(broker, [{
        "name": "pii-read", "kind": "record-filter", "path": plugin_component("pii-mask"),
        "config": MASK_CONFIG, "topics": "audit.*", "on": ["fetch"],
    }])
    try:
        through = read_partition(gw.addr, "audit.log", 0)
        assert [o for o, _, _, _ in through] == [0, 1, 2]
        assert all(json.loads(v)["email"] == "***" for _, _, v, _ in through)
        assert all(json.loads(v)["email"] == "x@y.z" for _, _, v, _ in read_partition(broker.addr, "audit.log", 0))
    finally:
        gw.close()


@pytest.mark.parametrize("behaviour", ["loop", "oom", "panic"])
def test_a_misbehaving_plugin_is_contained(broker, behaviour):
    topic = f"jail.{behaviour}"
    broker.create_topic(topic, 1)
    broker.create_topic(f"free.{behaviour}", 1)
    gw = gateway_with(broker, [{
        "name": "bad", "kind": "record-filter", "path": plugin_component("misbehave"),
        "config": behaviour, "topics": "jail.*", "timeout_ms": 50, "memory_mb": 16,
    }])
    try:
        started = time.monotonic()
        errors = deliver(gw.addr, topic, [b"one"])
        assert errors[0] is not None and errors[0].code() == KafkaError.POLICY_VIOLATION, errors
        assert time.monotonic() - started < 10
        # The gateway keeps serving: other topics, and the same client again.
        assert deliver(gw.addr, f"free.{behaviour}", [b"fine"]) == [None]
        assert gw.process.alive()
        assert [v for _, _, v, _ in read_partition(broker.addr, topic, 0)] == []
        assert gw.metrics()['causeway_plugin_failures_total{plugin="bad"}'] >= 1
    finally:
        gw.close()


def test_a_failing_plugin_with_on_error_pass_lets_records_through(broker):
    broker.create_topic("lenient.t", 1)
    gw = gateway_with(broker, [{
        "name": "bad", "kind": "record-filter", "path": plugin_component("misbehave"),
        "config": "panic", "topics": "lenient.*", "on_error": "pass",
    }])
    try:
        assert deliver(gw.addr, "lenient.t", [b"a", b"b"]) == [None, None]
        assert [v for _, _, v, _ in read_partition(broker.addr, "lenient.t", 0)] == [b"a", b"b"]
    finally:
        gw.close()


def test_a_plugin_swapped_while_a_producer_stays_connected(broker):
    broker.create_topic("swap.t", 1)
    workdir = tempfile.mkdtemp(prefix="causeway-plugin-")
    live = f"{workdir}/filter.wasm"
    shutil.copy(plugin_component("passthrough"), live)
    gw = gateway_with(broker, [{
        "name": "swappable", "kind": "record-filter", "path": live,
        "config": MASK_CONFIG, "topics": "swap.*",
    }])
    try:
        p = Producer({"bootstrap.servers": gw.addr, "linger.ms": 0})
        doc = json.dumps({"email": "a@b.c"}).encode()
        errors = []
        p.produce("swap.t", value=doc, partition=0, on_delivery=lambda e, m: errors.append(e))
        p.flush(10)
        accepted_before = gw.metrics()["causeway_client_connections_accepted_total"]
        shutil.copy(plugin_component("pii-mask"), live)
        status, body = gw.post("/plugins/swappable/reload")
        assert status == 200, body
        p.produce("swap.t", value=doc, partition=0, on_delivery=lambda e, m: errors.append(e))
        p.flush(10)
        assert errors == [None, None]
        values = [json.loads(v)["email"] for _, _, v, _ in read_partition(broker.addr, "swap.t", 0)]
        assert values == ["a@b.c", "***"]
        assert gw.metrics()["causeway_client_connections_accepted_total"] == accepted_before
        # A broken file is refused and the loaded code stays.
        with open(live, "wb") as f:
            f.write(b"\0asm broken")
        status, body = gw.post("/plugins/swappable/reload")
        assert status == 400 and "swappable" in body
        p.produce("swap.t", value=doc, partition=0, on_delivery=lambda e, m: errors.append(e))
        p.flush(10)
        assert errors == [None, None, None]
        assert json.loads(read_partition(broker.addr, "swap.t", 0)[2][2])["email"] == "***"
    finally:
        gw.close()
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_plugin_that_is_not_a_component_stops_the_start_with_a_clear_error(broker, tmp_path):
    junk = tmp_path / "junk.wasm"
    junk.write_bytes(b"definitely not wasm")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[gateway]\nlisten = "127.0.0.1:0"\n[clusters.main]\nbootstrap = ["{broker.addr}"]\n'
        f'[[plugins]]\nname = "junk"\nkind = "record-filter"\npath = "{junk}"\n'
    )
    import subprocess

    from rig import causeway_bin

    r = subprocess.run([str(causeway_bin()), "run", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "plugin 'junk'" in r.stderr and "junk.wasm" in r.stderr, r.stderr


def test_compiled_code_is_cached_across_restarts(broker, tmp_path):
    """A restart loads the component from the compiled-code cache, and the
    cached plugin still filters: the second gateway masks like the first."""
    broker.create_topic("cached.users", 1)
    cache = tmp_path / "cache"
    plugin = {
        "name": "pii", "kind": "record-filter", "path": plugin_component("pii-mask"),
        "config": json.dumps({"fields": ["email"]}), "topics": "cached.*",
    }
    env = {"CAUSEWAY_PLUGIN_CACHE": str(cache)}
    for run, expect in enumerate(["now", "from cache"]):
        gw = gateway_with(broker, [plugin], extra_env=env)
        try:
            assert f'compiled="{expect}"' in gw.process.output(), gw.process.output()[-2000:]
            assert deliver(gw.addr, "cached.users", [json.dumps({"email": f"u{run}@x.io"}).encode()]) == [None]
        finally:
            gw.close()
        assert any(p.is_file() for p in cache.rglob("*")), "nothing written to the cache"
    values = [json.loads(v)["email"] for _, _, v, _ in read_partition(broker.addr, "cached.users", 0)]
    assert values == ["***", "***"]


def test_scope_by_cluster_and_principal(broker):
    """`clusters` and `principals` narrow where a filter runs: the masking
    plugin scoped to one cluster leaves the other's topics alone, and one
    scoped to certificate principals leaves anonymous clients (User:ANONYMOUS)
    alone."""
    from rig import clusters_config

    west = Tansu()
    try:
        broker.create_topic("east.scoped", 1)
        west.create_topic("west.scoped", 1)
        config = clusters_config(
            {"east": broker.addr, "west": west.addr},
            [{"topics": "east.*", "cluster": "east"}, {"topics": "*", "cluster": "west"}],
        )
        mask = {"kind": "record-filter", "path": plugin_component("pii-mask"),
                "config": json.dumps({"fields": ["email"]})}
        plugins = [
            {"name": "east-only", **mask, "clusters": ["east"]},
            {"name": "users-only", **mask, "principals": ["User:CN=*"]},
        ]
        lines = []
        for p in plugins:
            lines.append("[[plugins]]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in p.items()]
        config += "\n" + "\n".join(lines).replace("{", "{{").replace("}", "}}") + "\n"
        gw = Gateway(config=config)
        try:
            gw.wait_ready()
            doc = json.dumps({"email": "a@b.io"}).encode()
            assert deliver(gw.addr, "east.scoped", [doc]) == [None]
            assert deliver(gw.addr, "west.scoped", [doc]) == [None]
        finally:
            gw.close()
        east = [json.loads(v)["email"] for _, _, v, _ in read_partition(broker.addr, "east.scoped", 0)]
        west_values = [json.loads(v)["email"] for _, _, v, _ in read_partition(west.addr, "west.scoped", 0)]
        assert east == ["***"]
        assert west_values == ["a@b.io"], "neither plugin is in scope for west and User:ANONYMOUS"
    finally:
        west.close()


def test_a_plugin_scoped_to_an_unknown_cluster_is_a_config_error(tmp_path):
    from rig import causeway_bin

    cfg = tmp_path / "causeway.toml"
    cfg.write_text(
        '[gateway]\nlisten = "127.0.0.1:0"\n[clusters.main]\nbootstrap = ["127.0.0.1:9"]\n'
        f'[[plugins]]\nname = "p"\nkind = "record-filter"\npath = "{plugin_component("passthrough")}"\n'
        'clusters = ["mian"]\n'
    )
    import subprocess

    r = subprocess.run([str(causeway_bin()), "check", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "plugins[0].clusters" in r.stderr + r.stdout and "'mian' is not a cluster" in r.stderr + r.stdout, r.stderr + r.stdout


def test_a_produce_whose_records_are_all_dropped_is_answered_by_the_gateway(broker):
    """validate in drop mode: a batch with only invalid records never reaches
    the backend (Kafka refuses a produce with no records); the producer gets
    its delivery confirmed, and valid records around it land in order."""
    broker.create_topic("drops.checked", 1)
    gw = gateway_with(broker, [{
        "name": "validate", "kind": "record-filter", "path": plugin_component("validate"),
        "config": json.dumps({"required": ["id"], "mode": "drop"}), "topics": "drops.*",
    }])
    try:
        good = [json.dumps({"id": i}).encode() for i in range(2)]
        bad = json.dumps({"name": "no id"}).encode()
        assert deliver(gw.addr, "drops.checked", [good[0]]) == [None]
        assert deliver(gw.addr, "drops.checked", [bad, bad]) == [None, None]
        assert deliver(gw.addr, "drops.checked", [good[1]]) == [None]
        stored = [v for _, _, v, _ in read_partition(broker.addr, "drops.checked", 0)]
        assert stored == good
        m = gw.metrics()
        assert m['causeway_plugin_records_total{plugin="validate",verdict="dropped"}'] == 2
        assert m['causeway_plugin_records_total{plugin="validate",verdict="passed"}'] == 2
    finally:
        gw.close()


T0 = 1_700_000_000_000


def test_an_array_is_fanned_out_into_one_record_per_element(broker):
    """split answers fan-out: each element of a JSON array becomes a record of
    its own with the original's key, headers and timestamp, in order; an empty
    array removes its record. Written with librdkafka (lz4), read back through
    the gateway with kafka-python."""
    broker.create_topic("events.split", 1)
    gw = gateway_with(broker, [{
        "name": "split", "kind": "record-filter", "path": plugin_component("split"),
        "config": json.dumps({"part_header": "part"}), "topics": "events.*", "on": ["produce"],
    }])
    try:
        values = [b'[{"n": 1}, {"n": 2}, 3]', b"not an array", b"[]", b'["last"]']
        p = Producer({"bootstrap.servers": gw.addr, "linger.ms": 50, "compression.type": "lz4",
                      "enable.idempotence": False, "message.timeout.ms": 10000})
        errors = []
        for i, v in enumerate(values):
            p.produce("events.split", value=v, key=b"k", partition=0, headers=[("h", b"v")], timestamp=T0 + i,
                      on_delivery=lambda e, m: errors.append(e))
        assert p.flush(20) == 0
        assert errors == [None] * 4
        got = consume_kafka_python(gw.addr, "events.split", 0, 5, timestamps=True)
        h = ("h", b"v")
        assert got == [
            (0, b"k", b'{"n": 1}', [h, ("part", b"1/3")], T0),
            (1, b"k", b'{"n": 2}', [h, ("part", b"2/3")], T0),
            (2, b"k", b"3", [h, ("part", b"3/3")], T0),
            (3, b"k", b"not an array", [h], T0 + 1),
            (4, b"k", b'"last"', [h, ("part", b"1/1")], T0 + 3),
        ]
        assert len(read_partition(broker.addr, "events.split", 0)) == 5, "nothing else reached the backend"
        m = gw.metrics()
        assert m['causeway_plugin_records_total{plugin="split",verdict="fanned_out"}'] == 2
        assert m['causeway_plugin_records_total{plugin="split",verdict="dropped"}'] == 1
        assert m['causeway_plugin_records_total{plugin="split",verdict="passed"}'] == 1
        assert m['causeway_plugin_counter_total{plugin="split",name="parts_written"}'] == 4
    finally:
        gw.close()


def test_an_idempotent_producers_array_is_refused_rather_than_split(broker):
    """The broker checks an idempotent producer's sequence numbers, which count
    records: an array of one element may be replaced by it, a longer one gets
    POLICY_VIOLATION and never lands."""
    broker.create_topic("events.exact", 1)
    gw = gateway_with(broker, [{
        "name": "split", "kind": "record-filter", "path": plugin_component("split"),
        "config": "", "topics": "events.*", "on": ["produce"],
    }])
    try:
        assert deliver(gw.addr, "events.exact", [b'["one"]'], **{"enable.idempotence": True}) == [None]
        errors = deliver(gw.addr, "events.exact", [b'["a", "b"]'], **{"enable.idempotence": True})
        assert errors[0] is not None and errors[0].code() == KafkaError.POLICY_VIOLATION, errors
        assert [v for _, _, v, _ in read_partition(broker.addr, "events.exact", 0)] == [b'"one"']
        assert gw.metrics()['causeway_plugin_rejected_batches_total{plugin="split"}'] >= 1
    finally:
        gw.close()


def test_records_are_stamped_with_their_producer_and_forged_stamps_dropped(broker):
    """stamp answers replace (new headers, everything else kept): an idempotent
    zstd producer's two rounds land in order with the gateway's stamps, and the
    header the client forged is gone."""
    broker.create_topic("audit.stamped", 1)
    gw = gateway_with(broker, [{
        "name": "stamp", "kind": "record-filter", "path": plugin_component("stamp"),
        "config": json.dumps({"principal": "produced-by", "client_id": "produced-by-client"}),
        "topics": "audit.*", "on": ["produce"],
    }])
    try:
        p = Producer({"bootstrap.servers": gw.addr, "client.id": "billing", "linger.ms": 20,
                      "compression.type": "zstd", "enable.idempotence": True, "message.timeout.ms": 10000})
        errors = []
        for round_ in range(2):
            for i in range(round_ * 20, round_ * 20 + 20):
                p.produce("audit.stamped", value=f"v{i}".encode(), key=f"k{i}".encode(), partition=0,
                          headers=[("produced-by", b"User:admin"), ("trace", str(i).encode())],
                          timestamp=T0 + i, on_delivery=lambda e, m: errors.append(e))
            assert p.flush(20) == 0
        assert errors == [None] * 40
        got = consume_kafka_python(gw.addr, "audit.stamped", 0, 40, timestamps=True)
        assert got == [
            (i, f"k{i}".encode(), f"v{i}".encode(),
             [("trace", str(i).encode()), ("produced-by", b"User:ANONYMOUS"), ("produced-by-client", b"billing")],
             T0 + i)
            for i in range(40)
        ]
        m = gw.metrics()
        assert m['causeway_plugin_records_total{plugin="stamp",verdict="changed"}'] == 40
        assert m['causeway_plugin_counter_total{plugin="stamp",name="forged_headers_removed"}'] == 40
    finally:
        gw.close()
