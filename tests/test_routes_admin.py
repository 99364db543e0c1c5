"""Routes changed while Causeway runs, through the admin API (GET/PUT /routes, POST
/reload), and route mistakes caught by `causeway check`. A change moves where new
records go without dropping client connections; a rejected change leaves the routes
in force as they were."""

import itertools
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from clients import list_topics, produce_confluent_acked, read_partition, records
from rig import (
    Gateway,
    Tansu,
    admin_call,
    causeway_check,
    clusters_config,
    rewrite_gateway_config,
)

_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


def routes_for(moving: str) -> list[dict]:
    """The routes of these tests, with `moving.*` on the given cluster. west's three
    topic routes have disjoint backend names (moving., west., old.)."""
    return [
        {"topics": "moving.*", "cluster": moving},
        {"topics": "west.*", "cluster": "west"},
        {"topics": "legacy.*", "cluster": "west", "rename": {"from": "legacy.", "to": "old."}},
        {"groups": "west-*", "cluster": "west"},
        {"transactional_ids": "tx-*", "cluster": "east"},
    ]


@pytest.fixture(scope="module")
def backends():
    started = {}
    try:
        for name in ("east", "west"):
            started[name] = Tansu(name)
        yield started
    finally:
        for b in started.values():
            b.close()


def addrs(backends) -> dict[str, str]:
    return {name: b.addr for name, b in backends.items()}


@pytest.fixture
def gateway_at(backends):
    """gateway_at(routes) -> a running Causeway over both backends, closed after the test."""
    started = []

    def start(routes):
        gw = Gateway(config=clusters_config(addrs(backends), routes))
        started.append(gw)
        gw.wait_ready()
        return gw

    yield start
    for gw in started:
        gw.close()


def moving_topic(backends, tag):
    """A topic that exists, empty, on both clusters, so a route can move it."""
    name = unique(f"moving.{tag}-")
    for b in backends.values():
        b.create_topic(name, 1)
    return name


def landed(backends, topic):
    """{cluster: [(offset, value)]} read straight from each backend."""
    return {c: [(o, v) for o, _, v, _ in read_partition(b.addr, topic, 0)] for c, b in backends.items()}


def routes_in_force(gw):
    status, body, text = admin_call(gw, "GET", "/routes")
    assert status == 200, text
    return body["routes"]


# --- the admin API -----------------------------------------------------------------------


def test_get_routes_returns_the_configured_routes(gateway_at):
    gw = gateway_at(routes_for("east"))
    status, body, text = admin_call(gw, "GET", "/routes")
    assert status == 200, text
    # The routes of the file, in its order, with its keys: "rename" only where set.
    assert body == {"routes": routes_for("east")}


def test_put_routes_moves_a_topic_under_a_connected_producer(backends, gateway_at):
    topic = moving_topic(backends, "put")
    gw = gateway_at(routes_for("east"))
    errors, acks = [], []
    p = Producer({
        "bootstrap.servers": gw.addr,
        "linger.ms": 0,
        "topic.metadata.refresh.interval.ms": 500,
        "error_cb": errors.append,
    })

    def send(recs):
        for k, v, h in recs:
            p.produce(topic, key=k, value=v, headers=h, partition=0,
                      on_delivery=lambda e, m: acks.append((e, m.offset(), m.value())))
        assert p.flush(30) == 0

    before, after = records(4, "before"), records(4, "after")
    send(before)
    accepted = gw.metrics()["causeway_client_connections_accepted_total"]

    status, body, text = admin_call(gw, "PUT", "/routes", {"routes": routes_for("west")})
    assert status == 200, text
    assert body == {"routes": routes_for("west")}
    assert routes_in_force(gw) == routes_for("west")

    time.sleep(1.5)  # the producer's next metadata refresh has come and gone
    send(after)

    assert [e for e, _, _ in acks] == [None] * 8, "the producer never saw an error"
    assert not errors, errors
    # The offsets in the acks are east's for the first four and west's for the rest.
    assert [(o, v) for _, o, v in acks] == [(i, v) for i, (_, v, _) in enumerate(before)] + [
        (i, v) for i, (_, v, _) in enumerate(after)
    ]
    assert landed(backends, topic) == {
        "east": [(i, v) for i, (_, v, _) in enumerate(before)],
        "west": [(i, v) for i, (_, v, _) in enumerate(after)],
    }
    assert gw.metrics()["causeway_client_connections_accepted_total"] == accepted, "a client had to reconnect"


