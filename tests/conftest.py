"""Shared fixtures: one tansu broker and one Causeway in front of it per test session,
plus a factory for uniquely named topics. Tests that need their own processes (to
kill them, or to feed them garbage) start them with the rig directly."""

import itertools
import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from rig import Gateway, Tansu  # noqa: E402

_names = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def files_under_pytest_tmp(tmp_path_factory):
    """Process logs, configs and certificates of a run go under pytest's own
    temporary directory (the latest run is /tmp/pytest-of-$USER/pytest-current),
    which keeps the last three runs, for reading a failure's logs, and deletes
    older ones."""
    tempfile.tempdir = str(tmp_path_factory.mktemp("files"))
    yield
    tempfile.tempdir = None


@pytest.fixture(scope="session")
def backend():
    broker = Tansu()
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def gateway(backend):
    gw = Gateway([backend.addr])
    gw.wait_ready()
    yield gw
    gw.close()


@pytest.fixture
def new_topic(backend, request):
    """new_topic(partitions=1) -> a fresh topic name created on the backend."""

    def make(partitions: int = 1, prefix: str | None = None) -> str:
        base = prefix or request.node.name.replace("[", "-").replace("]", "").replace("_", "-")
        name = f"{base[:60]}-{next(_names)}"
        backend.create_topic(name, partitions)
        return name

    return make
