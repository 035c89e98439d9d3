"""Plugins: built-ins through the hooks, fake plugins, a really installed entry point,
broken plugins reported without breaking `hpa`."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys

import numpy as np
import pytest

from hpacli import hookimpl
from hpacli.errors import UnknownNameError
from hpacli.registry import BACKBONES, create_backbone, create_denoiser, list_backbones, list_denoisers


class FakePlugin:
    @hookimpl
    def register_denoisers(self, register):
        register("fake-identity", lambda **kw: type("D", (), {"denoise": lambda self, e, y, progress=None: y})())

    @hookimpl
    def register_backbones(self, register):
        register("fake-net", lambda **kw: "built", description="fake")


class BrokenPlugin:
    @hookimpl
    def register_backbones(self, register):
        raise RuntimeError("boom")


def test_fake_plugin_registers(register_plugin):
    register_plugin(FakePlugin(), "fake")
    assert "fake-identity" in list_denoisers()
    y = np.ones((3, 20))
    assert create_denoiser("fake-identity").denoise(None, y) is y
    assert create_backbone("fake-net") == "built"
    assert BACKBONES.get("fake-net").plugin == "fake"


def test_unknown_name_lists_what_exists(register_plugin):
    register_plugin(FakePlugin(), "fake")
    with pytest.raises(UnknownNameError, match=r"unknown backbone 'fake-nett'.*Did you mean: fake-net"):
        create_backbone("fake-nett")


def test_wildcards():
    names = list_backbones("resnet1*")
    assert "resnet18" in names and all(n.startswith("resnet1") for n in names)
    assert "densenet121" in list_backbones("densenet*")  # every timm name is a backbone


def test_broken_plugin_is_reported_not_fatal(register_plugin, cli):
    register_plugin(BrokenPlugin(), "broken")
    assert "resnet18" in list_backbones()  # the others still register
    assert any(name == "broken" and "boom" in msg for name, msg in BACKBONES.errors)


def test_broken_entry_point_does_not_break_help(tmp_path):
    """A plugin whose module fails to import: `hpa --help` works and names it."""
    dist = tmp_path / "site"
    (dist / "broken_plugin_pkg").mkdir(parents=True)
    (dist / "broken_plugin_pkg" / "__init__.py").write_text("raise ImportError('no such thing')\n")
    info = dist / "broken_plugin_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hpa]\nbroken = broken_plugin_pkg\n")
    env = {"PYTHONPATH": str(dist), "PATH": "/usr/bin:/bin", "HPA_CACHE_DIR": ""}
    res = subprocess.run([sys.executable, "-m", "hpacli.cli.app", "--help"], env=env, capture_output=True, text=True)
    assert res.returncode == 0
    assert "broken" in res.stderr and "no such thing" in res.stderr
    assert "ingest" in res.stdout
    env["HPA_LOAD_PLUGINS"] = ""
    res = subprocess.run([sys.executable, "-m", "hpacli.cli.app", "--help"], env=env, capture_output=True, text=True)
    assert res.returncode == 0 and "broken" not in res.stderr


def test_installed_example_plugin_is_discovered(cli):
    eps = {ep.name: ep for ep in md.entry_points(group="hpa")}
    assert "example" in eps, "install plugins/hpa-plugin-example (`.ci/run` does)"
    res = cli(["plugins"])
    assert res.exit_code == 0
    assert "hpa-plugin-example" in res.output and "example-tiny-cnn" in res.output
    res = cli(["plugins", "--list", "denoisers"])
    assert "example-knn-mean" in res.output


def test_example_backbone_trains_one_step():
    import torch

    torch.manual_seed(0)
    model = create_backbone("example-tiny-cnn", num_classes=19, in_chans=4)
    x = torch.rand(4, 4, 64, 64)
    y = (torch.rand(4, 19) > 0.8).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    loss0 = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    loss0.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    logits, emb = model.forward_with_embedding(x)
    assert logits.shape == (4, 19) and emb.shape == (4, model.embedding_dim)


def test_allow_list_env(monkeypatch):
    from hpacli import pm

    monkeypatch.setenv(pm.ENV_LOAD, "something-else")
    fresh = pm._Manager()
    fresh.load()
    assert "example" not in fresh.info and "hpacli.builtin.backbones" in fresh.info
    monkeypatch.setenv(pm.ENV_LOAD, "example")
    fresh = pm._Manager()
    fresh.load()
    assert "example" in fresh.info


def test_builtin_loss_names_match_the_losses_module():
    """builtin/losses.py lists the names without importing torch; they must be the real ones."""
    from hpacli.builtin.losses import LOSSES
    from hpacli.registry import list_losses
    from hpacli.train.losses import BASE_LOSSES, loss_names

    assert {k: v[1] for k, v in BASE_LOSSES.items()} == LOSSES
    builtin = [n for n in list_losses() if n in set(loss_names())]
    assert sorted(builtin) == sorted(loss_names())


class FamilyPlugin:
    calls = 0

    @staticmethod
    def _names():
        FamilyPlugin.calls += 1
        return ["fam-a", "fam-b", "fake-net"]

    @hookimpl
    def register_backbones(self, register):
        register.family(self._names, lambda name, **kw: f"built {name} {kw}", description="a lazy family")


def test_family_names_are_resolved_only_when_needed(register_plugin):
    FamilyPlugin.calls = 0
    register_plugin(FakePlugin(), "fake")
    register_plugin(FamilyPlugin(), "family")
    assert create_backbone("fake-net") == "built"  # registered one by one: the family is not asked
    assert BACKBONES.summary()["family"] == {"names": [], "families": ["a lazy family"]}
    assert FamilyPlugin.calls == 0
    assert create_backbone("fam-b", num_classes=3) == "built fam-b {'num_classes': 3}"
    assert FamilyPlugin.calls == 1 and BACKBONES.get("fam-a").plugin == "family"
    assert list_backbones("fam-*") == ["fam-a", "fam-b"]
    assert FamilyPlugin.calls == 1  # resolved once
    with pytest.raises(UnknownNameError, match="Did you mean: fam-b, fam-a"):
        create_backbone("fam-c")


def test_plugins_json_and_tables_on_stdout(cli):
    import json

    res = cli(["plugins", "--json"])
    assert res.exit_code == 0 and res.stderr == ""
    data = json.loads(res.stdout)
    by_name = {p["name"]: p for p in data["plugins"]}
    ex = by_name["example"]
    assert ex["package"] == "hpa-plugin-example" and ex["version"] == md.version("hpa-plugin-example")
    assert ex["registers"]["backbones"] == ["example-tiny-cnn"] and not ex["builtin"]
    assert "doctor" in by_name["hpacli.builtin.commands"]["registers"]["commands"]
    res = cli(["plugins"])
    assert res.exit_code == 0 and "hpa-plugin-example" in res.stdout and "timm:" in res.stdout
    res = cli(["plugins", "--list", "denoisers", "--json"])
    assert {"name": "example-knn-mean", "plugin": "example"} == {
        k: v for k, v in next(e for e in json.loads(res.stdout) if e["name"] == "example-knn-mean").items()
        if k != "description"}
    res = cli(["plugins", "--list", "widgets"])
    assert res.exit_code == 2 and "backbones, segmenters, denoisers, losses" in res.output
