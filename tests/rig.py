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
import struct
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


class Exited(RuntimeError):
    """A process the rig started ended before it listened."""

    def __init__(self, name: str, output: str):
        super().__init__(f"{name} exited before listening:\n{output}")
        self.output = output

    def lost_port(self) -> bool:
        """Whether it died because another socket took the port picked for it."""
        text = self.output.lower()
        return "address already in use" in text or "addrinuse" in text


def wait_for_port(port: int, timeout: float = 10.0, process: "Process | None" = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise Exited(process.name, process.output())
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    output = f":\n{process.output()}" if process is not None else ""
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s{output}")


def start_listening(start, attempts: int = 3):
    """Calls `start()` until what it starts keeps the ports picked for it.

    Ports come from `free_port()`, which lets go of the port before the process binds
    it; on a busy machine another socket can take it in between.
    """
    for attempt in range(attempts):
        try:
            return start()
        except Exited as e:
            if not e.lost_port() or attempt + 1 == attempts:
                raise


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

    def __init__(self, cluster_id: str = "backend", port: int | None = None, advertised: str | None = None):
        """`advertised`: the host:port clients are told to use, when something
        else (a relay) listens there for the broker."""
        if port is not None:
            self._launch(cluster_id, port, advertised)
        else:
            start_listening(lambda: self._launch(cluster_id, free_port(), advertised))

    def _launch(self, cluster_id: str, port: int, advertised: str | None) -> None:
        self.port = port
        self.addr = f"127.0.0.1:{self.port}"
        url = f"tcp://{self.addr}"
        process = Process(
            "tansu",
            [
                str(tansu_bin()),
                "broker",
                "--cluster-id",
                cluster_id,
                "--listener-url",
                url,
                "--advertised-listener-url",
                f"tcp://{advertised}" if advertised else url,
                "--storage-engine",
                "memory://tansu/",
            ],
            env={"RUST_LOG": os.environ.get("TANSU_LOG", "warn")},
        )
        try:
            wait_for_port(self.port, process=process)
        except BaseException:
            process.close()
            raise
        self.process = process

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
        start_listening(lambda: self._launch(backends, config, extra_env, advertised))

    def _launch(self, backends, config, extra_env, advertised) -> None:
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
        process = Process("causeway", args, env=env)
        try:
            wait_for_port(self.port, process=process)
            wait_for_port(self.admin_port, process=process)
        except BaseException:
            process.close()
            raise
        self.process = process

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def post(self, path: str, body: bytes = b"") -> tuple[int, str]:
        req = urllib.request.Request(f"http://{self.admin}{path}", data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
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


# --- several clusters behind one gateway ---------------------------------------------------


def recv_exactly(s: socket.socket, n: int) -> bytes:
    """`n` bytes from `s`; ConnectionError if it closes first."""
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def read_frame(s: socket.socket) -> bytes:
    """One Kafka frame from `s`, without its length prefix."""
    (n,) = struct.unpack(">i", recv_exactly(s, 4))
    return recv_exactly(s, n)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Polls `predicate` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string of plain text is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def routes_toml(routes: list[dict]) -> str:
    """`[[routes]]` tables for route dicts shaped like the admin API's route objects."""
    out = []
    for route in routes:
        out.append("[[routes]]")
        out += [f"{k} = {_toml_value(v)}" for k, v in route.items()]
        out.append("")
    return "\n".join(out)


def clusters_config(
    clusters: dict[str, str],
    routes: list[dict],
    *,
    listen: str | None = None,
    admin: str | None = None,
    health_interval_ms: int = 500,
) -> str:
    """A config with one `[clusters.NAME]` per entry of `clusters` (name -> bootstrap
    address) and the given routes.

    Without `listen`/`admin` the text is a template for `Gateway(config=...)`: it has
    `{listen}` and `{admin}` placeholders and every other brace doubled, since the
    Gateway runs it through str.format. With both, it is a finished file (for
    `causeway check`, or for rewriting a running gateway's file)."""
    template = listen is None and admin is None
    body = []
    for name, bootstrap in clusters.items():
        body += [
            f"[clusters.{name}]",
            f"bootstrap = {_toml_value([bootstrap])}",
            f"health_interval_ms = {health_interval_ms}",
            "",
        ]
    body.append(routes_toml(routes))
    text = "\n".join(body)
    if template:
        text = text.replace("{", "{{").replace("}", "}}")
        listen, admin = "{listen}", "{admin}"
    head = (
        "[gateway]\n"
        f'listen = "{listen}"\n'
        'cluster_id = "causeway-multi"\n'
        "\n"
        "[admin]\n"
        f'listen = "{admin}"\n'
        "\n"
    )
    return head + text


def rewrite_gateway_config(gw: "Gateway", clusters: dict[str, str], routes: list[dict], **kw) -> None:
    """Writes a new config over the file a running Gateway was started with (same
    listen and admin addresses), for POST /reload."""
    text = clusters_config(clusters, routes, listen=gw.addr, admin=gw.admin, **kw)
    Path(gw.config_file.name).write_text(text)


def admin_call(gw: "Gateway", method: str, path: str, body=None, raw: bytes | None = None):
    """An admin HTTP request; returns (status, parsed JSON body or None if not JSON, text)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(f"http://{gw.admin}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    return status, parsed, text


def causeway_check(text: str) -> subprocess.CompletedProcess:
    """`causeway check --config FILE` on `text` written to a temporary file."""
    with tempfile.NamedTemporaryFile("w", prefix="check-", suffix=".toml", delete=False) as f:
        f.write(text)
    try:
        return subprocess.run(
            [str(causeway_bin()), "check", "--config", f.name],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        os.unlink(f.name)


def plugin_component(name: str) -> str:
    """The built component of example plugin `name` (scripts/build-plugins.sh)."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-plugins.sh"), "--print-out-dir"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    path = Path(out) / f"{name}.wasm"
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run scripts/build-plugins.sh first")
    return str(path)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(dir: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA in `dir`: (name.pem, name-key.pem)."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}-key.pem", "-out", f"{name}.pem", "-days", "30",
            "-subj", f"/O=Causeway Tests/CN={name}", cwd=dir)
    return dir / f"{name}.pem", dir / f"{name}-key.pem"


def make_cert(dir: Path, name: str, subject: str, ca: str, server: bool = False,
              expired: bool = False, utf8_strings: str | None = None) -> tuple[Path, Path]:
    """A certificate signed by CA `ca` (made by make_ca in `dir`): (name.pem, name-key.pem).
    A server certificate is for 127.0.0.1 and localhost. `expired`: valid only
    in 2020. `utf8_strings`: OpenSSL's string_mask for the subject, read as
    UTF-8 ("default" picks BMPString for characters beyond Latin-1)."""
    req = ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
           "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", subject]
    if utf8_strings:
        cnf = dir / f"{name}-req.cnf"
        cnf.write_text(f"[req]\ndistinguished_name=dn\nstring_mask={utf8_strings}\n[dn]\n")
        req += ["-config", cnf.name, "-utf8"]
    openssl(*req, cwd=dir)
    ext = dir / f"{name}.ext"
    if server:
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    else:
        ext.write_text("extendedKeyUsage=clientAuth\n")
    if expired:
        # `openssl x509` cannot back-date; `openssl ca` can.
        db = dir / f"{name}-ca"
        db.mkdir()
        (db / "index.txt").write_text("")
        cnf = db / "ca.cnf"
        cnf.write_text(
            "[ca]\ndefault_ca=d\n[d]\n"
            f"database={db}/index.txt\nnew_certs_dir={db}\nrand_serial=yes\n"
            "default_md=sha256\npolicy=p\nunique_subject=no\n[p]\ncommonName=supplied\n")
        openssl("ca", "-batch", "-config", str(cnf), "-cert", f"{ca}.pem", "-keyfile", f"{ca}-key.pem",
                "-in", f"{name}.csr", "-out", f"{name}.pem", "-notext", "-preserveDN",
                "-startdate", "20200101000000Z", "-enddate", "20200201000000Z", "-extfile", ext.name, cwd=dir)
    else:
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}-key.pem",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "30", "-extfile", ext.name, cwd=dir)
    return dir / f"{name}.pem", dir / f"{name}-key.pem"
