"""The command line: `causeway check` on every shipped config, and the demo script."""

import subprocess
from pathlib import Path

import pytest

from rig import ROOT, causeway_bin

CONFIGS = sorted((ROOT / "config").glob("*.toml"))
INVALID = sorted((ROOT / "config" / "invalid").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_pass_check(path):
    r = subprocess.run([str(causeway_bin()), "check", "--config", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{path}: ok"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_configs_fail_check_naming_the_field(path: Path):
    expect = path.read_text().splitlines()[0].removeprefix("# expect: ")
    r = subprocess.run([str(causeway_bin()), "check", "--config", str(path)], capture_output=True, text=True)
    assert r.returncode == 1
    assert expect in r.stderr, r.stderr


def test_run_without_backend_is_a_usage_error():
    r = subprocess.run([str(causeway_bin()), "run", "--listen", "127.0.0.1:0"], capture_output=True, text=True)
    assert r.returncode != 0
    assert "--backend" in r.stderr


def test_run_with_a_bad_flag_value_names_it():
    r = subprocess.run(
        [str(causeway_bin()), "run", "--listen", "127.0.0.1:0", "--backend", "nohostport"],
        capture_output=True, text=True, timeout=10,
    )
    assert r.returncode == 1
    assert "clusters.main.bootstrap[0]: 'nohostport' is not HOST:PORT" in r.stderr


def test_demo_runs_end_to_end():
    r = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), "--once"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    for line in ("alice => hello from alice", "bob => hello from bob", "carol => hello from carol",
                 "o1 => order one", "o2 => order two", 'c1 => {"customer":"ada","card":"***"}'):
        assert out.count(line) == 2, f"{line!r} read through the gateway and directly"
    assert "broker 0 at 127.0.0.1:9092 (controller)" in out
    # Each backend holds only its own topics, the renamed one under its backend name.
    assert "-- onprem (127.0.0.1:19092) holds: fin.payments.cards, orders.eu" in out
    assert "-- cloud (127.0.0.1:29092) holds: greetings" in out
    direct_onprem = out.split("-- onprem")[1].split("-- cloud")[0]
    assert "fin.payments.cards" in direct_onprem and 'c1 => {"customer":"ada","card":"***"}' in direct_onprem
    # The plugin masked the card number before it reached the backend.
    assert "4111" not in out
    # The tenant router: each tenant sees only its own "notes", stored under its prefix.
    assert "tenant acme   lists ['notes']; reads notes offset 0  acme => a note only acme sees" in out
    assert "tenant globex lists ['notes']; reads notes offset 0  globex => a note only globex sees" in out
    assert "-- cloud (127.0.0.1:29092) now holds: acme.notes, globex.notes, greetings" in out
    # The link: the mirror holds the same records at the same offsets, then takes over.
    assert "mirror dr.orders.eu of orders.eu over link dr: ACTIVE" in out
    assert "identical" in out and "DIFFERENT" not in out
    assert "dr.orders.eu of orders.eu over link dr: STOPPED (failed over)" in out
    after = out.split("failing over")[1]
    # Partition 0 read through the switched route: the mirror's records, then o6 after them.
    before = [line for line in out.split("failing over")[0].splitlines() if line.startswith("orders.eu partition 0 ")]
    assert f"orders.eu partition 0 offset {len(before)}  o6: order six, written after the failover" in after
    # The onprem cluster was reached through the bridge the whole time.
    assert "role: cloud" in out and "role: on-prem" in out
    assert out.count("CN=onprem-demo,O=Causeway Demo") >= 2  # two connections, by identity
    assert '"degraded":false' in out
    assert "demo done" in out
