"""Image IDs become parts of file names (``<ID>_red.png``, previews, overlays): check them once.

:func:`check_image_id` is the one check every reader and writer of per-image files uses,
so that an ID from a CSV (``../../x``, ``/abs/x``, a NUL byte, an empty cell) can never
make hpacli read or write outside the folder it was given.
"""

from __future__ import annotations

from ..errors import InputError

# A file name is at most 255 bytes on common file systems; leave room for the longest
# suffix hpacli appends to an ID (``_yellow.png``, ``_overlay.png``, ``_preview.png``, ...).
MAX_ID_BYTES = 200


def image_id_problem(image_id: object) -> str | None:
    """Why ``image_id`` cannot be used as part of a file name, or None when it can."""
    if not isinstance(image_id, str):
        return f"image ID {image_id!r} is not text"
    if image_id == "" or image_id.strip() == "":
        return "empty image ID"
    shown = repr(image_id if len(image_id) <= 60 else image_id[:57] + "...")
    if image_id != image_id.strip():
        return f"image ID {shown} starts or ends with white space"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in image_id):
        return f"image ID {shown} holds a control character (NUL, newline, ...)"
    if "/" in image_id or "\\" in image_id:
        return f"image ID {shown} holds a path separator ('/' or '\\'); IDs are file name stems, not paths"
    if image_id in (".", ".."):
        return f"image ID {shown} is a relative folder name"
    try:
        size = len(image_id.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates from a badly decoded file
        return f"image ID {shown} is not valid Unicode text"
    if size > MAX_ID_BYTES:
        return f"image ID {shown} is {size} bytes long; at most {MAX_ID_BYTES} fit in a file name with its suffix"
    return None


def check_image_id(image_id: object) -> str:
    """``image_id`` when it is safe to put in a file name inside a given folder; else InputError.

    Safe means: non-empty text without path separators (``/``, ``\\``), control
    characters (NUL included), surrounding white space, ``.``/``..`` alone, and at most
    :data:`MAX_ID_BYTES` bytes in UTF-8. Then ``folder / f"{id}_{suffix}"`` stays in
    ``folder``.
    """
    problem = image_id_problem(image_id)
    if problem is not None:
        raise InputError(problem)
    return image_id  # type: ignore[return-value]
