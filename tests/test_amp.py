"""Mixed precision: --amp chooses bf16, fp16 with gradient scaling, or off; the scaler's
state is in the checkpoint, so an fp16 run killed mid-cycle resumes to the same weights."""

from __future__ import annotations

import pytest
import torch

from hpacli.errors import HpaError
from hpacli.train.trainer import resolve_amp
from tests.test_train_image import Boom, _params, _train


def test_amp_modes_on_the_cpu():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) == "off" and resolve_amp(True, cpu) == "off"  # CPU runs stay in float32
    assert resolve_amp("fp16", cpu) == "fp16" and resolve_amp("bf16", cpu) == "bf16"
    assert resolve_amp(False, cpu) == resolve_amp("off", cpu) == "off"
    with pytest.raises(HpaError, match="--amp must be one of"):
        resolve_amp("fp8", cpu)


def test_fp16_scaler_is_used_saved_and_resumed_exactly(tmp_path):
    kw = dict(dropout=0.3, accum=3, loss="focal", save_every=1, lr_mult=300.0, amp="fp16")
    ref, tr_ref = _train(tmp_path / "ref", **kw)
    assert tr_ref.amp == "fp16" and tr_ref.scaler.is_enabled()
    off, _ = _train(tmp_path / "off", **{**kw, "amp": "off"})
    # float16 arithmetic gives other weights than float32: the comparison below can fail
    assert any(not torch.equal(a, b) for a, b in zip(_params(ref).values(), _params(off).values()))
    seen = {"n": 0}

    def bomb(trainer):
        seen["n"] += 1
        if seen["n"] == 5:
            raise Boom()

    with pytest.raises(Boom):
        _train(tmp_path / "run", callbacks=[bomb], **kw)
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ck["amp"] == "fp16" and ck["scaler"]["scale"] > 0 and ck["micro_in_cycle"] > 0
    with pytest.raises(HpaError, match="--amp fp16"):  # scaled gradients of a cycle need the same mode
        _train(tmp_path / "run", resume=True, **{**kw, "amp": "off"})
    resumed, tr = _train(tmp_path / "run", resume=True, **kw)
    assert tr.step == tr_ref.step
    a, b = _params(ref), _params(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert tr.scaler.state_dict() == tr_ref.scaler.state_dict()


def test_bf16_on_the_cpu_trains(tmp_path):
    model, tr = _train(tmp_path / "bf", amp="bf16", epochs=1)
    assert tr.amp == "bf16" and not tr.scaler.is_enabled() and tr.step > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