BAD_ROUTES = [
    pytest.param(
        [{"topics": "moving.*", "cluster": "east"}, {"topics": "x.*", "cluster": "nowhere"}],
        "routes[1].cluster", None, id="unknown-cluster",
    ),
    pytest.param(
        [{"cluster": "east"}, {"topics": "*", "cluster": "east"}],
        "routes[0]", None, id="no-pattern",
    ),
    pytest.param(
        [{"topics": "a.*", "groups": "a-*", "cluster": "east"}, {"topics": "*", "cluster": "west"}],
        "routes[0]", None, id="two-patterns",
    ),
    pytest.param(
        [{"topics": "*", "cluster": "east"}, {"topics": "moving.*", "cluster": "west"}],
        "routes[1]", "never matches", id="never-matches",
    ),
]


@pytest.mark.parametrize("bad,field,message", BAD_ROUTES)
def test_put_of_bad_routes_is_refused_and_changes_nothing(backends, gateway_at, bad, field, message):
    topic = moving_topic(backends, "badput")
    gw = gateway_at(routes_for("east"))
    status, body, text = admin_call(gw, "PUT", "/routes", {"routes": bad})
    assert status == 400, text
    problems = body["problems"]
    assert problems and all(set(p) >= {"field", "message"} for p in problems), problems
    hits = [p for p in problems if p["field"] == field or p["field"].startswith(field + ".")]
    assert hits, f"no problem names {field}: {problems}"
    if message:
        assert any(message in p["message"] for p in hits), problems
    assert routes_in_force(gw) == routes_for("east")
    # Still in force, not just still reported: the topic stays on east.
    produce_confluent_acked(gw.addr, topic, records(1, "after-refused-put"))
    assert landed(backends, topic) == {"east": [(0, records(1, "after-refused-put")[0][1])], "west": []}


def test_put_of_a_body_that_is_not_json_is_refused(gateway_at):
    gw = gateway_at(routes_for("east"))
    status, _, text = admin_call(gw, "PUT", "/routes", raw=b'{"routes": [{"topics": ')
    assert status == 400, text
    assert routes_in_force(gw) == routes_for("east")


def test_reload_applies_the_rewritten_file(backends, gateway_at):
    topic = moving_topic(backends, "reload")
    gw = gateway_at(routes_for("east"))
    first, second = records(2, "first"), records(3, "second")
    assert produce_confluent_acked(gw.addr, topic, first) == [(topic, 0, 0), (topic, 0, 1)]

    rewrite_gateway_config(gw, addrs(backends), routes_for("west"))
    status, body, text = admin_call(gw, "POST", "/reload")
    assert status == 200, text
    assert body == {"routes": routes_for("west")}
    assert routes_in_force(gw) == routes_for("west")

    # A new client: its records go to west, which had none, so offsets start at 0.
    assert produce_confluent_acked(gw.addr, topic, second) == [(topic, 0, i) for i in range(3)]
    assert landed(backends, topic) == {
        "east": [(i, v) for i, (_, v, _) in enumerate(first)],
        "west": [(i, v) for i, (_, v, _) in enumerate(second)],
    }


def test_reload_of_a_broken_file_changes_nothing(backends, gateway_at):
    topic = moving_topic(backends, "badreload")
    gw = gateway_at(routes_for("east"))

    Path(gw.config_file.name).write_text('[gateway]\nlisten = "127.0.0.1:1\n[[routes]\n')  # not TOML
    status, body, text = admin_call(gw, "POST", "/reload")
    assert status == 400, text
    assert body["problems"] and all(set(p) >= {"field", "message"} for p in body["problems"]), body
    assert routes_in_force(gw) == routes_for("east")

    # Valid TOML, invalid routes: the problem names the field.
    rewrite_gateway_config(gw, addrs(backends), [{"topics": "moving.*", "cluster": "mars"}])
    status, body, text = admin_call(gw, "POST", "/reload")
    assert status == 400, text
    assert any(p["field"] == "routes[0].cluster" for p in body["problems"]), body
    assert routes_in_force(gw) == routes_for("east")

    rec = records(1, "after-refused-reload")
    assert produce_confluent_acked(gw.addr, topic, rec) == [(topic, 0, 0)]
    assert landed(backends, topic) == {"east": [(0, rec[0][1])], "west": []}
    assert topic in list_topics(gw.addr)


