"""Submission and truth CSVs: read, check, parse into per-image instances, write.

Both files use the competition's format: header ``ID,ImageWidth,ImageHeight,PredictionString``;
``PredictionString`` is space-separated triples ``label confidence encodedMask`` (see
:mod:`hpacli.io.masks`). A truth file is the same, with one triple per (cell, label)
pair and confidence 1.

Every problem is reported with its line in the file (the header is line 1) and the image
ID; parsing collects all problems (keeping the first ``max_problems``) instead of stopping
at the first, and :func:`raise_problems` turns them into one :class:`InputError`.

The parsed form of one image is :class:`ImageInstances`: its distinct masks (each
distinct mask string is decoded once, kept as a pycocotools RLE, or a label image) and
one entry per triple (mask index, label, score). The metric works on that form, so
in-process callers build it straight from label images (:meth:`ImageInstances.from_label_truth`,
:meth:`ImageInstances.from_label_scores`) without encoding anything.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..classes import N_CLASSES
from ..errors import InputError
from ..io.masks import encode_label_image, rle_total, rle_totals, size_message, unpack_counts

HEADER: tuple[str, ...] = ("ID", "ImageWidth", "ImageHeight", "PredictionString")
MAX_PROBLEMS = 20


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    line: int | None  # line in the file (header = 1); None for whole-file problems
    image_id: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.image_id:
            where.append(f"ID {self.image_id}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


@dataclass
class Problems:
    """Collects problems; keeps the first ``limit`` but counts all."""

    limit: int = MAX_PROBLEMS
    items: list[Problem] = field(default_factory=list)
    count: int = 0

    def add(self, line: int | None, image_id: str | None, message: str) -> None:
        self.count += 1
        if len(self.items) < self.limit:
            self.items.append(Problem(line, image_id, message))

    def __bool__(self) -> bool:
        return self.count > 0

    def text(self, what: str) -> str:
        lines = [f"{what}: {self.count} problem(s)"]
        lines += [f"  {p}" for p in self.items]
        if self.count > len(self.items):
            lines.append(f"  ... and {self.count - len(self.items)} more")
        return "\n".join(lines)


def raise_problems(problems: Problems, what: str) -> None:
    """Raise one InputError listing the problems (nothing when there are none)."""
    if problems:
        raise InputError(problems.text(what))


# --------------------------------------------------------------------------- instances


@dataclass
class ImageInstances:
    """One image's masks and (mask, label, score) entries.

    Masks are either ``rles`` (pycocotools RLE dicts, one per distinct mask) or a
    ``label_image`` with ``label_ids`` (mask k = ``label_image == label_ids[k]``).
    ``mask_index``, ``labels`` and ``scores`` have one entry per triple, in the order of
    the PredictionString (that order breaks ties in score where the order matters).
    Entries whose mask is empty are already removed; ``n_empty`` counts them.
    """

    image_id: str
    height: int
    width: int
    mask_index: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    rles: list[dict] | None = None
    label_image: np.ndarray | None = None
    label_ids: np.ndarray | None = None
    line: int | None = None
    n_empty: int = 0

    @property
    def n_masks(self) -> int:
        return len(self.rles) if self.rles is not None else len(self.label_ids)

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_label_truth(
        cls, image_id: str, label_image: np.ndarray, cell_classes: Mapping[int, Iterable[int]]
    ) -> ImageInstances:
        """Truth from a label image: ``cell_classes`` maps a cell id to its classes.

        Cells of the label image without an entry (or with no classes) are not instances.
        Raises InputError for a cell id absent from the image or a class outside 0..18.
        """
        label_image = _check_label_image(image_id, label_image)
        present = _present_ids(label_image)
        ids, idx, labels = [], [], []
        for cell, classes in cell_classes.items():
            classes = sorted({int(c) for c in classes})
            if not classes:
                continue
            if int(cell) not in present:
                raise InputError(f"truth for {image_id}: cell {cell} is not in its label image")
            bad = [c for c in classes if not 0 <= c < N_CLASSES]
            if bad:
                raise InputError(f"truth for {image_id}: cell {cell} has labels {bad} outside 0..{N_CLASSES - 1}")
            k = len(ids)
            ids.append(int(cell))
            idx += [k] * len(classes)
            labels += classes
        return cls(
            image_id, *label_image.shape, mask_index=np.asarray(idx, dtype=np.int64),
            labels=np.asarray(labels, dtype=np.int64), scores=np.ones(len(labels)),
            label_image=label_image, label_ids=np.asarray(ids, dtype=np.int64),
        )

    @classmethod
    def from_label_scores(
        cls,
        image_id: str,
        label_image: np.ndarray,
        cell_scores: Mapping[int, Iterable[float]],
        classes: Iterable[int] | None = None,
    ) -> ImageInstances:
        """Predictions from a label image: ``cell_scores`` maps a cell id to its 19 scores.

        Every cell gets one detection per class in ``classes`` (default all 19), in class
        order. Cells absent from the label image have empty masks and are dropped
        (counted in ``n_empty``). Raises InputError for scores that are not 19 finite numbers.
        """
        label_image = _check_label_image(image_id, label_image)
        present = _present_ids(label_image)
        classes = np.arange(N_CLASSES) if classes is None else np.asarray(sorted(set(classes)), dtype=np.int64)
        ids, scores, n_empty = [], [], 0
        for cell, probs in cell_scores.items():
            probs = np.asarray(probs, dtype=np.float64).ravel()
            if probs.shape != (N_CLASSES,) or not np.isfinite(probs).all():
                raise InputError(
                    f"predictions for {image_id}: cell {cell} needs {N_CLASSES} finite scores, got {probs.tolist()}"
                )
            if int(cell) not in present:
                n_empty += len(classes)
                continue
            ids.append(int(cell))
            scores.append(probs[classes])
        n = len(ids)
        return cls(
            image_id, *label_image.shape,
            mask_index=np.repeat(np.arange(n), len(classes)),
            labels=np.tile(classes, n),
            scores=np.concatenate(scores) if scores else np.zeros(0),
            label_image=label_image, label_ids=np.asarray(ids, dtype=np.int64), n_empty=n_empty,
        )


def _check_label_image(image_id: str, label_image) -> np.ndarray:
    arr = np.asarray(label_image)
    if arr.ndim != 2 or arr.dtype.kind not in "iu":
        raise InputError(f"{image_id}: a label image must be a 2-D integer array, got {arr.dtype} {arr.shape}")
    return arr


def _present_ids(label_image: np.ndarray) -> set[int]:
    if label_image.size == 0:
        return set()
    if label_image.min() < 0:
        raise InputError("label images must not hold negative ids")
    if label_image.max() < (1 << 22):
        counts = np.bincount(label_image.ravel())
        ids = np.flatnonzero(counts)
    else:
        ids = np.unique(label_image)
    return {int(i) for i in ids if i != 0}


# --------------------------------------------------------------------------- reading


def read_frame(path: str | Path):
    """Read a submission/truth CSV as strings (pandas DataFrame) after checking its header.

    Adds a ``_line`` column (the line of each row; header = line 1). Rows without exactly
    4 fields are left out and listed in ``df.attrs["row_problems"]`` as
    ``(line, ID, message)`` (:func:`parse_frame` reports them). Raises InputError for a
    missing file, a file that is not UTF-8 text or a wrong header.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    csv.field_size_limit(1 << 30)  # a PredictionString of a big image runs to megabytes
    rows, lines, row_problems = [], [], []
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, [])
            if tuple(h.strip() for h in header) != HEADER:
                found = ",".join(header)[:200]
                raise InputError(f"{path}: line 1: the header must be {','.join(HEADER)}, found {found!r}")
            for row in reader:
                if not row:
                    continue
                if len(row) != len(HEADER):
                    row_problems.append(
                        (reader.line_num, row[0].strip() or None, f"{len(row)} fields, expected {len(HEADER)}")
                    )
                    continue
                rows.append(row)
                lines.append(reader.line_num)
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text (UTF-8) CSV file") from None
    except csv.Error as exc:
        raise InputError(f"{path}: not a readable CSV ({exc})") from None
    df = pd.DataFrame(rows, columns=list(HEADER), dtype=str) if rows else pd.DataFrame(columns=list(HEADER))
    df["_line"] = np.asarray(lines, dtype=np.int64)
    df.attrs["row_problems"] = row_problems
    return df


