"""DPN-UNet: manifest equality, restricted loading of pickled modules and state_dicts, refusal of
malicious pickles, the hpa-unet segmenter on tiny inputs."""

from __future__ import annotations

import json
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from hpacli.errors import HpaError, InputError
from hpacli.segment import dpn, unet
from hpacli.segment.weights import UnsafeCheckpointError, load_dpn_unet, read_checkpoint

MANIFEST = Path(__file__).resolve().parents[2] / "shared" / "reference" / "hpa-dpnunet.json"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = unet.DPNUnet().eval()
    with torch.no_grad():  # non-trivial BN statistics, so a wrong load shows
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.mark.skipif(not MANIFEST.exists(), reason="reference manifest not available")
@pytest.mark.parametrize("role", ["nuclei", "cell"])
def test_state_dict_equals_manifest(role):
    ref = json.loads(MANIFEST.read_text())[role]["state_dict"]
    with torch.device("meta"):
        m = unet.DPNUnet()
    ours = [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in m.state_dict().items()]
    assert ours == [(k, v[0], v[1]) for k, v in ref.items()]  # same keys, order, shapes, dtypes
    assert sum(p.numel() for p in m.parameters()) == 139_108_867


def test_forward_small_and_padding(model):
    from hpacli.segment.hpa_unet import pad_to_32

    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.randn(1, 3, 48, 48))
    # 1728 * 0.25 = 432 and 3072 * 0.25 = 768 are padded to network-friendly sizes
    assert pad_to_32(torch.zeros(1, 3, 432, 432)).shape[-2:] == (448, 448)
    assert pad_to_32(torch.zeros(1, 3, 768, 768)).shape[-2:] == (768, 768)


def _install_fake_upstream():
    """Register stand-ins for the upstream `pytorch_zoo` classes (same module paths)."""
    mapping = {}
    spec = {"pytorch_zoo.unet": ["DPNUnet"], "pytorch_zoo.abstract_model": ["ConvBottleneck", "UnetDecoderBlock"],
            "pytorch_zoo.dpn": ["DualPathBlock", "BnActConv2d", "CatBnAct"]}
    sys.modules["pytorch_zoo"] = types.ModuleType("pytorch_zoo")
    for modname, names in spec.items():
        mod = types.ModuleType(modname)
        sys.modules[modname] = mod
        for name in names:
            base = getattr(unet, name, None) or getattr(dpn, name)
            cls = type(name, (base,), {"__module__": modname})
            setattr(mod, name, cls)
            mapping[base] = cls
    return mapping


def _remove_fake_upstream():
    for k in [k for k in sys.modules if k == "pytorch_zoo" or k.startswith("pytorch_zoo.")]:
        del sys.modules[k]


def _as_upstream(model):
    mapping = _install_fake_upstream()
    originals = []
    for sub in model.modules():
        if type(sub) in mapping:
            originals.append((sub, type(sub)))
            sub.__class__ = mapping[type(sub)]
    return originals


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pickled_modules_and_state_dicts_load(model, tmp_path, recwarn):
    files = {}
    originals = _as_upstream(model)
    try:
        # the nuclei file: DataParallel-wrapped whole module, legacy format
        files["legacy-wrapped"] = tmp_path / "legacy.pth"
        torch.save(torch.nn.DataParallel(model), files["legacy-wrapped"], _use_new_zipfile_serialization=False)
        files["zip-bare"] = tmp_path / "zip.pth"
        torch.save(model, files["zip-bare"])
    finally:
        for sub, cls in originals:
            sub.__class__ = cls
        _remove_fake_upstream()
    assert "pytorch_zoo" not in sys.modules
    raw = (files["zip-bare"]).read_bytes()
    assert b"pytorch_zoo.unet" in raw or b"pytorch_zoo" in raw
    # a plain state_dict with the DataParallel prefix, legacy format
    files["state-dict"] = tmp_path / "sd.pth"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, files["state-dict"],
               _use_new_zipfile_serialization=False)
    for name, path in files.items():
        loaded = load_dpn_unet(path)
        assert isinstance(loaded, unet.DPNUnet) and not loaded.training, name
        assert _same_weights(loaded, model), name
        path.unlink()
    with torch.no_grad():
        x = torch.randn(1, 3, 32, 32)
        assert torch.allclose(loaded(x), model(x))


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("fmt", ["zip", "legacy", "raw-pickle"])
def test_malicious_pickle_refused(tmp_path, fmt):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"w": torch.zeros(2)}, "x": _Evil(target)}
    if fmt == "raw-pickle":
        path.write_bytes(pickle.dumps({"x": _Evil(target)}))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=(fmt == "zip"))
    with pytest.raises(UnsafeCheckpointError, match="posix.system|os.system|nt.system"):
        read_checkpoint(path)
    assert not target.exists()


def test_bad_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_dpn_unet(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="junk.pth is a text file"):
        load_dpn_unet(junk)
    small = tmp_path / "small.pth"
    torch.save({"final.0.weight": torch.zeros(3, 64, 3, 3)}, small)
    with pytest.raises(InputError, match="missing"):
        load_dpn_unet(small)


def test_hpa_unet_needs_local_weights(monkeypatch):
    from hpacli.segment.hpa_unet import HpaUnetSegmenter

    monkeypatch.delenv("HPA_NUCLEI_MODEL", raising=False)
    monkeypatch.delenv("HPA_CELL_MODEL", raising=False)
    with pytest.raises(HpaError, match="--nuclei-model"):
        HpaUnetSegmenter(device="cpu")


def test_hpa_unet_segmenter_runs_batched(model):
    from hpacli.segment.hpa_unet import HpaUnetSegmenter

    seg = HpaUnetSegmenter(device="cpu", models=(model, model), batch_size=2)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (4, 128, 128), dtype=np.uint8) for _ in range(3)]
    maps = seg.predict_maps(images)
    assert len(maps) == 3 and maps[0][0].shape == (3, 32, 32)
    assert np.allclose(maps[0][1].sum(0), 1.0, atol=1e-4)  # softmax
    # batching does not change the result
    single = HpaUnetSegmenter(device="cpu", models=(model, model), batch_size=1).predict_maps(images[2:])
    assert np.allclose(single[0][0], maps[2][0], atol=1e-4)
    out = seg.segment_scaled(images, [(32, 32)] * 3)
    assert out[0][1].shape == (32, 32) and out[0][1].dtype == np.uint16
