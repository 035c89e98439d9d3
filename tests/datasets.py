"""Make tiny image datasets on disk for tests (random smooth RGBY images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CHANNELS = ("red", "green", "blue", "yellow")


def smooth_image(rng: np.random.Generator, size: int, bits: int = 8) -> np.ndarray:
    """[4, size, size] random smooth texture (uint8 or uint16)."""
    from scipy.ndimage import gaussian_filter

    out = []
    for _ in range(4):
        noise = gaussian_filter(rng.random((size, size)), sigma=size / 16)
        noise = (noise - noise.min()) / (np.ptp(noise) + 1e-9)
        out.append(noise)
    arr = np.stack(out)
    if bits == 16:
        return (arr * 65535).astype(np.uint16)
    return (arr * 255).astype(np.uint8)


def write_rgby(folder: Path, image_id: str, pixels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for c, plane in zip(CHANNELS, pixels):
        Image.fromarray(plane).save(folder / f"{image_id}_{c}.png")


def make_kaggle_dataset(root: Path, n_train: int = 12, n_test: int = 3, size: int = 64, seed: int = 0,
                        prefix: str = "train") -> Path:
    rng = np.random.default_rng(seed)
    root = Path(root)
    rows = []
    for i in range(n_train):
        image_id = f"{prefix}{i:04d}"
        write_rgby(root / "train", image_id, smooth_image(rng, size))
        labels = sorted(set(rng.choice(19, size=rng.integers(1, 4), replace=False).tolist()))
        rows.append(f"{image_id},{'|'.join(map(str, labels))}")
    (root / "train.csv").write_text("ID,Label\n" + "\n".join(rows) + "\n")
    for i in range(n_test):
        write_rgby(root / "test", f"test{i:04d}", smooth_image(rng, size))
    return root
