"""The hybrid bridge: what the QUIC tunnel costs against plain TCP between the
same two network namespaces, measured in the same run.

Two namespaces joined by a veth pair (tests/netns.py, no firewall here so the
baseline can dial on-prem directly), optionally with netem delay to stand in
for a WAN. On-prem: a tansu broker and a Causeway dialling out. Cloud: a tansu
broker and two Causeways in front of both clusters, identical but for how they
reach the on-prem cluster: `tcp` dials the on-prem broker directly, `quic`
goes through the tunnel (`tunnel = true`). The benchmark client runs on the
host and reaches the cloud namespace only.

Each round, in an order that alternates from round to round:
- bridged produce: COUNT records of SIZE bytes from a librdkafka producer
  through each cloud Causeway to a fresh on-prem topic (acks=all);
- bridged consume: a librdkafka consumer reads one of those topics whole
  through each cloud Causeway;
- mirror: a link from on-prem to the cloud cluster on each cloud Causeway
  mirrors the same on-prem topic; timed until every partition is mirrored.

Needs root (namespaces). Reports medians and the tunnel's share of plain TCP.

    python benches/bridge.py --out benches/results/latest.md [--delay-ms 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import netns  # noqa: E402
from load import consume_throughput, produce_throughput  # noqa: E402
from netns import CLOUD_HOST_SIDE_IP, CLOUD_IP, ONPREM_IP  # noqa: E402
from rig import Process, admin_call, causeway_bin, make_ca, make_cert, tansu_bin, wait_for  # noqa: E402

ONPREM_BROKER = f"{ONPREM_IP}:19092"
CLOUD_BROKER = f"{CLOUD_HOST_SIDE_IP}:29092"


class At:
    """A cloud Causeway as the admin helpers want it."""

    def __init__(self, port, admin_port):
        self.addr = f"{CLOUD_HOST_SIDE_IP}:{port}"
        self.admin = f"{CLOUD_HOST_SIDE_IP}:{admin_port}"


def cloud_config(port, admin_port, certs, tunnelled):
    tunnel = f"""
[tunnel]
listen = "{CLOUD_IP}:4433"
cert = "{certs}/cloud.pem"
key = "{certs}/cloud-key.pem"
client_ca = "{certs}/ca.pem"

[[tunnel.peers]]
identity = "CN=onprem,O=Causeway Tests"
clusters = ["onprem"]
""" if tunnelled else ""
    return f"""
[gateway]
listen = "0.0.0.0:{port}"
advertised = "{CLOUD_HOST_SIDE_IP}:{port}"

[admin]
listen = "{CLOUD_HOST_SIDE_IP}:{admin_port}"
{tunnel}
[clusters.onprem]
bootstrap = ["{ONPREM_BROKER}"]
{"tunnel = true" if tunnelled else ""}

[clusters.cloud]
bootstrap = ["{CLOUD_BROKER}"]

[[routes]]
topics = "m-*"
cluster = "cloud"

[[routes]]
topics = "*"
cluster = "onprem"
"""


ONPREM_CONFIG = """
[gateway]
listen = "127.0.0.1:9092"

[tunnel]
connect = ["{cloud}:4433"]
server_name = "localhost"
cert = "{certs}/onprem.pem"
key = "{certs}/onprem-key.pem"
ca = "{certs}/ca.pem"
expose = ["onprem"]