# --- causeway check --------------------------------------------------------------------------

CHECK_CLUSTERS = {"east": "127.0.0.1:19092", "west": "127.0.0.1:29092"}


def check(routes):
    r = causeway_check(clusters_config(CHECK_CLUSTERS, routes, listen="127.0.0.1:9092", admin="127.0.0.1:9644"))
    return r.returncode, r.stdout + r.stderr


def test_check_accepts_routes_of_every_kind():
    code, out = check([
        {"topics": "orders.*", "cluster": "east"},
        {"topics": "audit-??-*", "cluster": "east"},
        {"topics": "legacy.*", "cluster": "west", "rename": {"from": "legacy.", "to": ""}},
        {"topics": "*", "cluster": "east"},
        # Kinds are separate: a catch-all topic route does not shadow group routes.
        {"groups": "team-*", "cluster": "west"},
        {"groups": "*", "cluster": "east"},
        {"transactional_ids": "etl-*", "cluster": "west"},
    ])
    assert code == 0, out
    assert out.strip().endswith(": ok"), out


CHECK_CASES = [
    pytest.param(
        [{"topics": "orders.*", "cluster": "mars"}, {"topics": "*", "cluster": "east"}],
        ["routes[0].cluster", "mars"], id="unknown-cluster",
    ),
    pytest.param(
        [{"topics": "*", "cluster": "east"}, {"topics": "orders.*", "cluster": "west"}],
        ["routes[1]", "never matches"], id="after-catch-all",
    ),
    pytest.param(
        [{"topics": "orders.*", "cluster": "east"}, {"topics": "orders.eu.*", "cluster": "west"}],
        ["routes[1]", "never matches"], id="after-wider-prefix",
    ),
    pytest.param(
        [{"topics": "*", "cluster": "east"}, {"groups": "*", "cluster": "east"}, {"groups": "team-*", "cluster": "west"}],
        ["routes[2]", "never matches"], id="group-after-catch-all",
    ),
    pytest.param(
        [{"topics": "legacy.*", "cluster": "west", "rename": {"from": "old.", "to": ""}}, {"topics": "*", "cluster": "east"}],
        ["routes[0].rename"], id="rename-from-not-a-prefix",
    ),
    pytest.param(
        [
            {"topics": "a.*", "cluster": "west", "rename": {"from": "a.", "to": "x."}},
            {"topics": "b.*", "cluster": "west", "rename": {"from": "b.", "to": "x."}},
            {"topics": "*", "cluster": "east"},
        ],
        ["ambiguous"], id="two-names-for-one-backend-topic",
    ),
    pytest.param(
        [{"cluster": "east"}, {"topics": "*", "cluster": "east"}],
        ["routes[0]"], id="no-pattern",
    ),
    pytest.param(
        [{"topics": "a.*", "transactional_ids": "a-*", "cluster": "east"}, {"topics": "*", "cluster": "west"}],
        ["routes[0]"], id="two-patterns",
    ),
]


@pytest.mark.parametrize("routes,expect", CHECK_CASES)
def test_check_refuses_bad_routes(routes, expect):
    code, out = check(routes)
    assert code == 1, out
    for text in expect:
        assert text in out, out


# --- the admin token ---------------------------------------------------------------


def admin_request(gw, method, path, token=None, body=None):
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"http://{gw.admin}{path}", data=body, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), {k.lower(): v for k, v in e.headers.items()}


