"""Register a dataset in the store: the Kaggle competition layout or the public-HPA layout.

Every image is checked (an ID that is not a safe file name stem, missing channel,
unreadable or truncated PNG, a file that is not really a PNG, a header claiming too many
pixels, colour or transparent channels, channels of different sizes, bad labels).
Problem images are reported, stored in the ingest stage's record, and skipped
(``strict`` raises instead). Images already in the store are left alone, so re-running
ingest after adding files registers only the new ones.

Several ingests may run on one store at once: rows are appended under the table's lock,
and an image another process registered meanwhile is not added twice.

Pixel cache: once the store has one (any ingest with ``--cache-size``), every ingest
leaves it complete. New images are cached at the store's size (``--cache-size`` may be
left out), and rows without cached pixels (images registered before the cache existed,
rows of an interrupted run) are filled from the PNGs at the end of each ingest.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..classes import N_CLASSES, parse_labels
from ..errors import InputError
from ..io.ids import image_id_problem
from ..io.png import channel_paths, inspect_rgby, resize_rgby
from ..progress import NullProgress, add_task
from ..store import begin_stage, stage_record
from ..store.images import INGEST
from ..summary import Summary

COMMIT_EVERY = 64
MAX_STORED_PROBLEMS = 10_000


@dataclass
class Candidate:
    image_id: str
    folder: Path
    source: str
    split: str
    label_text: object = None  # None for unlabelled (test) images


@dataclass
class IngestReport(Summary):
    added: int = 0
    skipped_existing: int = 0
    problems: list[dict] = field(default_factory=list)
    cache_size: int | None = None
    cache_filled: int = 0  # cache rows of earlier images filled from their PNGs
    cache_missing: int = 0  # rows still without cached pixels (their PNGs could not be read)

    @property
    def n_problems(self) -> int:
        return len(self.problems)


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.exists():
        raise InputError(f"{path} not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{path.name} lacks column(s) {', '.join(missing)} (has: {', '.join(df.columns)})")
    return df


def _folder_ids(folder: Path) -> list[str]:
    """Image IDs of the RGBY PNGs in ``folder`` (sorted)."""
    if not folder.is_dir():
        return []
    ids = set()
    for p in folder.iterdir():
        name = p.name
        for c in ("red", "green", "blue", "yellow"):
            suffix = f"_{c}.png"
            if name.endswith(suffix):
                ids.add(name[: -len(suffix)])
    return sorted(ids)


def _test_ids(root: Path) -> list[str]:
    sample = root / "sample_submission.csv"
    if sample.exists():
        return _read_csv(sample, ("ID",))["ID"].astype(str).tolist()
    return _folder_ids(root / "test")


def kaggle_candidates(root: Path, include_test: bool = True) -> list[Candidate]:
    root = Path(root)
    out: list[Candidate] = []
    train_csv = root / "train.csv"
    if train_csv.exists():
        df = _read_csv(train_csv, ("ID", "Label"))
        for image_id, label in zip(df["ID"].astype(str), df["Label"]):
            out.append(Candidate(image_id, root / "train", "competition", "train", label))
    elif not (root / "test").is_dir():
        raise InputError(f"{root} has neither train.csv nor a test/ folder: not the Kaggle layout")
    if include_test:
        for image_id in _test_ids(root):
            out.append(Candidate(image_id, root / "test", "test", "test", None))
        # a development split (``hpa synth`` writes one): unlabelled like test, scored on its own
        for image_id in _folder_ids(root / "dev"):
            out.append(Candidate(image_id, root / "dev", "dev", "dev", None))
    return out


def public_candidates(csv: Path, images: Path) -> list[Candidate]:
    df = _read_csv(Path(csv), ("ID", "Label_idx"))
    return [Candidate(str(i), Path(images), "public", "train", lab) for i, lab in zip(df["ID"], df["Label_idx"])]


def _check(cand: Candidate, cache_size: int | None):
    """Read and check one candidate; returns (row dict, labels, pixels cache) or a problem."""
    bad_id = image_id_problem(cand.image_id)
    if bad_id is not None:  # before any path is built from it
        return None, {"ID": cand.image_id if isinstance(cand.image_id, str) else repr(cand.image_id),
                      "problem": f"{bad_id}; the row is skipped"}
    labels = np.zeros(N_CLASSES, dtype=np.uint8)
    if cand.label_text is not None:
        try:
            labels[parse_labels(cand.label_text)] = 1
        except ValueError as exc:
            return None, {"ID": cand.image_id, "problem": f"bad label {cand.label_text!r}: {exc}"}
    try:
        pixels, depth = inspect_rgby(channel_paths(cand.folder, cand.image_id))
    except InputError as exc:
        return None, {"ID": cand.image_id, "problem": str(exc)}
    row = {
        "id": cand.image_id,
        "source": cand.source,
        "split": cand.split,
        "height": pixels.shape[1],
        "width": pixels.shape[2],
        "bit_depth": depth,
        "labelled": cand.label_text is not None,
    }
    cache = resize_rgby(pixels, cache_size) if cache_size else None
    return (row, labels, [str(p) for p in channel_paths(cand.folder, cand.image_id)], cache), None


def _fill_cache(table, report: IngestReport, *, strict: bool, workers: int, progress) -> None:
    """Fill the cache rows that have no marker (earlier images, interrupted runs) from the PNGs."""
    with table.lock():
        size = table.cache_size
        missing = np.flatnonzero(~table.cache_present()) if size is not None else np.zeros(0, np.int64)
    if size is None or len(missing) == 0:
        return
    ids = table.ids()
    task = add_task(progress, f"pixel cache ({size}px) of earlier images", len(missing), unit="img")

    def one(i: int):
        try:
            return resize_rgby(table.read_image(int(i)), size), None
        except InputError as exc:
            return None, {"ID": str(ids[i]), "problem": f"cannot fill its pixel cache row: {exc}"}

    def write(rows: list[int], pixels: list[np.ndarray]) -> None:
        if not rows:
            return
        with table.lock():
            if table.cache_size != size:  # another ingest rebuilt the cache meanwhile
                return
            present = table.cache_present()
            keep = [k for k, r in enumerate(rows) if not present[r]]
            table.write_cache_rows(np.array([rows[k] for k in keep]), [pixels[k] for k in keep])
        report.cache_filled += len(keep)
        rows.clear()
        pixels.clear()

    rows: list[int] = []
    pixels: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, (px, problem) in zip(missing.tolist(), pool.map(one, missing.tolist())):
            if problem is not None:
                if strict:
                    raise InputError(f"image {problem['ID']}: {problem['problem']} (--strict)")
                report.problems.append(problem)
            else:
                rows.append(i)
                pixels.append(px)
                if len(rows) >= COMMIT_EVERY:
                    write(rows, pixels)
            progress.advance(task)
    write(rows, pixels)


def run_ingest(
    store,
    candidates: list[Candidate],
    *,
    data_root: Path,
    cache_size: int | None = None,
    rebuild_cache: bool = False,
    strict: bool = False,
    workers: int = 2,
    progress=None,
    params: dict | None = None,
) -> IngestReport:
    """Register ``candidates``; see the module docstring. ``cache_size`` None keeps the
    store's pixel cache (or none); another size than the store's is refused unless
    ``rebuild_cache``."""
    store.require_writable()
    if cache_size is not None and not 16 <= cache_size <= 4096:
        raise InputError("--cache-size must be between 16 and 4096")
    table = store.images
    with table.lock():
        table.check_readable()  # a damaged id column would make every image look new
        table.set_data_root(data_root)
        cache_size = table.set_cache_size(cache_size, rebuild=rebuild_cache)
        known_n = table.n
        seen = set(table.ids().tolist())
    report = IngestReport(cache_size=cache_size)
    ids_in_batch: set[str] = set()
    todo = []
    for cand in candidates:
        if cand.image_id in seen:
            report.skipped_existing += 1
        elif cand.image_id in ids_in_batch:
            report.problems.append({"ID": cand.image_id, "problem": "listed twice; the first entry was used"})
        else:
            ids_in_batch.add(cand.image_id)
            todo.append(cand)
    progress = progress or NullProgress()
    task = add_task(progress, "ingest", len(todo), unit="img")
    pending: list = []

    def commit() -> None:
        nonlocal known_n
        if not pending:
            return
        with table.lock():
            n_now = table.n
            if n_now != known_n:  # another ingest appended rows meanwhile
                seen.update(table.ids(start=known_n).tolist())
            keep = [p for p in pending if p[0]["id"] not in seen]
            report.skipped_existing += len(pending) - len(keep)
            if keep:
                rows = pd.DataFrame([p[0] for p in keep])
                labels = np.stack([p[1] for p in keep])
                paths = [[table.relative_path(Path(x)) for x in p[2]] for p in keep]
                cache = np.stack([p[3] for p in keep]) if cache_size else None
                table.append(rows, labels, paths, cache=cache, cache_size=cache_size)
                seen.update(p[0]["id"] for p in keep)
            known_n = table.n
        report.added += len(keep)
        pending.clear()

    with begin_stage(store, INGEST, "ingest", params or {}) as run:
        run.summary = lambda: {"added": report.added, "problems": report.problems[:MAX_STORED_PROBLEMS]}
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for result, problem in pool.map(lambda c: _check(c, cache_size), todo):
                if problem is not None:
                    if strict:
                        raise InputError(f"image {problem['ID']}: {problem['problem']} (--strict)")
                    report.problems.append(problem)
                else:
                    pending.append(result)
                    if len(pending) >= COMMIT_EVERY:
                        commit()
                progress.advance(task)
        commit()
        _fill_cache(table, report, strict=strict, workers=workers, progress=progress)
        if table.cache_size is not None:
            report.cache_size = table.cache_size
            report.cache_missing = int((~table.cache_present()).sum())
        old = stage_record(store, INGEST).get("summary") or {}
        run.finish(
            "done",
            added=report.added,
            skipped_existing=report.skipped_existing,
            n_problems=report.n_problems,
            problems=report.problems[:MAX_STORED_PROBLEMS],
            total_images=table.n,
            previous_added=old.get("added"),
            cache_size=report.cache_size,
            cache_filled=report.cache_filled,
            cache_missing=report.cache_missing,
        )
    from ..store.truth import ingest_truth_files  # cell-level truth of synthetic datasets

    with table.lock():
        ingest_truth_files(store, Path(data_root))
    return report
