"""The one door through which hpacli reads a weight file: no code from the file ever runs.

Every path a user can pass (``--init-from``, ``--models``, ``--image-model``,
``--nuclei-model``, ``--cell-model``, a plugin's weights) goes through :func:`load_weights`.
It works in two steps, on one open file descriptor (so the file cannot change in between):

1. **Inspect the bytes** (:func:`inspect_weight_file`) before torch sees them. Only the two
   formats ``torch.save`` writes are accepted:

   * a *zip pickle* (torch ≥ 1.6): a zip archive whose members are exactly one folder with
     ``data.pkl``, tensor records ``data/<n>`` and torch's small bookkeeping records
     (``version``, ``byteorder``, ``.format_version``, ``.storage_alignment``,
     ``.data/version``, ``.data/serialization_id``). Anything else is refused, above all a
     **TorchScript archive** (``constants.pkl``, ``code/``): ``torch.load`` would hand it to
     ``torch.jit.load``, which runs the code inside (a scripted ``__setstate__`` runs at load
     time). Other zips (a ``code/`` folder, ``.py`` files, extra pickles) are refused too.
   * a *plain pickle* (torch's legacy format, pickle protocol 2..5).

   An empty file, text (including a Git LFS pointer), safetensors, HDF5, tar and every
   other format is refused with a sentence that says what the file is.
2. **Unpickle with an allow-list.** By default ``torch.load(..., weights_only=True)``:
   tensors, containers and plain values only. The DPN-UNet loader passes its own restricted
   unpickler instead (upstream's weights are pickled modules; see
   :mod:`hpacli.segment.weights`), which resolves a short list of globals and nothing else.

Every failure is one line (:class:`~hpacli.errors.InputError` or
:class:`UnsafeCheckpointError`, exit 2) that names the file and the problem. torch's own
messages are never passed on whole: for a refused global it suggests retrying with
``weights_only=False``, which is the wrong advice for a file from elsewhere.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

from ..errors import HpaError, InputError

ZIP_MAGIC = b"PK\x03\x04"
# members of a torch.save zip, relative to its one top-level folder
_ZIP_FIXED = {"data.pkl", "version", "byteorder", ".format_version", ".storage_alignment", ".data/version",
              ".data/serialization_id"}
_ZIP_STORAGE = re.compile(r"^data/\d+$")


class UnsafeCheckpointError(HpaError):
    """The file holds (or could run) something other than weights: refused unread."""


# ------------------------------------------------------------------------------ inspect
def _zip_problem(fh) -> tuple[type[HpaError], str] | None:
    """None for a plain torch.save zip; else (error class, why it is refused)."""
    try:
        with zipfile.ZipFile(fh) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return InputError, "is a damaged or truncated zip archive (its table of contents cannot be read); copy it again"
    finally:
        fh.seek(0)
    if not names:
        return InputError, "is an empty zip archive, not a PyTorch checkpoint"
    for n in names:
        parts = n.split("/")
        if "constants.pkl" in parts or "code" in parts[:-1] or n.endswith(".debug_pkl"):
            return UnsafeCheckpointError, (
                f"is a TorchScript archive (it holds {n!r}); loading it would run the code inside, so it is "
                "refused. Save plain weights instead: torch.save(model.state_dict(), path)")
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1 or any("/" not in n for n in names):
        return InputError, f"is a zip archive but not a PyTorch checkpoint (members {', '.join(sorted(names)[:3])} ...)"
    rel = [n.split("/", 1)[1] for n in names]
    odd = [n for n, r in zip(names, rel) if r not in _ZIP_FIXED and not _ZIP_STORAGE.match(r)]
    if odd:
        return UnsafeCheckpointError, (
            f"is a zip archive with members a PyTorch checkpoint does not have ({', '.join(odd[:3])}); "
            "refused (only files written by torch.save are read)")
    if "data.pkl" not in rel:
        return InputError, "is a zip archive without data.pkl, not a PyTorch checkpoint"
    return None


def _what_else(head: bytes) -> str:
    """A sentence for a file that is neither a zip pickle nor a plain pickle."""
    if head.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the weights; fetch the real file (git lfs pull)"
    if head.startswith(b"\x89HDF"):
        return "is an HDF5 file (Keras?), not a PyTorch checkpoint"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30):
        return ("is a safetensors file; hpacli reads PyTorch checkpoints (torch.save) only: "
                "convert it with safetensors.torch.load_file and torch.save")
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "is a tar archive (the pre-1.0 torch format or something else); re-save it with a recent torch.save"
    if head[:2] == b"\x1f\x8b":
        return "is gzip-compressed; decompress it first"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.strip() and all(ch.isprintable() or ch.isspace() for ch in text):
        return f"is a text file ({text.strip().splitlines()[0][:40]!r}...), not a PyTorch checkpoint"
    return "is not a PyTorch checkpoint (neither a torch.save zip nor a pickle)"


def inspect_weight_file(path: str | Path, fh=None) -> str:
    """``"zip"`` or ``"pickle"`` for a file torch.save could have written; raises
    :class:`UnsafeCheckpointError`/:class:`InputError` (one line, naming the file) otherwise."""
    path = Path(path)
    own = fh is None
    if own:
        fh = _open(path)
    try:
        head = fh.read(512)
        fh.seek(0)
        if not head:
            raise InputError(f"weight file {path} is empty (0 bytes); was the copy interrupted?")
        if head.startswith(ZIP_MAGIC):
            problem = _zip_problem(fh)
            if problem is None:
                return "zip"
            error, why = problem
            raise error(f"weight file {path} {why}")
        if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
            return "pickle"
        raise InputError(f"weight file {path} {_what_else(head)}")
    finally:
        if own:
            fh.close()


def _open(path: Path):
    if not path.exists():
        raise InputError(f"weight file {path} does not exist")
    if path.is_dir():
        raise InputError(f"weight file {path} is a folder, not a file")
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot open weight file {path}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------------- load
_GLOBAL = re.compile(r"GLOBAL (\S+)")


def _short_reason(exc: BaseException) -> str:
    """torch's error in a few words: its first informative line, without any advice."""
    if isinstance(exc, EOFError):
        return "the file ends before its data does"
    text = str(exc)
    m = re.search(r"WeightsUnpickler error:(.*)", text, re.DOTALL)
    if m:
        text = m.group(1).split("Check the documentation")[0]
    for line in text.splitlines():
        line = line.strip()
        if line and not re.search(r"weights.only|Weights only|trusted source", line, re.IGNORECASE):
            text = line
            break
    else:
        text = type(exc).__name__
    text = re.split(r"(?<=[.;]) (?=[A-Z(])", text)[0]  # the first sentence
    return text[:160].rstrip(" .") or type(exc).__name__


