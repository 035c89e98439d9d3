"""What a model trained on, recorded in its checkpoint and checked before it labels cells.

``hpa train-image`` and ``hpa train-cell`` write into every checkpoint
(``train_config.extra.trained_on``)::

    {"images": [sorted image ids whose labels the weights have seen],
     "n_images": int, "sha256": digest of the sorted ids,
     "fold": the fold it was trained for, "folds": {"name": ..., "sha256": digest of the fold set},
     "inherited": [checkpoints whose records were merged in]}

The images are the training images of this run plus those recorded by the ``--init-from``
checkpoint (a cell model started from fold 0's image model has seen what that model saw).
Weights from outside hpacli (bestfitting's) record nothing: they trained on images that are
not in the store.

Before ``hpa pseudolabel`` lets a model label cells, and before ``hpa predict`` runs it, the
images it would label are compared with the record; any overlap is a leak (the model
would label cells of an image whose labels it trained on) and the run is refused. This is
what catches folds redone after training: the fold a model validates on is read from the
store, its training images from the checkpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..errors import HpaError, InputError

KEY = "trained_on"


def ids_digest(ids: Iterable[str]) -> str:
    """sha256 of the sorted ids, one per line."""
    return hashlib.sha256("\n".join(sorted(str(i) for i in ids)).encode()).hexdigest()


def folds_identity(store, name: str = "default") -> dict:
    """The fold set ``name`` as ``{"name", "sha256"}``: a digest of every (image id, fold) pair
    of the images in a fold (images ingested later, in no fold, leave it unchanged)."""
    from ..store.folds import read_image_folds

    folds = read_image_folds(store, name)
    ids = store.images.ids()
    h = hashlib.sha256()
    for i, f in sorted((str(i), int(f)) for i, f in zip(ids.tolist(), folds.tolist()) if f >= 0):
        h.update(f"{i}\t{f}\n".encode())
    return {"name": name, "sha256": h.hexdigest()}


def make_record(store, image_rows, fold: int, folds_name: str = "default", init_from=None) -> dict:
    """The ``trained_on`` record for a model trained on the images at ``image_rows``."""
    ids = set(store.images.ids()[np.unique(np.asarray(image_rows, dtype=np.int64))].tolist())
    inherited = []
    if init_from is not None:
        prior = record_of_checkpoint(init_from)
        if prior is not None:
            ids |= set(prior)
            inherited.append(str(init_from))
    images = sorted(str(i) for i in ids)
    return {"images": images, "n_images": len(images), "sha256": ids_digest(images), "fold": int(fold),
            "folds": folds_identity(store, folds_name), "inherited": inherited}


def images_of(meta: dict | None) -> list[str] | None:
    """The recorded training image ids in a checkpoint's training settings (``extra``), or
    None when it records none (``train_images`` is the older spelling)."""
    if not isinstance(meta, dict):
        return None
    rec = meta.get(KEY)
    if isinstance(rec, dict) and isinstance(rec.get("images"), list):
        return [str(i) for i in rec["images"]]
    if isinstance(meta.get("train_images"), list):
        return [str(i) for i in meta["train_images"]]
    return None


def extra_of(obj: Any) -> dict:
    """``train_config.extra`` of a checkpoint object ({} when absent)."""
    if not isinstance(obj, dict):
        return {}
    tc = obj.get("train_config")
    extra = tc.get("extra") if isinstance(tc, dict) else None
    return extra if isinstance(extra, dict) else {}


def record_of_checkpoint(path) -> list[str] | None:
    from .checkpoint import read_checkpoint

    return images_of(extra_of(read_checkpoint(path)))


def check_no_leak(path: str, trained: Iterable[str] | None, to_label: Iterable[str], action: str,
                  advice: str) -> None:
    """HpaError when ``trained`` and ``to_label`` share an image id."""
    if trained is None:
        return
    leak = sorted(set(trained) & set(str(i) for i in to_label))
    if leak:
        more = f", ... {len(leak) - 3} more" if len(leak) > 3 else ""
        raise HpaError(
            f"leak: {path} trained on {len(leak)} of the images it would {action} "
            f"({', '.join(leak[:3])}{more}); not run. {advice}"
        )


def require_record(path: str, trained: list[str] | None) -> list[str]:
    if trained is None:
        raise InputError(
            f"{path} does not record which images it trained on (a checkpoint from an older hpacli or "
            "from elsewhere), so the out-of-fold guard cannot check it; train it with `hpa train-image`"
        )
    return trained


__all__ = ["KEY", "check_no_leak", "extra_of", "folds_identity", "ids_digest", "images_of", "make_record",
           "record_of_checkpoint", "require_record"]
