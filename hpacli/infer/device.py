"""The torch device a stage runs on (``--device``)."""

from __future__ import annotations

from ..errors import HpaError


def resolve_device(device: str | None = "auto"):
    """``auto`` (a GPU when one is visible, else the CPU), ``cpu``, ``cuda``, ``cuda:1``, ...;
    a bad name or a GPU that is not there is a one-line error."""
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise HpaError(f"--device {device!r} is not a torch device (auto, cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HpaError(f"--device {device}: no CUDA GPU is visible here; use --device cpu or auto")
    return dev
