"""The 19 classes of the HPA single-cell challenge and the four channels."""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = (
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Intermediate filaments",
    "Actin filaments",
    "Microtubules",
    "Mitotic spindle",
    "Centrosome",
    "Plasma membrane",
    "Mitochondria",
    "Aggresome",
    "Cytosol",
    "Vesicles and punctate cytosolic patterns",
    "Negative",
)
N_CLASSES = len(CLASS_NAMES)
NEGATIVE = 18
MITOTIC_SPINDLE = 11

# channel order everywhere in hpacli (pixel cache, model input): R, G, B, Y
CHANNELS: tuple[str, ...] = ("red", "green", "blue", "yellow")


def parse_labels(text: object) -> list[int]:
    """Parse a label cell such as ``"8|5|0"`` into sorted unique ints.

    Raises ValueError with a readable message for anything that is not a
    ``|``-separated list of integers in 0..18.
    """
    if text is None:
        raise ValueError("empty label")
    s = str(text).strip()
    if s == "" or s.lower() == "nan":
        raise ValueError("empty label")
    out = set()
    for part in s.replace(" ", "|").split("|"):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise ValueError(f"label {part!r} is not an integer") from None
        if not 0 <= value < N_CLASSES:
            raise ValueError(f"label {value} is outside 0..{N_CLASSES - 1}")
        out.add(value)
    if not out:
        raise ValueError("empty label")
    return sorted(out)