[clusters.onprem]
bootstrap = ["{broker}"]
"""


def mirror_copy(gw, link, topic, count, size, timeout):
    t0 = time.perf_counter()
    status, body, text = admin_call(gw, "POST", "/mirrors", {"topic": topic, "link": link})
    assert status == 201, text
    name = body["name"]

    def done():
        _, d, _ = admin_call(gw, "GET", f"/mirrors/{name}")
        return d["records"] >= count and all(p["lag"] == 0 for p in d["partitions"])

    while not done():
        assert time.perf_counter() - t0 < timeout, f"mirror of {topic} not done in {timeout}s"
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    admin_call(gw, "POST", f"/mirrors/{name}/failover")
    return count * size / elapsed / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=100_000, help="records per run")
    ap.add_argument("--size", type=int, default=1024, help="bytes per record")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--delay-ms", type=float, default=0, help="netem delay on each side of the WAN link")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    why = netns.missing()
    if why is not None:
        print(f"bridge benchmark skipped: {why}", file=sys.stderr)
        if args.out:
            with args.out.open("a") as f:
                f.write(f"Skipped: {why}.\n\n")
        return
    began = time.perf_counter()
    try:
        sites = netns.Sites(firewall=False, delay_ms=args.delay_ms)
    except subprocess.CalledProcessError as e:
        sys.exit(f"cannot build the namespaces: {' '.join(e.cmd)}: {e.stderr.strip()}"
                 + (" (this kernel has no netem: run without --delay-ms)" if "netem" in e.cmd else ""))
    certs = Path(tempfile.mkdtemp(prefix="causeway-bridge-bench-"))
    make_ca(certs, "ca")
    make_cert(certs, "cloud", "/O=Causeway Tests/CN=cloud", "ca", server=True)
    make_cert(certs, "onprem", "/O=Causeway Tests/CN=onprem", "ca")
    started = []

    def start(ns, label, args_, env=None, wait=None):
        p = Process(label, sites.exec(ns, *args_), env=env)
        started.append(p)
        if wait:
            sites.wait_port(ns, wait[0], wait[1], process=p)
        return p

    def tansu(ns, addr, cid):
        url = f"tcp://{addr}"
        host, port = addr.split(":")
        start(ns, f"tansu-{cid}", [str(tansu_bin()), "broker", "--cluster-id", cid, "--listener-url", url,
                                   "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
              env={"RUST_LOG": "warn"}, wait=(host, int(port)))

    def gateway(ns, label, text, wait):
        f = certs / f"{label}.toml"
        f.write_text(text)
        start(ns, label, [str(causeway_bin()), "run", "--config", str(f)], env={"CAUSEWAY_LOG": "warn"}, wait=wait)

    try:
        tansu(sites.onprem, ONPREM_BROKER, "onprem")
        tansu(sites.cloud, CLOUD_BROKER, "cloud")
        gateway(sites.cloud, "tcp", cloud_config(9093, 9645, certs, False), (CLOUD_HOST_SIDE_IP, 9093))
        gateway(sites.cloud, "quic", cloud_config(9092, 9644, certs, True), (CLOUD_HOST_SIDE_IP, 9092))
        gateway(sites.onprem, "onprem", ONPREM_CONFIG.format(cloud=CLOUD_IP, certs=certs, broker=ONPREM_BROKER),
                ("127.0.0.1", 9092))
        gws = {"tcp": At(9093, 9645), "quic": At(9092, 9644)}

        def ready(gw):
            status, body, _ = admin_call(gw, "GET", "/readyz")
            return status == 200 and body.get("degraded") is False

        for label, gw in gws.items():
            wait_for(lambda gw=gw: ready(gw), 30, f"{label} gateway ready")
            status, _, text = admin_call(gw, "POST", "/links", {
                "name": f"l{label}", "source": "onprem", "destination": "cloud",
                "config": {"cluster.link.prefix": f"m-{label}."},
            })
            assert status == 201, text

        results = {k: {"produce": [], "consume": [], "mirror": []} for k in gws}
        for r in range(args.rounds):
            order = list(gws) if r % 2 == 0 else list(reversed(gws))
            topics = {}
            for label in order:
                topic = f"bench-{label}-{r}-{time.monotonic_ns()}"
                topics[label] = topic
                # The topic is created on-prem through the Causeway being measured.
                from load import create_topic
                create_topic(gws[label].addr, topic, args.partitions)
                mb, _ = produce_throughput(gws[label].addr, topic, args.count, args.size, args.partitions)
                results[label]["produce"].append(mb)
            for label in order:
                mb, _ = consume_throughput(gws[label].addr, topics["tcp"], args.count, args.size, args.partitions)
                results[label]["consume"].append(mb)
            for label in order:
                results[label]["mirror"].append(
                    mirror_copy(gws[label], f"l{label}", topics["quic"], args.count, args.size, args.timeout))
            print(f"round {r + 1}: " + ", ".join(
                f"{label} {k} {v[-1]:.1f}" for label in gws for k, v in results[label].items()), file=sys.stderr)
    finally:
        for p in reversed(started):
            p.close()
        sites.close()

    rtt = 2 * args.delay_ms
    lines = [
        f"Two network namespaces joined by a veth pair, {'no added delay' if not rtt else f'netem RTT {rtt:g} ms'}; "
        f"{args.count} records of {args.size} B over {args.partitions} partitions per run, {args.rounds} rounds, "
        "order alternating; MB/s, median (min-max). Plain TCP: the cloud Causeway dials the on-prem broker "
        "directly (no TLS). QUIC: the same through the tunnel (TLS 1.3).",
        "",
        "| run | plain TCP | QUIC tunnel | tunnel / TCP |",
        "| --- | ---: | ---: | ---: |",
    ]
    for kind, what in (("produce", "bridged produce"), ("consume", "bridged consume"), ("mirror", "mirror to the cloud")):
        tcp, quic = results["tcp"][kind], results["quic"][kind]
        mt, mq = statistics.median(tcp), statistics.median(quic)
        lines.append(f"| {what} | {mt:.1f} ({min(tcp):.1f}-{max(tcp):.1f}) | {mq:.1f} ({min(quic):.1f}-{max(quic):.1f}) "
                     f"| {100 * mq / mt:.0f}% |")
    lines += ["", f"Took {time.perf_counter() - began:.0f} s.", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
