"""Two sites on one machine: an "onprem" and a "cloud" network namespace.

    host (tests) 10.214.0.1 ──veth── 10.214.0.2  cloud  10.213.0.2 ──veth── 10.213.0.1  onprem

The onprem namespace's firewall (nftables) drops every new connection from the
cloud side, TCP and UDP alike; replies to connections onprem opened pass. The
host reaches the cloud namespace only (to play the cloud clients); nothing
routes between the host and onprem. Needs root, iproute2 and nft.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

ONPREM_IP = "10.213.0.1"
CLOUD_IP = "10.213.0.2"
HOST_IP = "10.214.0.1"
CLOUD_HOST_SIDE_IP = "10.214.0.2"


def missing() -> str | None:
    """Why the namespaces cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root (ip netns, veth, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (iproute2, nftables: scripts/setup.sh installs them as root)"
    probe = f"cwprobe{os.getpid() % 100000}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sh(*args: str, check: bool = True, input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, input=input, timeout=timeout)


class Sites:
    """`firewall`: drop new connections from the cloud side into onprem.
    `delay_ms`: netem delay on each side of the WAN link (round trip: twice it)."""

    def __init__(self, firewall: bool = True, delay_ms: float = 0):
        self.firewall, self.delay_ms = firewall, delay_ms
        tag = os.getpid() % 100000
        self.onprem = f"cwon{tag}"
        self.cloud = f"cwcl{tag}"
        # veth names: at most 15 characters.
        self.onprem_if, self.cloud_if = f"cwo{tag}", f"cwc{tag}"
        self.host_if, self.cloud_host_if = f"cwh{tag}", f"cwk{tag}"
        self._build()

    def _build(self) -> None:
        try:
            for ns in (self.onprem, self.cloud):
                sh("ip", "netns", "add", ns)
                sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "add", self.onprem_if, "type", "veth", "peer", "name", self.cloud_if)
            sh("ip", "link", "set", self.onprem_if, "netns", self.onprem)
            sh("ip", "link", "set", self.cloud_if, "netns", self.cloud)
            sh("ip", "-n", self.onprem, "addr", "add", f"{ONPREM_IP}/24", "dev", self.onprem_if)
            sh("ip", "-n", self.cloud, "addr", "add", f"{CLOUD_IP}/24", "dev", self.cloud_if)
            sh("ip", "-n", self.onprem, "link", "set", self.onprem_if, "up")
            sh("ip", "-n", self.cloud, "link", "set", self.cloud_if, "up")
            sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.cloud_host_if)
            sh("ip", "link", "set", self.cloud_host_if, "netns", self.cloud)
            sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", self.host_if)
            sh("ip", "-n", self.cloud, "addr", "add", f"{CLOUD_HOST_SIDE_IP}/24", "dev", self.cloud_host_if)
            sh("ip", "link", "set", self.host_if, "up")
            sh("ip", "-n", self.cloud, "link", "set", self.cloud_host_if, "up")
            if self.delay_ms:
                for ns, dev in ((self.onprem, self.onprem_if), (self.cloud, self.cloud_if)):
                    sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem",
                       "delay", f"{self.delay_ms}ms", "limit", "100000")
            if not self.firewall:
                return
            # No inbound hole: anything new from the cloud side is dropped.
            rules = (
                "table inet causeway_test {\n"
                " chain input {\n"
                "  type filter hook input priority 0; policy accept;\n"
                "  ct state established,related accept\n"
                f"  ip saddr {CLOUD_IP} ct state new counter drop\n"
                " }\n"
                "}\n"
            )
            sh("ip", "netns", "exec", self.onprem, "nft", "-f", "-", input=rules)
        except BaseException:
            self.close()
            raise

    def exec(self, ns: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *args]

    def dropped(self) -> int:
        """Packets the onprem firewall dropped so far."""
        out = sh("ip", "netns", "exec", self.onprem, "nft", "list", "table", "inet", "causeway_test").stdout
        for line in out.splitlines():
            if "drop" in line and "packets" in line:
                return int(line.split("packets")[1].split()[0])
        return 0

    def can_connect(self, ns: str, host: str, port: int, timeout: float = 3.0) -> bool:
        code = (
            "import socket,sys\n"
            f"try: socket.create_connection(({host!r}, {port}), timeout={timeout}).close()\n"
            "except OSError: sys.exit(1)\n"
        )
        return sh(*self.exec(ns, sys.executable, "-c", code), check=False, timeout=timeout + 10).returncode == 0

    def wait_port(self, ns: str, host: str, port: int, timeout: float = 15.0, process=None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and not process.alive():
                raise RuntimeError(f"{process.name} exited:\n{process.output()}")
            if self.can_connect(ns, host, port, timeout=0.5):
                return
            time.sleep(0.1)
        extra = f"\n{process.output()}" if process is not None else ""
        raise TimeoutError(f"nothing listening on {host}:{port} in {ns} after {timeout}s{extra}")

    def link(self, up: bool) -> None:
        """Cuts (or restores) the WAN between the two sites."""
        sh("ip", "-n", self.onprem, "link", "set", self.onprem_if, "up" if up else "down")
        sh("ip", "-n", self.cloud, "link", "set", self.cloud_if, "up" if up else "down")

    def close(self) -> None:
        for ns in (self.onprem, self.cloud):
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.host_if, check=False)