@dataclass
class Parsed:
    images: dict[str, ImageInstances]
    problems: Problems
    n_rows: int = 0
    n_triples: int = 0
    n_empty: int = 0


def parse_frame(df, kind: str = "submission", max_problems: int = MAX_PROBLEMS) -> Parsed:
    """Check every row of a submission (``kind="submission"``) or truth (``kind="truth"``)
    frame and parse it into :class:`ImageInstances` per ID. Never raises for bad content:
    the problems are in ``Parsed.problems``.

    Checks: ID present and not repeated; ImageWidth/ImageHeight positive integers; the
    PredictionString a multiple of 3 tokens; labels integers in 0..18; confidences finite
    numbers; masks decodable with runs that cover exactly ImageWidth x ImageHeight pixels.
    Predictions with empty masks are dropped (counted in ``n_empty``); in a truth file an
    empty mask, or the same (mask, label) twice, is a problem.
    """
    if kind not in ("submission", "truth"):
        raise ValueError("kind must be 'submission' or 'truth'")
    from pycocotools import mask as mask_util

    problems = Problems(max_problems)
    missing = [c for c in HEADER if c not in df.columns]
    if missing:
        problems.add(1, None, f"missing column(s) {', '.join(missing)}; the header must be {','.join(HEADER)}")
        return Parsed({}, problems)
    for line, image_id, message in df.attrs.get("row_problems", []):
        problems.add(line, image_id, message)
    lines = df["_line"].tolist() if "_line" in df.columns else list(range(2, len(df) + 2))
    images: dict[str, ImageInstances] = {}
    first_line: dict[str, int] = {}
    out = Parsed(images, problems, n_rows=len(df) + len(df.attrs.get("row_problems", [])))
    for line, image_id, w_text, h_text, pred in zip(
        lines, df["ID"].tolist(), df["ImageWidth"].tolist(), df["ImageHeight"].tolist(),
        df["PredictionString"].tolist(),
    ):
        image_id = _text(image_id).strip()
        if not image_id:
            problems.add(line, None, "empty ID")
            continue
        if image_id in first_line:
            problems.add(line, image_id, f"ID repeated (first on line {first_line[image_id]})")
            continue
        first_line[image_id] = line
        width, height = _positive_int(w_text), _positive_int(h_text)
        if width is None or height is None:
            problems.add(
                line, image_id,
                f"ImageWidth and ImageHeight must be positive integers, got {_text(w_text)!r}, {_text(h_text)!r}",
            )
            continue
        tokens = _text(pred).split()
        if len(tokens) % 3:
            problems.add(
                line, image_id,
                f"PredictionString has {len(tokens)} tokens, not a multiple of 3 (label confidence mask)",
            )
            continue
        n_before = problems.count
        labels = _parse_labels(tokens[0::3], line, image_id, problems)
        scores = _parse_scores(tokens[1::3], line, image_id, problems)
        distinct: dict[str, int] = {}
        counts: list[bytes] = []
        first_triple: list[int] = []
        index = np.empty(len(tokens) // 3, dtype=np.int64)
        for t, enc in enumerate(tokens[2::3]):
            k = distinct.get(enc)
            if k is None:
                k = distinct[enc] = len(counts)
                first_triple.append(t)
                try:
                    counts.append(unpack_counts(enc))
                except ValueError as exc:
                    counts.append(b"")
                    problems.add(line, image_id, f"triple {t + 1}: {exc}")
            index[t] = k
        if problems.count > n_before:
            continue
        _check_runs(counts, first_triple, height, width, line, image_id, problems)
        if problems.count > n_before:
            continue
        rles = [{"size": [height, width], "counts": c} for c in counts]
        out.n_triples += len(index)
        areas = mask_util.area(rles) if rles else np.zeros(0)
        empty_mask = areas == 0
        n_empty = int(empty_mask[index].sum())
        if kind == "truth":
            if n_empty:
                t = int(np.flatnonzero(empty_mask[index])[0])
                problems.add(line, image_id, f"triple {t + 1}: empty mask in the truth ({n_empty} in this row)")
                continue
            pairs = index * N_CLASSES + labels
            if len(np.unique(pairs)) != len(pairs):
                problems.add(line, image_id, "the same (mask, label) pair appears twice in the truth")
                continue
        elif n_empty:
            keep = ~empty_mask[index]
            index, labels, scores = index[keep], labels[keep], scores[keep]
            out.n_empty += n_empty
        images[image_id] = ImageInstances(
            image_id, height, width, mask_index=index, labels=labels, scores=scores, rles=rles,
            line=line, n_empty=n_empty,
        )
    return out


def _check_runs(counts, first_triple, height, width, line, image_id, problems: Problems) -> None:
    """All distinct masks of a row at once: runs well formed and covering H x W pixels."""
    try:
        totals = rle_totals(counts)
    except ValueError:  # find the culprit(s) one by one
        totals = []
        for c, t in zip(counts, first_triple):
            try:
                totals.append(rle_total(c))
            except ValueError as exc:
                problems.add(line, image_id, f"triple {t + 1}: {exc}")
                totals.append(height * width)
    for k in np.flatnonzero(np.asarray(totals, dtype=np.int64) != height * width):
        problems.add(line, image_id, f"triple {first_triple[k] + 1}: {size_message(int(totals[k]), height, width)}")


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _positive_int(value) -> int | None:
    try:
        if isinstance(value, int | np.integer):
            v = int(value)
        else:
            text = _text(value).strip()
            if not text.lstrip("+").isdigit():
                return None
            v = int(text)
    except (TypeError, ValueError):
        return None
    return v if v > 0 else None


def _parse_labels(tokens: list[str], line: int, image_id: str, problems: Problems) -> np.ndarray:
    try:
        labels = np.array(tokens, dtype=str).astype(np.int64) if tokens else np.zeros(0, np.int64)
        if labels.size == 0 or ((labels >= 0) & (labels < N_CLASSES)).all():
            return labels
    except ValueError:
        pass
    for t, tok in enumerate(tokens):
        try:
            v = int(tok)
        except ValueError:
            problems.add(line, image_id, f"triple {t + 1}: label {tok!r} is not an integer")
            continue
        if not 0 <= v < N_CLASSES:
            problems.add(line, image_id, f"triple {t + 1}: label {v} is outside 0..{N_CLASSES - 1}")
    return np.zeros(len(tokens), np.int64)


def _parse_scores(tokens: list[str], line: int, image_id: str, problems: Problems) -> np.ndarray:
    try:
        scores = np.array(tokens, dtype=str).astype(np.float64) if tokens else np.zeros(0)
        if np.isfinite(scores).all():
            return scores
    except ValueError:
        pass
    for t, tok in enumerate(tokens):
        try:
            v = float(tok)
        except ValueError:
            problems.add(line, image_id, f"triple {t + 1}: confidence {tok!r} is not a number")
            continue
        if not math.isfinite(v):
            problems.add(line, image_id, f"triple {t + 1}: confidence {tok!r} is not a finite number")
    return np.zeros(len(tokens))


def read_parsed(path: str | Path, kind: str = "submission", max_problems: int = MAX_PROBLEMS) -> Parsed:
    """``read_frame`` + ``parse_frame``; raises InputError listing the problems found."""
    parsed = parse_frame(read_frame(path), kind=kind, max_problems=max_problems)
    raise_problems(parsed.problems, f"{kind} file {path}")
    return parsed


# --------------------------------------------------------------------------- checking


@dataclass
class CheckReport:
    """What ``hpa submit --check`` found: counts and the problems (first ``limit`` kept)."""

    path: str
    n_rows: int
    n_triples: int
    n_empty: int
    problems: Problems
    n_listed: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def read_image_list(path: str | Path) -> dict[str, tuple[int, int] | None]:
    """An image list CSV with an ``ID`` column (optionally ``ImageWidth``, ``ImageHeight``,
    as in the competition's sample_submission.csv): ``{ID: (width, height) or None}``."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputError(f"{path}: not a readable CSV ({str(exc).strip()[:300]})") from None
    if "ID" not in df.columns:
        raise InputError(f"{path}: the image list needs an ID column (found {', '.join(map(str, df.columns))})")
    sized = "ImageWidth" in df.columns and "ImageHeight" in df.columns
    out: dict[str, tuple[int, int] | None] = {}
    for i, row in enumerate(df.itertuples(index=False)):
        image_id = str(row.ID).strip()
        size = None
        if sized:
            w, h = _positive_int(row.ImageWidth), _positive_int(row.ImageHeight)
            if w is None or h is None:
                raise InputError(f"{path}: line {i + 2}: ImageWidth/ImageHeight must be positive integers")
            size = (w, h)
        out[image_id] = size
    return out


def check_submission(
    path: str | Path, images: str | Path | None = None, max_problems: int = 50
) -> CheckReport:
    """Validate a submission before upload (never raises for bad content; a missing file
    or a bad image list raise InputError; a wrong header is a problem on line 1): every row as in
    :func:`parse_frame`, plus, given an image list, IDs missing from the submission, IDs
    not in the list and sizes that differ from the list's."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    try:
        df = read_frame(path)
    except InputError as exc:  # wrong header, not a CSV: a problem of the file, reported like the others
        problems = Problems(max_problems)
        problems.add(1, None, str(exc).removeprefix(f"{path}: ").removeprefix("line 1: "))
        return CheckReport(str(path), 0, 0, 0, problems)
    parsed = parse_frame(df, kind="submission", max_problems=max_problems)
    report = CheckReport(str(path), parsed.n_rows, parsed.n_triples, parsed.n_empty, parsed.problems)
    if images is not None:
        listed = read_image_list(images)
        report.n_listed = len(listed)
        seen: dict[str, tuple[int, int, int]] = {}
        for line, image_id, w, h in zip(df["_line"], df["ID"], df["ImageWidth"], df["ImageHeight"]):
            seen.setdefault(str(image_id).strip(), (int(line), _positive_int(w), _positive_int(h)))
        for image_id, (line, w, h) in seen.items():
            if image_id and image_id not in listed:
                report.problems.add(line, image_id, f"ID is not in the image list {images}")
            elif image_id and listed[image_id] is not None and None not in (w, h) and listed[image_id] != (w, h):
                lw, lh = listed[image_id]
                report.problems.add(line, image_id, f"size {w}x{h} differs from the image list's {lw}x{lh}")
        missing = [i for i in listed if i not in seen]
        for image_id in missing:
            report.problems.add(None, image_id, "missing from the submission")
    return report


# --------------------------------------------------------------------------- writing


def format_prediction_string(labels: Iterable[int], scores: Iterable[float], masks: Iterable[str]) -> str:
    """Join triples ``label confidence mask`` (confidence with 8 significant digits)."""
    return " ".join(f"{int(c)} {float(s):.8g} {m}" for c, s, m in zip(labels, scores, masks))


def submission_row(
    image_id: str,
    label_image: np.ndarray,
    cell_scores: Mapping[int, Iterable[float]],
    classes: Iterable[int] | None = None,
    min_score: float = 0.0,
) -> tuple[str, int, int, str]:
    """One submission row from a label image and per-cell scores (19 per cell): every cell
    gets a triple per class in ``classes`` (default all 19) whose score is >= ``min_score``."""
    label_image = _check_label_image(image_id, label_image)
    h, w = label_image.shape
    classes = list(range(N_CLASSES)) if classes is None else sorted(set(classes))
    present = _present_ids(label_image)
    ids = [int(c) for c in cell_scores if int(c) in present]
    encoded = encode_label_image(label_image, ids)
    labels, scores, masks = [], [], []
    for cell in ids:
        probs = np.asarray(cell_scores[cell], dtype=np.float64).ravel()
        if probs.shape != (N_CLASSES,) or not np.isfinite(probs).all():
            raise InputError(f"predictions for {image_id}: cell {cell} needs {N_CLASSES} finite scores")
        for c in classes:
            if probs[c] >= min_score:
                labels.append(c)
                scores.append(probs[c])
                masks.append(encoded[cell])
    return image_id, w, h, format_prediction_string(labels, scores, masks)


def truth_row(
    image_id: str, label_image: np.ndarray, cell_classes: Mapping[int, Iterable[int]]
) -> tuple[str, int, int, str]:
    """One truth row: a triple ``label 1 mask`` per (cell, label) pair."""
    label_image = _check_label_image(image_id, label_image)
    h, w = label_image.shape
    cells = {int(k): sorted({int(c) for c in v}) for k, v in cell_classes.items()}
    cells = {k: v for k, v in cells.items() if v}
    absent = sorted(set(cells) - _present_ids(label_image))
    if absent:
        raise InputError(f"truth for {image_id}: cell(s) {absent[:10]} are not in its label image")
    encoded = encode_label_image(label_image, list(cells))
    labels, masks = [], []
    for cell, classes in cells.items():
        labels += classes
        masks += [encoded[cell]] * len(classes)
    return image_id, w, h, format_prediction_string(labels, [1] * len(labels), masks)


def write_rows(path: str | Path, rows: Iterable[tuple[str, int, int, str]]) -> int:
    """Write rows ``(ID, ImageWidth, ImageHeight, PredictionString)`` with the header;
    returns the number of rows. Works for truth files too."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(HEADER)
        for image_id, w, h, pred in rows:
            writer.writerow((image_id, int(w), int(h), pred))
            n += 1
    return n
