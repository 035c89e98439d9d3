"""densenet121-hpa shapes, the bestfitting checkpoint format, --init-from and load_model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hpacli.errors import InputError  # noqa: E402
from hpacli.models.bestfitting import REMAP_28_TO_19, read_bestfitting  # noqa: E402
from hpacli.models.checkpoint import init_from, load_model, save_checkpoint  # noqa: E402
from hpacli.registry import create_backbone  # noqa: E402

MANIFEST = Path("/work/shared/reference/bestfitting-densenet121-checkpoint.json")
HERE_MANIFEST = Path(__file__).resolve().parents[2] / "shared/reference/bestfitting-densenet121-checkpoint.json"


@pytest.fixture(scope="module")
def dn():
    torch.manual_seed(0)
    return create_backbone("densenet121-hpa")


def test_densenet_hpa_shapes_and_embedding(dn):
    dn.eval()
    x = torch.rand(2, 4, 64, 64)
    with torch.no_grad():
        logits, emb = dn.forward_with_embedding(x)
        assert logits.shape == (2, 19) and emb.shape == (2, 1024) and dn.embedding_dim == 1024
        assert torch.allclose(dn(x), logits)
        # the embedding is the FC-1024 output before the ReLU (negative values survive) ...
        assert (emb < 0).any()
        # ... and the logits follow from it through ReLU → BN → (dropout) → FC
        assert torch.allclose(dn.logit(dn.bn2(torch.relu(emb))), logits, atol=1e-5)
        # extra 2x2 max-pool after the stem: 128 px → 2x2 final map (4x4 without it)
        assert dn.features(torch.rand(1, 4, 128, 128)).shape[1:] == (1024, 2, 2)
    plain = create_backbone("densenet121-hpa", extra_pool=False).eval()
    assert plain.features(torch.rand(1, 4, 128, 128)).shape[1:] == (1024, 4, 4)
    # 725 trunk tensors (timm names under trunk.) + 14 head tensors
    keys = list(dn.state_dict())
    assert len(keys) == 739 and "trunk.conv0.weight" in keys and dn.state_dict()["trunk.conv0.weight"].shape[1] == 4
    assert dn.config["backbone"] == "densenet121-hpa"


def _manifest() -> dict:
    path = MANIFEST if MANIFEST.exists() else HERE_MANIFEST
    if not path.exists():
        pytest.skip("bestfitting manifest not available")
    return json.loads(path.read_text())


def _bestfitting_file(tmp_path: Path, legacy: bool) -> tuple[Path, dict]:
    man = _manifest()
    shapes = man["state_dict"]
    gen = torch.Generator().manual_seed(1)
    sd: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7, dtype=torch.int64)
        else:
            sd[key] = torch.randn(*shape, generator=gen) if shape else torch.randn((), generator=gen)
    # aliases hold the same values as their canonical names
    for alias, canonical in man["alias_prefix_map"].items():
        for key in list(sd):
            if key.startswith(alias):
                sd[key] = sd[canonical + key[len(alias):]].clone()
    assert len(sd) == 1466
    obj = {"save_dir": "/x/fold0", "state_dict": sd, "best_epoch": 7, "epoch": 7, "best_score": torch.tensor(0.12)}
    path = tmp_path / "final.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path, sd


@pytest.mark.parametrize("legacy", [True, False])
def test_bestfitting_checkpoint_loads(dn, tmp_path, legacy):
    path, sd = _bestfitting_file(tmp_path, legacy)
    report = init_from(dn, path)
    assert report.kind == "bestfitting"
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert report.loaded == 739
    text = report.describe()
    assert "remapped the 28 old classes" in text and "aliases" in text and "every tensor matched" in text
    state = dn.state_dict()
    idx = torch.tensor(REMAP_28_TO_19)
    assert torch.equal(state["logit.weight"], sd["logit.weight"][idx])
    assert torch.equal(state["logit.bias"], sd["logit.bias"][idx])
    assert torch.equal(state["trunk.conv0.weight"], sd["backbone.features.conv0.weight"])
    assert torch.equal(
        state["trunk.denseblock4.denselayer16.conv2.weight"],
        sd["backbone.features.denseblock4.denselayer16.conv2.weight"],
    )
    assert torch.equal(state["fc1.weight"], sd["fc1.weight"]) and torch.equal(state["bn2.running_var"], sd["bn2.running_var"])
    new_sd, notes = read_bestfitting(path)
    assert len(new_sd) == 739 and any("ImageNet" in n for n in notes)


def test_bestfitting_without_num_batches_tracked(dn, tmp_path):
    path, sd = _bestfitting_file(tmp_path, legacy=False)
    obj = torch.load(path, weights_only=True)
    obj["state_dict"] = {k: v for k, v in obj["state_dict"].items() if not k.endswith("num_batches_tracked")}
    torch.save(obj, path)
    report = init_from(dn, path)
    # the counters are missing from the file and reported as such, nothing else
    assert report.missing and all(k.endswith("num_batches_tracked") for k in report.missing)
    assert "were not in the file" in report.describe()
    assert torch.equal(dn.state_dict()["fc1.bias"], sd["fc1.bias"])


def test_our_checkpoint_roundtrip_and_plain_state_dict(tmp_path):
    torch.manual_seed(0)
    model = create_backbone("resnet10t", num_classes=19, in_chans=4).eval()
    ckpt = tmp_path / "run" / "best.pt"
    save_checkpoint(ckpt, {"model_config": model.config, "model": model.state_dict()})
    assert not list(ckpt.parent.glob("*.tmp"))  # atomic write leaves no temp file
    loaded, config = load_model(ckpt)
    assert config["backbone"] == "resnet10t"
    x = torch.rand(2, 4, 32, 32)
    with torch.no_grad():
        logits, emb = loaded.forward_with_embedding(x)
        assert torch.allclose(logits, model(x), atol=1e-6) and emb.shape == (2, loaded.embedding_dim)
    # init from our checkpoint into a fresh model
    other = create_backbone("resnet10t", num_classes=19, in_chans=4).eval()
    rep = init_from(other, ckpt)
    assert rep.kind == "hpacli" and not rep.missing and not rep.unexpected
    assert torch.allclose(other(x), model(x), atol=1e-6)
    # a plain state_dict saved from DataParallel (module. prefix)
    plain = tmp_path / "plain.pth"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, plain)
    third = create_backbone("resnet10t", num_classes=19, in_chans=4).eval()
    rep = init_from(third, plain)
    assert rep.kind == "state_dict" and not rep.missing and "module." in rep.describe()
    assert torch.allclose(third(x), model(x), atol=1e-6)
    # a head of another size is skipped and said so
    five = create_backbone("resnet10t", num_classes=5, in_chans=4)
    rep = init_from(five, plain)
    assert len(rep.mismatched) == 2 and "other shapes" in rep.describe()
    # a plain state dict is not a full checkpoint for load_model
    with pytest.raises(InputError, match="not an hpacli checkpoint"):
        load_model(plain)


def test_three_channel_stem_gets_a_fourth(tmp_path):
    torch.manual_seed(0)
    rgb = create_backbone("resnet10t", num_classes=19, in_chans=3)
    path = tmp_path / "rgb.pth"
    torch.save(rgb.state_dict(), path)
    rgby = create_backbone("resnet10t", num_classes=19, in_chans=4)
    rep = init_from(rgby, path)
    assert not rep.mismatched and "yellow copied from red" in rep.describe()
    w3 = rgb.state_dict()["model.conv1.0.weight"]
    w4 = rgby.state_dict()["model.conv1.0.weight"]
    assert torch.equal(w4[:, :3], w3) and torch.equal(w4[:, 3], w3[:, 0])


def test_garbage_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="bad.pt is a text file"):
        init_from(create_backbone("resnet10t"), bad)
