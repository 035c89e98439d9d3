"""Small types of the plugin contract (``hookspecs.py``) that plugins may return."""

from __future__ import annotations

from typing import Any

import numpy as np


class Denoised(np.ndarray):
    """``Y_opt`` of one de-noising fold (a float ``[N, C]`` array) that also carries the
    denoiser's ``neighbours`` (int ``[N, m]``: each row the fold positions 0..N-1 of the
    cell's m nearest *other* cells, -1 = none; what ``hpa select-mitotic --neighbours``
    uses) and ``diagnostics`` (plain data recorded in the store, shown by ``hpa info``).

    ``Denoised(y_opt, neighbours=None, diagnostics=None)``; it is an ndarray, so code that
    only wants Y_opt uses it as one."""

    def __new__(cls, y_opt, neighbours=None, diagnostics: dict[str, Any] | None = None) -> Denoised:
        obj = np.asarray(y_opt).view(cls)
        obj.neighbours = None if neighbours is None else np.asarray(neighbours)
        obj.diagnostics = dict(diagnostics or {})
        return obj

    def __array_finalize__(self, obj) -> None:
        if obj is None:
            return
        self.neighbours = getattr(obj, "neighbours", None)
        self.diagnostics = getattr(obj, "diagnostics", {})
