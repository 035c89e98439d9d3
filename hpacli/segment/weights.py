"""Loading DPN-UNet weights without running code from the file.

The official HPA files (``dpn_unet_nuclei_v1.pth``, ``dpn_unet_cell_3ch_v1.pth``) are whole
pickled modules of the upstream ``pytorch_zoo`` package, probably in torch's legacy
(pre-1.6) format, the nuclei one possibly wrapped in ``DataParallel``. We read them with a
restricted unpickler: the upstream class names map onto our own modules (:mod:`.unet`,
:mod:`.dpn`), a short list of torch containers and tensor-rebuild functions is allowed, and
any other global is refused, so a checkpoint cannot import or call anything else. The file
goes through :func:`hpacli.models.weightfile.load_weights` first, which refuses TorchScript
archives and anything else that is not a plain pickle or a torch.save zip before torch sees
it (torch would hand a TorchScript archive to ``torch.jit.load`` and run its code). Plain
state_dicts (with or without a ``module.`` prefix, bare or under ``state_dict``/``model``)
load too, in the zip and the legacy format. The weights always end up in a freshly built
:class:`~.unet.DPNUnet` through ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import collections
import pickle
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from ..errors import InputError
from ..models.weightfile import UnsafeCheckpointError, load_weights
from . import dpn, unet


class _DataParallelShell(nn.Module):
    """Stands in for ``torch.nn.DataParallel`` while unpickling (only its ``module`` child is used)."""


_ALLOWED: dict[tuple[str, str], object] = {
    # upstream model classes -> ours
    ("pytorch_zoo.unet", "DPNUnet"): unet.DPNUnet,
    ("pytorch_zoo.abstract_model", "ConvBottleneck"): unet.ConvBottleneck,
    ("pytorch_zoo.abstract_model", "UnetDecoderBlock"): unet.UnetDecoderBlock,
    ("pytorch_zoo.dpn", "DualPathBlock"): dpn.DualPathBlock,
    ("pytorch_zoo.dpn", "BnActConv2d"): dpn.BnActConv2d,
    ("pytorch_zoo.dpn", "CatBnAct"): dpn.CatBnAct,
    # our own classes (files saved from hpacli's modules)
    ("hpacli.segment.unet", "DPNUnet"): unet.DPNUnet,
    ("hpacli.segment.unet", "ConvBottleneck"): unet.ConvBottleneck,
    ("hpacli.segment.unet", "UnetDecoderBlock"): unet.UnetDecoderBlock,
    ("hpacli.segment.dpn", "DualPathBlock"): dpn.DualPathBlock,
    ("hpacli.segment.dpn", "BnActConv2d"): dpn.BnActConv2d,
    ("hpacli.segment.dpn", "CatBnAct"): dpn.CatBnAct,
    # torch.nn building blocks
    ("torch.nn.modules.conv", "Conv2d"): nn.Conv2d,
    ("torch.nn.modules.batchnorm", "BatchNorm2d"): nn.BatchNorm2d,
    ("torch.nn.modules.activation", "ReLU"): nn.ReLU,
    ("torch.nn.modules.pooling", "MaxPool2d"): nn.MaxPool2d,
    ("torch.nn.modules.upsampling", "Upsample"): nn.Upsample,
    ("torch.nn.modules.container", "Sequential"): nn.Sequential,
    ("torch.nn.modules.container", "ModuleList"): nn.ModuleList,
    ("torch.nn.parallel.data_parallel", "DataParallel"): _DataParallelShell,
    # containers and tensor rebuilding
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
}
_STORAGES = {"FloatStorage", "LongStorage", "HalfStorage", "BFloat16Storage", "DoubleStorage", "IntStorage",
             "ByteStorage", "BoolStorage"}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals of a DPN-UNet checkpoint."""

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if module == "torch" and name in _STORAGES:
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"refers to {module}.{name}, which is not part of a DPN-UNet checkpoint; refused "
            "(a weight file must not be able to run code)"
        )


def _restricted_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


# what torch.load needs of a pickle module
restricted_pickle = SimpleNamespace(Unpickler=RestrictedUnpickler, load=_restricted_load, __name__="restricted_pickle")


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weight file (pickled module or state_dict, zip or legacy) into a plain
    CPU state_dict without the ``module.`` prefix. Raises HpaError on anything unsafe or odd."""
    path = Path(path)
    obj = load_weights(path, map_location="cpu", pickle_module=restricted_pickle)
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), (dict, nn.Module)):
                obj = obj[key]
                break
    if isinstance(obj, nn.Module):
        state = obj.state_dict()
    elif isinstance(obj, dict):
        state = obj
    else:
        raise InputError(f"weight file {path} holds a {type(obj).__name__}, not a DPN-UNet module or state_dict")
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def load_dpn_unet(path: str | Path) -> unet.DPNUnet:
    """A fresh :class:`DPNUnet` in eval mode with the weights of ``path`` (CPU, float32)."""
    state = read_checkpoint(path)
    with torch.device("meta"):  # no random init of 139M parameters: the file supplies them all
        model = unet.DPNUnet()
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    bad = [k for k in want if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    if missing or extra or bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
        if bad:
            parts.append(f"{len(bad)} with another shape (e.g. {bad[0]})")
        raise InputError(f"weight file {path} is not an HPA DPN-UNet checkpoint: keys " + "; ".join(parts))
    model.load_state_dict(
        {k: state[k].float() if state[k].is_floating_point() else state[k] for k in want}, assign=True
    )
    return model.eval()
