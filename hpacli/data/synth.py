"""``hpa synth``: a synthetic HPA dataset with cell-level truth and weak image labels.

The dataset is the yardstick of the pipeline, so it reproduces the *problem*: each cell
shows 1-3 of the 19 patterns, each tied to the cell's geometry (synth_patterns.py), and
the image labels are weak the way the real ones are:

- images come in samples of up to 6 (one protein); a label seen in the majority of a
  sample's images is set on all of them (so images get labels they do not show, and
  lose labels only a minority shows);
- patterns shown by few cells of an image are often missed, the mitotic spindle above all
  (its cells are rare and the label is usually left out);
- with ``variability``, some images mix a subpopulation of cells with another pattern,
  a subset of the sample's patterns, or no staining.

Layout written (what ``hpa ingest`` reads, plus the truth):
``train.csv`` (ID,Label), ``train/{ID}_{red,green,blue,yellow}.png``, ``test/`` and
``sample_submission.csv``, ``dev/`` (a development split: unlabelled images drawn like the
test images, to make choices on without reading test truth), ``train_truth.csv`` /
``dev_truth.csv`` / ``test_truth.csv`` (submission format, one triple per (cell, label)
with confidence 1), ``truth_labels/{ID}_{cells,nuclei}.png``
(16-bit instance labels), ``images.csv`` and ``cells.csv`` (what each image and cell
really shows), ``synth.json`` (every parameter and the counts) and ``preview.png``.

Generation is deterministic for a seed: the plan (samples, patterns) comes from one
generator per split, each image from generators seeded by (seed, split, index), so
images can be made in any order or in parallel with the same bytes.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from ..classes import CHANNELS, CLASS_NAMES, MITOTIC_SPINDLE, N_CLASSES, NEGATIVE
from ..errors import InputError
from ..progress import NullProgress, add_task
from ..summary import Summary
from .synth_cells import Geometry, child_rng, make_geometry, reference_channels
from .synth_patterns import PATTERN_NAMES, pattern_map

SPLIT_CODE = {"train": 1, "test": 2, "dev": 3}
SCORED_SPLITS = ("dev", "test")  # unlabelled splits scored against their truth

# image-label frequencies of the 2021 competition's train.csv (approximate), flattened
# by a power so that rare classes still appear in a few hundred images
HPA_COUNTS = {
    0: 8800, 1: 1050, 2: 2570, 3: 1460, 4: 1640, 5: 2230, 6: 900, 7: 2370, 8: 1180, 9: 1090,
    10: 1000, 12: 1700, 13: 3300, 14: 2900, 15: 330, 16: 5900, 17: 2300, 18: 600,
}


@dataclass
class Rules:
    """The fixed generation rules (stored in synth.json with the options)."""

    class_power: float = 0.5  # class prior = HPA counts ** power
    set_size_p: tuple[float, ...] = (0.5, 0.35, 0.15)  # a sample shows 1, 2 or 3 patterns
    sample_size_p: tuple[float, ...] = (0.1, 0.15, 0.2, 0.2, 0.2, 0.15)  # 1..6 images per sample
    cells_per_image: tuple[int, int] = (7, 18)
    mitotic_rate: float = 0.06  # fraction of (non-border) cells in mitosis
    spindle_sample_p: float = 0.4  # a sample's protein decorates the spindle in mitosis
    spindle_cell_p: float = 0.85  # ... in each mitotic cell of such a sample
    cell_presence_p: float = 0.92  # each of the sample's patterns shows in a given cell
    image_absent_p: float = 0.12  # a pattern of the sample is absent from a whole image
    variant_fraction: tuple[float, float] = (0.2, 0.5)  # cells of a mixed image that differ
    variant_kinds_p: dict = field(default_factory=lambda: {"negative": 0.35, "subset": 0.3, "other": 0.35})
    brightness_median: float = 0.45
    brightness_log_sd: float = 0.45
    cell_brightness_log_sd: float = 0.3
    rare_cell_fraction: float = 0.25  # patterns in fewer cells of an image than this ...
    rare_seen_p: float = 0.35  # ... are seen by the annotator with this probability
    spindle_seen_p: float = 0.2  # the mitotic spindle is seen with this probability
    psf_sigma_u: float = 0.5  # blur of every channel, in units of size/256


@dataclass
class SynthConfig:
    n_images: int = 200
    size: int = 256
    test_images: int | None = None  # None: a quarter of n_images
    dev_images: int | None = None  # None: as many as test images
    bits: int = 8
    seed: int = 0
    noise: float = 0.05
    variability: float = 0.3

    def resolved(self) -> SynthConfig:
        cfg = SynthConfig(**asdict(self))
        if cfg.test_images is None:
            cfg.test_images = cfg.n_images // 4
        if cfg.dev_images is None:
            cfg.dev_images = cfg.test_images
        return cfg

    def check(self) -> None:
        if self.n_images < 1:
            raise InputError("--n-images must be at least 1")
        if self.test_images is not None and self.test_images < 0:
            raise InputError("--test-images must be 0 or more")
        if self.dev_images is not None and self.dev_images < 0:
            raise InputError("--dev-images must be 0 or more")
        if not 64 <= self.size <= 4096:
            raise InputError(f"--size must be between 64 and 4096, not {self.size}")
        if self.bits not in (8, 16):
            raise InputError(f"--bits must be 8 or 16, not {self.bits}")
        if not 0.0 <= self.noise <= 1.0:
            raise InputError(f"--noise must be between 0 and 1, not {self.noise}")
        if not 0.0 <= self.variability <= 1.0:
            raise InputError(f"--variability must be between 0 and 1, not {self.variability}")


@dataclass
class ImagePlan:
    split: str
    index: int
    id: str
    sample: str
    base: tuple[int, ...]
    spindle: bool
    hetero: bool
    alt: int
    brightness: float
    n_cells: int
    confluence: float
    min_mitotic: int


def class_prior(rules: Rules) -> tuple[np.ndarray, np.ndarray]:
    classes = np.array(sorted(HPA_COUNTS))
    p = np.array([HPA_COUNTS[c] for c in classes], dtype=float) ** rules.class_power
    return classes, p / p.sum()


def _uuid(rng: np.random.Generator) -> str:
    h = rng.bytes(16).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _draw_set(rng, classes, prior, rules: Rules) -> tuple[int, ...]:
    k = int(rng.choice([1, 2, 3], p=rules.set_size_p))
    first = int(rng.choice(classes, p=prior))
    if first == NEGATIVE:
        return (NEGATIVE,)
    out = [first]
    p = prior.copy()
    p[classes == NEGATIVE] = 0
    p[classes == first] = 0
    for _ in range(k - 1):
        c = int(rng.choice(classes, p=p / p.sum()))
        out.append(c)
        p[classes == c] = 0
    return tuple(sorted(out))


def make_plan(cfg: SynthConfig, rules: Rules, split: str, n: int) -> list[ImagePlan]:
    """Samples of 1-6 images, each with its patterns; every class is covered when the split
    has enough samples (classes missing after the draw are given to samples in turn)."""
    rng = np.random.default_rng([cfg.seed, SPLIT_CODE[split], 0])
    classes, prior = class_prior(rules)
    samples: list[dict] = []
    left = n
    while left > 0:
        size = min(left, int(rng.choice(np.arange(1, 7), p=rules.sample_size_p)))
        samples.append({
            "size": size,
            "base": _draw_set(rng, classes, prior, rules),
            "spindle": bool(rng.random() < rules.spindle_sample_p),
            "brightness": float(np.clip(rules.brightness_median * np.exp(rng.normal(0, rules.brightness_log_sd)),
                                        0.12, 1.2)),
        })
        left -= size
    # coverage: every class in some sample (without taking a class from its only sample)
    have = set().union(*(s["base"] for s in samples))
    missing = sorted((int(c) for c in classes if c not in have), key=lambda c: (c != NEGATIVE, c))
    order = sorted(range(len(samples)), key=lambda j: (len(samples[j]["base"]), j))

    def holders(c: int) -> int:
        return sum(c in s["base"] for s in samples)

    start = 0
    for c in missing:
        for t in range(len(order)):
            j = order[(start + t) % len(order)]
            base = samples[j]["base"]
            spare = [b for b in base if holders(b) > 1]
            if c == NEGATIVE:
                new = (NEGATIVE,) if len(spare) == len(base) else None
            elif base == (NEGATIVE,):
                new = (c,) if holders(NEGATIVE) > 1 else None
            elif len(base) < 3:
                new = tuple(sorted((*base, c)))
            elif spare:
                new = tuple(sorted(set(base) - {spare[-1]} | {c}))
            else:
                new = None
            if new is not None:
                samples[j]["base"] = new
                start = (start + t + 1) % len(order)
                break
    if not any(s["spindle"] for s in samples):
        samples[int(rng.integers(len(samples)))]["spindle"] = True
    plans = []
    idx = 0
    for j, s in enumerate(samples):
        for i in range(s["size"]):
            alt_p = prior.copy()
            for b in s["base"]:
                alt_p[classes == b] = 0
            alt_p[classes == NEGATIVE] = 0
            plans.append(ImagePlan(
                split=split, index=idx, id=_uuid(rng), sample=f"{split}-s{j:04d}", base=s["base"],
                spindle=s["spindle"], hetero=bool(rng.random() < cfg.variability),
                alt=int(rng.choice(classes, p=alt_p / alt_p.sum())),
                brightness=float(s["brightness"] * np.exp(rng.normal(0, 0.15))),
                n_cells=int(rng.integers(rules.cells_per_image[0], rules.cells_per_image[1] + 1)),
                confluence=float(rng.uniform(0, 1)),
                min_mitotic=1 if (s["spindle"] and i == 0) else 0,
            ))
            idx += 1
    return plans


# ---------------------------------------------------------------------------- one image
def assign_classes(rng: np.random.Generator, geom: Geometry, plan: ImagePlan, rules: Rules) -> list[set[int]]:
    """The classes each cell shows (index k-1 for cell k)."""
    n = geom.n
    base = [c for c in plan.base if c == NEGATIVE or rng.random() >= rules.image_absent_p] or [NEGATIVE]
    variant = np.zeros(n + 1, dtype=bool)
    kinds = list(rules.variant_kinds_p)
    kind = str(rng.choice(kinds, p=list(rules.variant_kinds_p.values())))
    if plan.hetero and n >= 3:
        k = max(1, int(round(n * rng.uniform(*rules.variant_fraction))))
        variant[1 + rng.choice(n, size=k, replace=False)] = True
    sets: list[set[int]] = []
    for k in range(1, n + 1):
        if base == [NEGATIVE]:
            s = {NEGATIVE}
        else:
            s = {c for c in base if rng.random() < rules.cell_presence_p}
            if not s:
                s = {int(rng.choice(base))}
        if variant[k]:
            if kind == "negative" or (kind == "subset" and len(base) == 1 and base != [NEGATIVE]):
                s = {NEGATIVE}
            elif kind == "subset":
                s = {int(rng.choice(base))} if base != [NEGATIVE] else {plan.alt}
            else:
                s = set(s) - {NEGATIVE}
                if len(s) >= 3:
                    s.discard(sorted(s)[int(rng.integers(len(s)))])
                s.add(plan.alt)
        sets.append(s)
    # every pattern of the sample shows in at least one ordinary cell
    plain = [k for k in range(1, n + 1) if not variant[k]] or list(range(1, n + 1))
    for c in base:
        if c != NEGATIVE and plain and not any(c in s for s in sets):
            s = sets[plain[0] - 1]
            s.discard(NEGATIVE)
            if len(s) >= 3:
                s.pop()
            s.add(c)
    if plan.spindle:
        mit = [k for k in range(1, n + 1) if geom.mitotic[k]]
        got = [k for k in mit if rng.random() < rules.spindle_cell_p]
        if mit and not got:
            got = [mit[0]]
        for k in got:
            s = sets[k - 1]
            s.discard(NEGATIVE)
            if len(s) >= 3:
                s.discard(sorted(s)[int(rng.integers(len(s)))])
            s.add(MITOTIC_SPINDLE)
    return sets


@dataclass
class MadeImage:
    plan: ImagePlan
    channels: np.ndarray  # uint8/uint16 [4, H, W]
    cells: np.ndarray  # uint16 [H, W]
    nuclei: np.ndarray  # uint16 [H, W]
    classes: list[set[int]]
    mitotic: np.ndarray  # per cell (index k-1)
    border: np.ndarray
    area: np.ndarray


def make_image(cfg: SynthConfig, rules: Rules, plan: ImagePlan) -> MadeImage:
    base = (cfg.seed, SPLIT_CODE[plan.split], plan.index)
    geom = make_geometry(
        child_rng(base, "geometry"), cfg.size, plan.n_cells, plan.confluence, rules.mitotic_rate, plan.min_mitotic
    )
    crng = child_rng(base, "cells")
    classes = assign_classes(crng, geom, plan, rules)
    red, blue, yellow = reference_channels(geom, base)

    n1 = geom.n + 1
    level = plan.brightness * np.exp(crng.normal(0, rules.cell_brightness_log_sd, n1))
    green = 0.012 + 0.012 * geom.cell_soft
    present = sorted(set().union(*classes) - {NEGATIVE}) if classes else []
    for c in present:
        weight = np.zeros(n1, dtype=np.float32)
        cells = [k for k in range(1, n1) if c in classes[k - 1]]
        weight[cells] = level[cells] * crng.uniform(0.6, 1.0, len(cells))
        green = green + geom.lookup(weight) * pattern_map(c, geom, child_rng(base, f"pattern{c}"), cells)

    stack = np.stack([red, green, blue, yellow]).astype(np.float32)
    stack += np.array([0.01, 0.0, 0.008, 0.012], dtype=np.float32)[:, None, None]
    psf = rules.psf_sigma_u * geom.u
    for i in range(4):
        stack[i] = ndimage.gaussian_filter(stack[i], psf)
    if cfg.noise > 0:
        nrng = child_rng(base, "noise")
        stack += cfg.noise * (0.25 + np.sqrt(np.clip(stack, 0, None))) * nrng.standard_normal(stack.shape, np.float32)
    np.clip(stack, 0.0, 1.0, out=stack)
    top = 255 if cfg.bits == 8 else 65535
    channels = np.rint(stack * top).astype(np.uint8 if cfg.bits == 8 else np.uint16)
    cells = geom.labels.astype(np.uint16)
    nuclei = np.where(geom.nucleus, cells, 0).astype(np.uint16)
    area = geom.area[1:].astype(np.int64)
    return MadeImage(plan, channels, cells, nuclei, classes, geom.mitotic[1:].copy(), geom.border[1:].copy(), area)


def prediction_string(cells: np.ndarray, classes: list[set[int]]) -> str:
    from ..io.masks import encode_label_image

    ids = np.arange(1, len(classes) + 1)
    enc = encode_label_image(cells, ids=ids) if len(ids) else {}
    return " ".join(f"{c} 1 {enc[int(k)]}" for k in ids for c in sorted(classes[k - 1]))


def _save_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG", compress_level=6)


def _make_and_write(args) -> dict:
    cfg, rules, plan, out = args
    img = make_image(cfg, rules, plan)
    folder = out / plan.split
    for c, name in enumerate(CHANNELS):
        _save_png(img.channels[c], folder / f"{plan.id}_{name}.png")
    _save_png(img.cells, out / "truth_labels" / f"{plan.id}_cells.png")
    _save_png(img.nuclei, out / "truth_labels" / f"{plan.id}_nuclei.png")
    return {
        "id": plan.id,
        "classes": [sorted(s) for s in img.classes],
        "mitotic": img.mitotic.tolist(),
        "border": img.border.tolist(),
        "area": img.area.tolist(),
        "truth": prediction_string(img.cells, img.classes),
    }


# ---------------------------------------------------------------------------- weak labels
def weak_labels(
    plans: list[ImagePlan], infos: list[dict], rules: Rules, seed: int, split: str
) -> tuple[list[list[int]], list[str]]:
    """Image labels as an annotator of whole samples would give them (see module doc)."""
    rng = np.random.default_rng([seed, SPLIT_CODE[split], 1])
    by_sample: dict[str, list[int]] = {}
    for i, p in enumerate(plans):
        by_sample.setdefault(p.sample, []).append(i)
    labels: list[list[int]] = [[] for _ in plans]
    notes: list[str] = []
    for _sample, members in by_sample.items():
        seen_counts: Counter = Counter()
        for i in members:
            classes = infos[i]["classes"]
            n = max(len(classes), 1)
            counts = Counter(c for s in classes for c in s)
            for c, m in sorted(counts.items()):
                if c == NEGATIVE:
                    continue
                if c == MITOTIC_SPINDLE:
                    seen = rng.random() < rules.spindle_seen_p
                elif m / n < rules.rare_cell_fraction:
                    seen = rng.random() < rules.rare_seen_p
                else:
                    seen = True
                if seen:
                    seen_counts[c] += 1
        chosen = sorted(c for c, m in seen_counts.items() if 2 * m > len(members))
        for i in members:
            labels[i] = chosen or [NEGATIVE]
    # every class shown by cells must exist somewhere in the train labels for a model to
    # learn it (the spindle above all): give a missing one to the sample showing it most
    if split == "train":
        for c in range(N_CLASSES):
            if c == NEGATIVE or any(c in lab for lab in labels):
                continue
            count = {i: sum(c in s for s in info["classes"]) for i, info in enumerate(infos)}
            if not any(count.values()):
                continue
            best = max(count, key=lambda i: (count[i], -i))
            sample = plans[best].sample
            for i in by_sample[sample]:
                labels[i] = sorted(set(labels[i]) - {NEGATIVE} | {c})
            notes.append(f"class {c} ({CLASS_NAMES[c]}) set on sample {sample} so that the train labels hold it")
    return labels, notes


# ---------------------------------------------------------------------------- preview
def write_preview(out: Path, plans: list[ImagePlan], infos: list[dict], labels: list[list[int]], n: int = 6,
                  tile: int = 512) -> Path:
    """RGB composites (R = red/yellow, G = green, B = blue) with cell outlines and true labels."""
    from PIL import ImageDraw, ImageFont

    from ..io.png import channel_paths, read_channel

    font = ImageFont.load_default()
    firsts = {}
    for i, p in enumerate(plans):  # one image per sample first, then the rest
        firsts.setdefault(p.sample, i)
    order = list(firsts.values()) + [i for i in range(len(plans)) if i not in set(firsts.values())]
    take = order[: min(n, len(plans))]
    cols = min(3, len(take))
    rows = (len(take) + cols - 1) // cols
    cap = 34
    sheet = Image.new("RGB", (cols * tile, rows * (tile + cap)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for t, i in enumerate(take):
        p = plans[i]
        read = [read_channel(q) for q in channel_paths(out / p.split, p.id)]
        r, g, b, y = (a.astype(np.float32) / (255.0 if depth == 8 else 65535.0) for a, depth in read)
        rgb = np.stack([0.6 * r + 0.6 * y, g, b], axis=-1)
        rgb = np.clip(rgb / max(np.percentile(rgb, 99.5), 1e-3), 0, 1)
        cells = np.asarray(Image.open(out / "truth_labels" / f"{p.id}_cells.png")).astype(np.int32)
        im = Image.fromarray((rgb * 255).astype(np.uint8)).resize((tile, tile), Image.BILINEAR)
        big = np.asarray(Image.fromarray(cells).resize((tile, tile), Image.NEAREST))
        edge = np.zeros(big.shape, bool)
        edge[:-1] |= big[:-1] != big[1:]
        edge[:, :-1] |= big[:, :-1] != big[:, 1:]
        arr = np.asarray(im).copy()
        arr[edge] = (arr[edge] * 0.3 + np.array([230, 230, 230]) * 0.7).astype(np.uint8)
        x0, y0 = (t % cols) * tile, (t // cols) * (tile + cap)
        sheet.paste(Image.fromarray(arr), (x0, y0 + cap))
        scale = tile / cells.shape[0]
        info = infos[i]
        ids = np.arange(1, len(info["classes"]) + 1)
        if len(ids):
            centres = ndimage.center_of_mass(np.ones_like(cells), cells, ids)
            for k, (cy, cx) in zip(ids, centres):
                text = "|".join(str(c) for c in info["classes"][k - 1]) + ("*" if info["mitotic"][k - 1] else "")
                pos = (x0 + cx * scale - 3 * len(text), y0 + cap + cy * scale - 5)
                draw.text((pos[0] + 1, pos[1] + 1), text, fill=(0, 0, 0), font=font)
                draw.text(pos, text, fill=(255, 255, 120), font=font)
        true = sorted(set().union(*map(set, info["classes"]))) if info["classes"] else []
        draw.text((x0 + 4, y0 + 3), f"{p.id[:8]}  {p.sample}", fill=(200, 200, 200), font=font)
        draw.text((x0 + 4, y0 + 18), f"label {'|'.join(map(str, labels[i]))}   cells {'|'.join(map(str, true))}",
                  fill=(255, 255, 255), font=font)
    path = out / "preview.png"
    sheet.save(path, format="PNG")
    return path


# ---------------------------------------------------------------------------- the whole set
OUTPUTS = ("train", "test", "dev", "truth_labels", "train.csv", "sample_submission.csv", "train_truth.csv",
           "dev_truth.csv", "test_truth.csv", "images.csv", "cells.csv", "synth.json", "preview.png")


@dataclass
class SynthSummary(Summary):
    out: Path
    n_train: int
    n_test: int
    n_cells: int
    cells_per_class: dict[int, int]
    train_labels_per_class: dict[int, int]
    preview: Path | None
    notes: list[str]
    n_dev: int = 0


def _prepare(out: Path, force: bool) -> None:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise InputError(f"{out} is not empty; pass --force to replace the dataset in it")
        for name in OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    for sub in ("train", "test", "dev", "truth_labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)


def run_synth(out: Path, config: SynthConfig, *, force: bool = False, workers: int = 1,
              progress=None, rules: Rules | None = None) -> SynthSummary:
    config.check()
    cfg = config.resolved()
    rules = rules or Rules()
    out = Path(out)
    _prepare(out, force)
    progress = progress or NullProgress()
    splits = {"train": make_plan(cfg, rules, "train", cfg.n_images)}
    if cfg.test_images:
        splits["test"] = make_plan(cfg, rules, "test", cfg.test_images)
    if cfg.dev_images:
        splits["dev"] = make_plan(cfg, rules, "dev", cfg.dev_images)
    total = sum(len(p) for p in splits.values())
    task = add_task(progress, "synth", total, unit="img")
    infos: dict[str, list[dict]] = {}
    jobs = [(cfg, rules, p, out) for plans in splits.values() for p in plans]
    results: list[dict] = []
    if workers > 1 and total > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for res in pool.map(_make_and_write, jobs, chunksize=4):
                results.append(res)
                progress.advance(task)
    else:
        for job in jobs:
            results.append(_make_and_write(job))
            progress.advance(task)
    pos = 0
    for split, plans in splits.items():
        infos[split] = results[pos:pos + len(plans)]
        pos += len(plans)

    notes: list[str] = []
    labels: dict[str, list[list[int]]] = {}
    for split, plans in splits.items():
        labels[split], extra = weak_labels(plans, infos[split], rules, cfg.seed, split)
        notes += extra

    # CSVs
    train_plans = splits["train"]
    pd.DataFrame({"ID": [p.id for p in train_plans],
                  "Label": ["|".join(map(str, lab)) for lab in labels["train"]]}).to_csv(out / "train.csv", index=False)
    test_plans = splits.get("test", [])
    size = cfg.size
    pd.DataFrame({"ID": [p.id for p in test_plans], "ImageWidth": size, "ImageHeight": size,
                  "PredictionString": ""}).to_csv(out / "sample_submission.csv", index=False)
    for split in ("train", "dev", "test"):
        plans = splits.get(split, [])
        pd.DataFrame({"ID": [p.id for p in plans], "ImageWidth": size, "ImageHeight": size,
                      "PredictionString": [r["truth"] for r in infos.get(split, [])]}
                     ).to_csv(out / f"{split}_truth.csv", index=False)
    img_rows, cell_rows = [], []
    for split, plans in splits.items():
        for p, info, lab in zip(plans, infos[split], labels[split]):
            true = sorted(set().union(*map(set, info["classes"]))) if info["classes"] else []
            img_rows.append({
                "ID": p.id, "split": split, "sample": p.sample, "Label": "|".join(map(str, lab)),
                "TrueLabel": "|".join(map(str, true)), "base": "|".join(map(str, p.base)),
                "n_cells": len(info["classes"]), "n_mitotic": int(sum(info["mitotic"])),
                "n_spindle": int(sum(MITOTIC_SPINDLE in s for s in info["classes"])), "mixed": p.hetero,
            })
            for k, s in enumerate(info["classes"], start=1):
                cell_rows.append({"ID": p.id, "cell_id": k, "labels": "|".join(map(str, s)),
                                  "mitotic": info["mitotic"][k - 1], "border": info["border"][k - 1],
                                  "area": info["area"][k - 1]})
    pd.DataFrame(img_rows).to_csv(out / "images.csv", index=False)
    pd.DataFrame(cell_rows, columns=["ID", "cell_id", "labels", "mitotic", "border", "area"]).to_csv(
        out / "cells.csv", index=False)

    cells_per_class = Counter(c for info in infos["train"] for s in info["classes"] for c in s)
    labels_per_class = Counter(c for lab in labels["train"] for c in lab)
    stats = _stats(infos, labels)
    from .. import __version__

    meta = {
        "generator": "hpacli synth",
        "hpacli_version": __version__,
        "options": asdict(cfg),
        "rules": asdict(rules),
        "class_prior": {int(c): round(float(p), 6) for c, p in zip(*class_prior(rules))},
        "patterns": {str(c): f"{CLASS_NAMES[c]}: {PATTERN_NAMES[c]}" for c in range(N_CLASSES)},
        "layout": {
            "train.csv": "ID,Label (weak image labels)",
            "train/, dev/, test/": "{ID}_{red,green,blue,yellow}.png",
            "sample_submission.csv": "test IDs, empty PredictionString",
            "dev/": "development images: unlabelled like test, scored against dev_truth.csv to make choices on",
            "train_truth.csv, dev_truth.csv, test_truth.csv":
                "submission format, one triple per (cell, label), confidence 1",
            "truth_labels/": "{ID}_cells.png, {ID}_nuclei.png: 16-bit instance labels (nucleus = its cell's id)",
            "images.csv": "per image: sample, weak Label, TrueLabel (union of its cells), base patterns, counts",
            "cells.csv": "per cell: labels, mitotic, border, area",
        },
        "stats": stats,
        "notes": notes,
    }
    (out / "synth.json").write_text(json.dumps(meta, indent=1, sort_keys=False) + "\n")
    preview = write_preview(out, train_plans, infos["train"], labels["train"])
    return SynthSummary(
        out=out, n_train=len(train_plans), n_test=len(test_plans), n_dev=len(splits.get("dev", [])),
        n_cells=sum(len(i["classes"]) for s in infos.values() for i in s),
        cells_per_class={c: int(cells_per_class.get(c, 0)) for c in range(N_CLASSES)},
        train_labels_per_class={c: int(labels_per_class.get(c, 0)) for c in range(N_CLASSES)},
        preview=preview, notes=notes,
    )


def _stats(infos: dict[str, list[dict]], labels: dict[str, list[list[int]]]) -> dict:
    out = {}
    for split, rows in infos.items():
        cells = Counter(c for info in rows for s in info["classes"] for c in s)
        truth_img = Counter(c for info in rows for c in set().union(*map(set, info["classes"])))
        lab_img = Counter(c for lab in labels[split] for c in lab)
        missed = extra = pairs = 0
        for info, lab in zip(rows, labels[split]):
            true = set().union(*map(set, info["classes"])) - {NEGATIVE}
            got = set(lab) - {NEGATIVE}
            pairs += len(true)
            missed += len(true - got)
            extra += len(got - true)
        spindle_imgs = [lab for info, lab in zip(rows, labels[split])
                        if any(MITOTIC_SPINDLE in s for s in info["classes"])]
        n_cells = sum(len(info["classes"]) for info in rows)
        out[split] = {
            "images": len(rows),
            "cells": n_cells,
            "mitotic_cells": int(sum(sum(info["mitotic"]) for info in rows)),
            "cells_per_class": {c: int(cells.get(c, 0)) for c in range(N_CLASSES)},
            "images_per_class_truth": {c: int(truth_img.get(c, 0)) for c in range(N_CLASSES)},
            "images_per_class_label": {c: int(lab_img.get(c, 0)) for c in range(N_CLASSES)},
            "label_pairs_missed": f"{missed}/{pairs}",
            "label_pairs_extra": extra,
            "spindle_images_labelled": f"{sum(MITOTIC_SPINDLE in lab for lab in spindle_imgs)}/{len(spindle_imgs)}",
        }
    return out
