"""Shared fixtures: tiny Kaggle-layout datasets, a CLI runner, plugin registration."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HPA_CACHE_DIR", "")  # no plugin-command cache in the user's home (tests/test_startup.py sets one)

import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from tests.datasets import make_kaggle_dataset  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture
def tiny_dataset(tmp_path):
    """12 train + 3 test images of 64x64 in the Kaggle layout."""
    return make_kaggle_dataset(tmp_path / "data", n_train=12, n_test=3, size=64, seed=0)


@pytest.fixture
def cli():
    """Invoke `hpa ...` in-process: cli(["ingest", ...]) -> click Result."""
    from hpacli.cli.app import build_app

    runner = CliRunner()

    def invoke(args, **kw):
        return runner.invoke(build_app(), [str(a) for a in args], **kw)

    return invoke


@pytest.fixture
def register_plugin():
    """Register plugin objects for one test; they are removed afterwards."""
    from hpacli.pm import register_plugin as _register
    from hpacli.pm import unregister_plugin

    names = []

    def register(plugin, name):
        _register(plugin, name)
        names.append(name)

    yield register
    for name in names:
        unregister_plugin(name)
