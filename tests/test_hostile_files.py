"""Hostile and broken weight files: nothing in them runs, every refusal is one line.

Every loader a user reaches (``--models``, ``--image-model``, ``--init-from``,
``--nuclei-model``/``--cell-model``, ``hpacli.load_weights`` for plugins) goes through
``hpacli.models.weightfile``; these tests hand each of them files that would run code (a
``__reduce__`` pickle, a real TorchScript archive whose ``__setstate__`` writes a file, a zip
with a ``code/`` record) and files that are merely broken, and check that the marker file
never appears and that the CLI answers with one line (exit 2) naming the file.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from hpacli.errors import HpaError, InputError
from hpacli.models.weightfile import UnsafeCheckpointError, inspect_weight_file, load_weights


# ------------------------------------------------------------------------------ payloads
class _Touch:
    """Unpickling this runs ``os.system('touch <marker>')``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ScriptedSetstate(torch.nn.Module):
    """Scripted, its ``__setstate__`` runs inside ``torch.jit.load`` and creates ``marker``."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.w = torch.nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return x + self.w

    @torch.jit.export
    def __getstate__(self):
        return (self.marker, self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]):
        self.marker = state[0]
        self.w = state[1]
        self.training = state[2]
        t = torch.from_file(self.marker, shared=True, size=4, dtype=torch.uint8)  # creates the file
        t.fill_(1)
        print("setstate ran", t.sum())


def torchscript_archive(path: Path, marker: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated, still works
        torch.jit.save(torch.jit.script(_ScriptedSetstate(str(marker))), str(path))
    return path


def code_zip(path: Path) -> Path:
    """A torch.save zip (weights only) plus a ``code/`` record and nothing else odd."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    buf.seek(0)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        top = src.namelist()[0].split("/")[0]
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr(f"{top}/code/__torch__.py", "import os\nos.system('touch pwned')\n")
    return path


def evil_pickles(tmp: Path, marker: Path) -> dict[str, Path]:
    out = {}
    payload = {"state_dict": {"w": torch.zeros(2)}, "x": _Touch(marker)}
    out["pickle-zip"] = tmp / "evil_zip.pt"
    torch.save(payload, out["pickle-zip"])
    out["pickle-legacy"] = tmp / "evil_legacy.pt"
    torch.save(payload, out["pickle-legacy"], _use_new_zipfile_serialization=False)
    out["pickle-raw"] = tmp / "evil_raw.pkl"
    out["pickle-raw"].write_bytes(pickle.dumps(payload, protocol=2))
    return out


@pytest.fixture
def hostile(tmp_path):
    marker = tmp_path / "MARKER"
    files = evil_pickles(tmp_path, marker)
    files["torchscript"] = torchscript_archive(tmp_path / "scripted.pt", marker)
    files["code-zip"] = code_zip(tmp_path / "code.pt")
    return files, marker