@pytest.mark.parametrize("open_metrics", [True, False])
def test_a_token_guards_routes_and_plugins(backends, open_metrics):
    token = "s3cret-admin-token-0123456789"
    config = clusters_config(addrs(backends), routes_for("east")).replace(
        "[admin]\n", f'[admin]\ntoken_env = "ADMIN_TOKEN"\nopen_metrics = {str(open_metrics).lower()}\n', 1)
    gw = Gateway(config=config, extra_env={"ADMIN_TOKEN": token})
    try:
        for method, path, body in [("GET", "/routes", None), ("PUT", "/routes", b'{"routes": []}'),
                                   ("POST", "/reload", b""), ("GET", "/plugins", None),
                                   ("POST", "/plugins/x/reload", b"")]:
            for wrong in (None, "wrong", token[:-1], token + "x"):
                status, text, headers = admin_request(gw, method, path, wrong, body)
                assert status == 401, (method, path, wrong, status, text)
                assert headers.get("www-authenticate") == "Bearer"
        # Nothing changed, and with the token the same calls work.
        status, text, _ = admin_request(gw, "GET", "/routes", token)
        assert status == 200 and '"moving.*"' in text, text
        status, text, _ = admin_request(gw, "GET", "/plugins", token)
        assert status == 200, text
        for path in ("/metrics", "/healthz", "/readyz"):
            status, _, _ = admin_request(gw, "GET", path)
            assert status == (200 if open_metrics else 401), path
            assert admin_request(gw, "GET", path, token)[0] == 200
        status, text, _ = admin_request(gw, "GET", "/metrics", token)
        assert "causeway_admin_unauthorized_total" in text
        assert token not in gw.process.output()
    finally:
        gw.close()


def test_check_reports_admin_token_mistakes(tmp_path):
    base = clusters_config({"main": "127.0.0.1:19092"}, [], listen="127.0.0.1:9092", admin="127.0.0.1:9644")
    for extra, field in [('token_env = "CAUSEWAY_NO_SUCH_VARIABLE"\n', "admin.token_env"),
                         (f'token_file = "{tmp_path / "missing"}"\n', "admin.token_file")]:
        r = causeway_check(base.replace("[admin]\n", "[admin]\n" + extra, 1))
        assert r.returncode == 1 and field in r.stdout + r.stderr, r.stdout + r.stderr
    short = tmp_path / "short"
    short.write_text("abc\n")
    r = causeway_check(base.replace("[admin]\n", f'[admin]\ntoken_file = "{short}"\n', 1))
    assert r.returncode == 1 and "16 characters" in r.stdout + r.stderr


def test_the_admin_endpoint_over_https_with_client_certificates(backends, tmp_path):
    import ssl
    import urllib.error
    import urllib.request
    from rig import make_ca, make_cert
    make_ca(tmp_path, "ca")
    make_cert(tmp_path, "server", "/O=Causeway Tests/CN=admin", "ca", server=True)
    make_cert(tmp_path, "operator", "/O=Causeway Tests/CN=operator", "ca")
    token = "another-admin-token-0123456789"
    tls = (f'token_env = "ADMIN_TOKEN"\n[admin.tls]\ncert = "{tmp_path / "server.pem"}"\n'
           f'key = "{tmp_path / "server-key.pem"}"\nclient_ca = "{tmp_path / "ca.pem"}"\n')
    config = clusters_config(addrs(backends), routes_for("east"))
    # [admin.tls] must follow the [admin] keys, before the next table.
    head, rest = config.split("[admin]\n", 1)
    listen_line, rest = rest.split("\n", 1)
    config = head + "[admin]\n" + listen_line + "\n" + tls.replace("{", "{{").replace("}", "}}") + rest
    gw = Gateway(config=config, extra_env={"ADMIN_TOKEN": token})
    try:
        def get(path, cert=None, with_token=True):
            ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            if cert:
                ctx.load_cert_chain(str(tmp_path / f"{cert}.pem"), str(tmp_path / f"{cert}-key.pem"))
            req = urllib.request.Request(f"https://127.0.0.1:{gw.admin_port}{path}")
            if with_token:
                req.add_header("Authorization", f"Bearer {token}")
            with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
                return r.status, r.read().decode()

        status, body = get("/routes", cert="operator")
        assert status == 200 and '"moving.*"' in body
        # The token is still wanted over TLS.
        with pytest.raises(urllib.error.HTTPError) as e:
            get("/routes", cert="operator", with_token=False)
        assert e.value.code == 401
        # No client certificate: the handshake fails.
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionResetError)):
            get("/healthz")
        # Plain HTTP to the TLS port gets nowhere.
        with pytest.raises(Exception):
            urllib.request.urlopen(f"http://127.0.0.1:{gw.admin_port}/healthz", timeout=5)
    finally:
        gw.close()
