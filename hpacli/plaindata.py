"""Turning parameters and results into plain JSON data (for attributes, checkpoints, logs)."""

from __future__ import annotations

import math
from dataclasses import asdict, is_dataclass
from typing import Any


def to_plain(value: Any) -> Any:
    """Dicts, lists, numbers, strings and None as they are; dataclasses as dicts; numpy
    scalars and arrays as Python numbers and lists; NaN as None; anything else as str."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return to_plain(value.tolist())
    return str(value)
