"""A plugin package written from hookspecs.py alone (tests/plugins/hpa-plugin-testkit),
installed as a real distribution (pip, no network) and run through the whole pipeline:
train-image --backbone (a backbone without `config`, an option through --option),
pseudolabel, denoise --denoiser with -o (its embeddings a plain float32 array),
select-mitotic --neighbours on its neighbour lists, train-cell, predict, hpa plugins.
Also the one-line errors for broken plugin objects, a name clash with a built-in, and a
checkpoint whose plugin package is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_checks import ok, refused

PACKAGE = Path(__file__).parent / "plugins" / "hpa-plugin-testkit"


@pytest.fixture(scope="module")
def testkit_site(tmp_path_factory):
    """pip-install the testkit package (a copy: pip builds in the source tree) into a folder."""
    work = tmp_path_factory.mktemp("testkit")
    src = work / "src"
    shutil.copytree(PACKAGE, src)
    site = work / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                          "--no-build-isolation", "--target", str(site), str(src)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (site / "hpa_plugin_testkit").is_dir() and list(site.glob("hpa_plugin_testkit-0.1.0.dist-info"))
    return site


def _fresh_plugins(monkeypatch):
    """A new plugin manager: entry points are read again from sys.path."""
    import importlib

    from hpacli import pm

    importlib.invalidate_caches()
    monkeypatch.delenv(pm.ENV_LOAD, raising=False)
    monkeypatch.setattr(pm, "_manager", pm._Manager())


@pytest.fixture
def testkit(testkit_site, monkeypatch):
    monkeypatch.syspath_prepend(str(testkit_site))
    _fresh_plugins(monkeypatch)
    yield testkit_site
    for name in [m for m in sys.modules if m.startswith("hpa_plugin_testkit")]:
        del sys.modules[name]


@pytest.mark.slow
def test_plugin_package_through_the_pipeline(testkit, tmp_path, tiny_dataset, cli, monkeypatch):
    from hpacli.store import denoise as D
    from hpacli.store import open_store
    from hpacli.store import predictions as P

    s = tmp_path / "hpa.zarr"
    runs = tmp_path / "runs"
    ok(cli(["ingest", tiny_dataset, "--store", s, "-q"]))
    ok(cli(["segment", "--store", s, "-q"]))
    ok(cli(["fold", "--store", s, "-k", "2", "--seed", "0", "--ignore-duplicates"]))
    ok(cli(["fold", "--store", s, "--cells", "-k", "2"]))
    common = ["--img-size", "32", "--negatives", "all", "--epochs", "1", "--batch-size", "2", "--accum", "1",
              "--workers", "0", "--device", "cpu", "-q"]
    for f in (0, 1):
        ok(cli(["train-image", "--store", s, "--fold", f, "--out", runs / f"fold{f}", "--backbone", "testkit-net",
                 "--option", "width=4", *common]))
    ck = torch.load(runs / "fold0" / "best.pt", weights_only=True)
    assert ck["model_config"] == {"backbone": "testkit-net", "num_classes": 19, "in_chans": 4, "width": 4}
    assert ck["backbone_provider"] == {"plugin": "testkit", "package": "hpa-plugin-testkit", "version": "0.1.0"}

    ok(cli(["pseudolabel", "--store", s, "--models", runs / "fold*" / "best.pt", "--run", "r", "--device", "cpu",
             "--workers", "0", "-q"]))
    # the denoiser's own option, checked against its factory; a key it does not take is one line
    refused(cli(["denoise", "--store", s, "--run", "r", "--denoiser", "testkit-knn-vote", "-o", "kk=3", "-q"]),
              "testkit-knn-vote", "kk", "k, alpha")
    res = ok(cli(["denoise", "--store", s, "--run", "r", "--denoiser", "testkit-knn-vote", "-o", "k=3",
                   "-o", "alpha=0.4", "--json"]))
    out = json.loads(res.stdout)
    assert out["denoiser"] == "testkit-knn-vote" and out["folds_done"] == [0, 1] and out["complete"]
    st = open_store(s, "r")
    info = D.info(st, "r")
    assert info["params"] == {"k": 3, "alpha": 0.4}
    fold = D.read(st, "r")["fold"]
    knn = D.read_knn(st, "r")
    done = np.flatnonzero(fold >= 0)
    assert len(done) and knn.shape[1] == 3 and (knn[done] >= 0).all()
    assert (fold[knn[done]] == fold[done][:, None]).all()  # neighbours from the cell's own fold
    assert not (knn[done] == done[:, None]).any()  # the others only

    # select-mitotic grows known positives through the plugin's neighbour lists
    ids = st.images.ids()
    labels = st.images.labels()
    cls = int(np.argmax(labels.sum(axis=0)))
    res = ok(cli(["select-mitotic", "--store", s, "--run", "r", "--class", cls, "--name", "sel", "--top", "0",
                   "--known", "outliers", "--neighbours", "2", "--min-hits", "1", "-o", tmp_path / "sel", "--json"]))
    sel = json.loads(res.stdout)
    assert sel["counts"]["neighbours"] is not None and sel["counts"]["known"] > 0
    assert len(sel["cells"]) >= sel["counts"]["known"]

    ok(cli(["train-cell", "--store", s, "--fold", "0", "--labels", "r", "--out", runs / "cell",
             "--init-from", runs / "fold0" / "best.pt", "--img-size", "32", "--epochs", "1", "--batch-size", "4",
             "--accum", "1", "--workers", "0", "--device", "cpu", "-q"]))
    assert torch.load(runs / "cell" / "best.pt", weights_only=True)["model_config"]["backbone"] == "testkit-net"
    res = ok(cli(["predict", "--store", s, "--models", runs / "cell" / "best.pt", "--split", "test",
                   "--device", "cpu", "--workers", "0", "--json"]))
    pred = json.loads(res.stdout)
    assert pred["complete"] and pred["cells_predicted"] > 0
    probs = P.read_probs(open_store(s, "r"), "default")
    assert np.isfinite(probs).all(axis=1).sum() == pred["cells_predicted"]
    assert len(ids)

    res = ok(cli(["plugins"]))
    assert "hpa-plugin-testkit" in res.output and "testkit-knn-vote" in res.output
    # the clash with a built-in name is refused and said, not silently dropped
    assert "densenet121-hpa" in res.output and "registered first" in res.output
    data = json.loads(ok(cli(["plugins", "--json"])).stdout)
    kit = next(p for p in data["plugins"] if p["name"] == "testkit")
    assert kit["package"] == "hpa-plugin-testkit" and kit["version"] == "0.1.0" and not kit["builtin"]
    assert "testkit-net" in kit["registers"]["backbones"] and kit["registers"]["denoisers"] == ["testkit-knn-vote"]
    assert any(f["name"] == "testkit" and "'densenet121-hpa'" in f["error"] for f in data["failed"])
    from hpacli.registry import BACKBONES

    assert BACKBONES.get("densenet121-hpa").plugin == "hpacli.builtin.backbones"
    res = ok(cli(["plugins", "--options", "denoiser", "testkit-knn-vote"]))
    assert "k\t5" in res.output and "alpha\t0.5" in res.output

    # without the package, its checkpoints say what to install
    for name in [m for m in sys.modules if m.startswith("hpa_plugin_testkit")]:
        del sys.modules[name]
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(testkit)])
    _fresh_plugins(monkeypatch)
    refused(cli(["pseudolabel", "--store", s, "--models", runs / "fold0" / "best.pt", "--run", "gone",
                   "--device", "cpu", "--workers", "0", "-q"]), "testkit-net", "hpa-plugin-testkit", "pip install")


def test_broken_backbones_are_one_line(testkit, tmp_path, tiny_dataset, cli):
    s = tmp_path / "hpa.zarr"
    ok(cli(["ingest", tiny_dataset, "--store", s, "-q"]))
    ok(cli(["fold", "--store", s, "-k", "2", "--seed", "0", "--ignore-duplicates"]))
    common = ["--store", s, "--img-size", "32", "--negatives", "all", "--epochs", "1", "--batch-size", "2",
              "--workers", "0", "--device", "cpu", "-q"]
    refused(cli(["train-image", *common, "--out", tmp_path / "a", "--backbone", "testkit-badshape"]),
              "testkit-badshape", "hpa-plugin-testkit", "(2, 20)", "(2, 19)")
    refused(cli(["train-image", *common, "--out", tmp_path / "b", "--backbone", "testkit-notmodule"]),
              "testkit-notmodule", "hpa-plugin-testkit", "dict", "torch.nn.Module")
    refused(cli(["train-image", *common, "--out", tmp_path / "c", "--backbone", "testkit-net",
                   "--option", "depth=3"]), "testkit-net", "depth", "width")