def test_the_torchscript_payload_really_runs_when_loaded_the_unsafe_way(tmp_path):
    """The archive is a real threat (so the refusals below mean something)."""
    import warnings

    marker = tmp_path / "ran"
    path = torchscript_archive(tmp_path / "s.pt", marker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.load(path, weights_only=False)  # what a restricted pickle_module did not prevent
    assert marker.exists()
    assert {"constants.pkl", "code"} & {p for n in zipfile.ZipFile(path).namelist() for p in n.split("/")}


def _loaders():
    from hpacli.models.bestfitting import read_bestfitting
    from hpacli.models.checkpoint import init_from, load_model, read_checkpoint
    from hpacli.segment.weights import load_dpn_unet

    def init(path):
        return init_from(torch.nn.Linear(2, 2), path)

    return {"load_weights": load_weights, "read_checkpoint": read_checkpoint, "load_model": load_model,
            "init_from": init, "bestfitting": read_bestfitting, "dpn-unet": load_dpn_unet}


@pytest.mark.parametrize("loader", list(_loaders()))
def test_every_loader_refuses_code_before_running_it(hostile, loader):
    files, marker = hostile
    load = _loaders()[loader]
    for kind, path in files.items():
        with pytest.raises(HpaError) as err:
            load(path)
        msg = str(err.value)
        assert str(path) in msg and "\n" not in msg, (kind, msg)
        assert "weights_only" not in msg, (kind, msg)
        if kind in ("torchscript", "code-zip", "pickle-zip", "pickle-legacy"):
            assert isinstance(err.value, UnsafeCheckpointError), (kind, msg)
        assert not marker.exists(), kind
    assert not marker.exists()


def test_refusals_say_what_the_file_is(hostile, tmp_path):
    files, _ = hostile
    with pytest.raises(UnsafeCheckpointError, match="TorchScript archive .*would run the code"):
        load_weights(files["torchscript"])
    with pytest.raises(UnsafeCheckpointError, match=r"TorchScript archive \(it holds '.*code/__torch__.py'\)"):
        load_weights(files["code-zip"])
    with pytest.raises(UnsafeCheckpointError, match="refers to (posix|nt|os).system"):
        load_weights(files["pickle-zip"])
    # an unknown member in an otherwise plain zip: refused, named
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    odd = tmp_path / "odd.pt"
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(odd, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr(f"{src.namelist()[0].split('/')[0]}/helper.py", "print('hi')")
    with pytest.raises(UnsafeCheckpointError, match="helper.py"):
        load_weights(odd)
    # the plain files load, and the byte check names their format
    ok_zip, ok_legacy = tmp_path / "ok.pt", tmp_path / "ok_legacy.pt"
    torch.save({"w": torch.ones(3)}, ok_zip)
    torch.save({"w": torch.ones(3)}, ok_legacy, _use_new_zipfile_serialization=False)
    assert inspect_weight_file(ok_zip) == "zip" and inspect_weight_file(ok_legacy) == "pickle"
    for p in (ok_zip, ok_legacy):
        assert torch.equal(load_weights(p)["w"], torch.ones(3))
    import hpacli

    assert hpacli.load_weights is load_weights  # the door plugins use
    # a suffix does not change how a file is read (torch.load would treat *.safetensors apart)
    renamed = tmp_path / "weights.safetensors"
    renamed.write_bytes(ok_zip.read_bytes())
    assert torch.equal(load_weights(renamed)["w"], torch.ones(3))


def broken_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the one-line message must say)."""
    out = {}
    good = tmp / "good.pt"
    torch.save({"w": torch.zeros(64)}, good)
    data = good.read_bytes()
    (tmp / "empty.pt").write_bytes(b"")
    out["empty"] = (tmp / "empty.pt", "is empty")
    (tmp / "text.pt").write_text("these are not weights\n")
    out["text"] = (tmp / "text.pt", "is a text file")
    (tmp / "lfs.pt").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    out["lfs"] = (tmp / "lfs.pt", "Git LFS pointer")
    (tmp / "cut.pt").write_bytes(data[: len(data) // 2])
    out["truncated-zip"] = (tmp / "cut.pt", "damaged or truncated")
    legacy = tmp / "legacy.pt"
    torch.save({"w": torch.zeros(64)}, legacy, _use_new_zipfile_serialization=False)
    (tmp / "cut_legacy.pt").write_bytes(legacy.read_bytes()[:60])
    out["truncated-legacy"] = (tmp / "cut_legacy.pt", "damaged or truncated")
    (tmp / "garbage.pt").write_bytes(b"\x80\x02" + bytes(range(200, 256)) * 4)
    out["garbage-pickle"] = (tmp / "garbage.pt", "damaged or not a torch.save checkpoint")
    # a global torch's allow-list refuses: torch's own message would advise weights_only=False
    import fractions

    torch.save({"w": fractions.Fraction(1, 3)}, tmp / "fraction.pt")
    out["foreign-global"] = (tmp / "fraction.pt", "refers to fractions.Fraction")
    (tmp / "binary.pt").write_bytes(bytes([0, 1, 2, 3, 250, 251]) * 20)
    out["binary"] = (tmp / "binary.pt", "not a PyTorch checkpoint")
    return out


def bad_configs(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Our own format with a missing or malformed model config."""
    from hpacli.models.checkpoint import save_checkpoint
    from hpacli.models.timm_wrap import TimmClassifier

    m = TimmClassifier("test_resnet")
    sd = m.state_dict()
    extra = {"train_config": {"extra": {"stage": "train-cell", "img_size": 32, "fold": 0,
                                        "cell_input": {"size": 32, "fit": "resize"}}}}
    cases = {
        "no-config": ({"model": sd}, "has no model config"),
        "config-not-dict": ({"model_config": "resnet", "model": sd}, "is a str, not a dict"),
        "no-backbone": ({"model_config": {"num_classes": 19}, "model": sd}, "names no backbone"),
        "unknown-backbone": ({"model_config": {"backbone": "no-such-net"}, "model": sd}, "no-such-net"),
        "bad-kwargs": ({"model_config": {**m.config, "bogus_kw": 3}, "model": sd}, "cannot be built"),
        "loads-a-file": ({"model_config": {**m.config, "checkpoint_path": str(tmp / "x.pt")}, "model": sd},
                         "asks the backbone to load weights"),
        "no-weights": ({"model_config": m.config}, "holds no weights"),
        "wrong-shapes": ({"model_config": {**m.config, "num_classes": 7}, "model": sd}, "does not fit"),
    }
    out = {}
    for name, (payload, want) in cases.items():
        path = tmp / f"cfg_{name}.pt"
        save_checkpoint(path, {**payload, **extra})
        out[name] = (path, want)
    return out


def test_broken_files_and_bad_configs_are_one_line_errors(tmp_path):
    from hpacli.models.checkpoint import load_model

    for name, (path, want) in broken_files(tmp_path).items():
        with pytest.raises(HpaError) as err:
            load_weights(path)
        msg = str(err.value)
        assert want in msg and str(path) in msg and "\n" not in msg, (name, msg)
        assert "weights_only" not in msg and "likely succeed" not in msg, (name, msg)
    for name, (path, want) in bad_configs(tmp_path).items():
        with pytest.raises(HpaError) as err:
            load_model(path)
        msg = str(err.value)
        assert want in msg and str(path) in msg and "\n" not in msg, (name, msg)
    with pytest.raises(InputError, match="does not exist"):
        load_weights(tmp_path / "nowhere.pt")
    with pytest.raises(InputError, match="is a folder"):
        load_weights(tmp_path)


# ------------------------------------------------------------------------------------ CLI
@pytest.fixture
def cli_store(tmp_path, tiny_dataset, cli):
    store = tmp_path / "hpa.zarr"
    res = cli(["ingest", tiny_dataset, "--store", store, "-q"])
    assert res.exit_code == 0, res.output
    return store


def _one_line_refusal(res, path: Path, marker: Path | None = None, want: str = ""):
    text = res.output.strip()
    assert res.exit_code == 2, text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    assert str(path) in text and want in text, text
    assert "weights_only" not in text and "likely succeed" not in text, text
    if marker is not None:
        assert not marker.exists()


def test_cli_refuses_hostile_and_broken_files_everywhere(tmp_path, cli_store, cli, hostile):
    files, marker = hostile
    (tmp_path / "b").mkdir()
    broken, configs = broken_files(tmp_path / "b"), bad_configs(tmp_path / "b")
    s = str(cli_store)
    for kind, path in files.items():
        want = "TorchScript" if kind in ("torchscript", "code-zip") else ""
        _one_line_refusal(cli(["predict", "--store", s, "--models", path, "--device", "cpu", "-q"]), path, marker, want)
        _one_line_refusal(cli(["predict", "--store", s, "--image-model", path, "--device", "cpu", "-q"]), path, marker,
                          want)
        _one_line_refusal(cli(["segment", "--store", s, "--segmenter", "hpa-unet", "--nuclei-model", path,
                               "--cell-model", path, "--device", "cpu", "-q"]), path, marker, want)
        _one_line_refusal(cli(["pseudolabel", "--store", s, "--models", path, "--device", "cpu", "-q"]), path, marker,
                          want)
    for path, want in [*broken.values(), *configs.values()]:
        _one_line_refusal(cli(["predict", "--store", s, "--models", path, "--device", "cpu", "-q"]), path, want=want)
    for name in ("empty", "text", "truncated-zip", "garbage-pickle", "foreign-global"):
        path, want = broken[name]
        _one_line_refusal(cli(["segment", "--store", s, "--segmenter", "hpa-unet", "--nuclei-model", path,
                               "--cell-model", path, "--device", "cpu", "-q"]), path, want=want)
    # nothing was recorded in the store by the refused runs
    from hpacli.store import open_store

    st = open_store(cli_store, "r")
    assert not st.has("segment") and not st.has("predictions")


def test_cli_init_from_refuses_hostile_files(tmp_path, cli_store, cli, hostile):
    files, marker = hostile
    s = str(cli_store)
    assert cli(["fold", "--store", s, "-k", "2", "--ignore-duplicates"]).exit_code == 0
    for path in files.values():
        res = cli(["train-image", "--store", s, "--fold", "0", "--out", tmp_path / "run", "--init-from", path,
                   "--backbone", "test_resnet", "--img-size", "32", "--negatives", "all", "--epochs", "1",
                   "--batch-size", "2", "--device", "cpu", "-q"])
        _one_line_refusal(res, path, marker)