def load_weights(path: str | Path, map_location="cpu", pickle_module=None):
    """The object a weight file holds, read without running code from it (see module doc).

    ``pickle_module`` (an object with ``Unpickler`` and ``load``) replaces torch's
    ``weights_only`` allow-list by the caller's own restricted unpickler.
    """
    import torch

    path = Path(path)
    fh = _open(path)
    try:
        inspect_weight_file(path, fh)
        try:
            if pickle_module is None:
                return torch.load(fh, map_location=map_location, weights_only=True)
            with warnings.catch_warnings():
                # legacy files of pickled modules warn that the class source changed: expected
                warnings.simplefilter("ignore", torch.serialization.SourceChangeWarning)
                return torch.load(fh, map_location=map_location, pickle_module=pickle_module, weights_only=False)
        except HpaError as exc:  # the caller's unpickler refused a global ("refers to ...")
            raise type(exc)(f"weight file {path} {exc}") from None
        except pickle.UnpicklingError as exc:
            m = _GLOBAL.search(str(exc))
            if m:
                raise UnsafeCheckpointError(
                    f"weight file {path} refers to {m.group(1)}, which is not part of plain weights; "
                    "refused (a weight file must not be able to run code)"
                ) from None
            raise InputError(f"weight file {path} is damaged or not a torch.save checkpoint ({_short_reason(exc)})") from None
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - truncated zips, bad records, wrong magic numbers, ...
            raise InputError(
                f"weight file {path} is damaged or truncated ({type(exc).__name__}: {_short_reason(exc)})"
            ) from None
    finally:
        fh.close()


__all__ = ["UnsafeCheckpointError", "inspect_weight_file", "load_weights"]
