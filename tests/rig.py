"""The test rig: real tansu brokers and a real Causeway, on ports picked at run time.

Everything here starts real processes: `tansu broker` (a Kafka-compatible broker)
and the `causeway` binary built by cargo. Clients in the tests are real client
libraries (librdkafka via confluent-kafka and kcat, kafka-python, aiokafka, kafkajs).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools"


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def causeway_bin() -> Path:
    path = Path(os.environ.get("CAUSEWAY_BIN", target_dir() / "release" / "causeway"))
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `cargo build --release` first")
    return path


def tansu_bin() -> Path:
    path = Path(os.environ.get("TANSU_BIN", TOOLS / "bin" / "tansu"))
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run scripts/setup.sh first")
    return path


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class Process:
    """A child process whose output goes to a log file, stopped on close()."""

    def __init__(self, name: str, args: list[str], env: dict | None = None):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            args,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def output(self) -> str:
        with open(self.log.name, "r", errors="replace") as f:
            return f.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Tansu:
    """One tansu process: a single-broker Kafka cluster with in-memory storage."""

    def __init__(self, cluster_id: str = "backend", port: int | None = None):
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        url = f"tcp://{self.addr}"
        self.process = Process(
            "tansu",
            [
                str(tansu_bin()),
                "broker",
                "--cluster-id",
                cluster_id,
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            env={"RUST_LOG": os.environ.get("TANSU_LOG", "warn")},
        )
        wait_for_port(self.port)

    def create_topic(self, name: str, partitions: int = 1) -> None:
        subprocess.run(
            [
                str(tansu_bin()),
                "topic",
                "create",
                name,
                "--partitions",
                str(partitions),
                "--broker",
                f"tcp://{self.addr}",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def close(self) -> None:
        self.process.close()


class Gateway:
    """A Causeway process in front of the given backend brokers."""

    def __init__(
        self,
        backends: list[str] | None = None,
        config: str | None = None,
        extra_env=None,
        advertised: str | None = None,
    ):
        self.port = free_port()
        self.admin_port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.admin = f"127.0.0.1:{self.admin_port}"
        if config is not None:
            self.config_file = tempfile.NamedTemporaryFile(
                "w", prefix="causeway-", suffix=".toml", delete=False
            )
            self.config_file.write(
                config.format(listen=self.addr, admin=self.admin)
            )
            self.config_file.close()
            args = [str(causeway_bin()), "run", "--config", self.config_file.name]
        else:
            args = [str(causeway_bin()), "run", "--listen", self.addr, "--admin", self.admin]
            for b in backends or []:
                args += ["--backend", b]
            if advertised:
                args += ["--advertised", advertised]
        env = {"CAUSEWAY_LOG": os.environ.get("CAUSEWAY_LOG", "info")}
        env.update(extra_env or {})
        self.process = Process("causeway", args, env=env)
        wait_for_port(self.port)
        wait_for_port(self.admin_port)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.get("/readyz")
            if status == 200 and json.loads(body).get("ready"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"causeway not ready after {timeout}s:\n{self.process.output()}")

    def metrics(self) -> dict[str, float]:
        """Prometheus samples by their full name with labels."""
        status, body = self.get("/metrics")
        assert status == 200, body
        out = {}
        for line in body.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
        return out

    def close(self) -> None:
        self.process.close()


def kcat() -> str:
    path = shutil.which("kcat")
    if path is None:
        raise RuntimeError("kcat is missing: run scripts/setup.sh first")
    return path


def node_modules() -> Path:
    return TOOLS / "node" / "node_modules"
