"""Register a dataset in the store: the Kaggle competition layout or the public-HPA layout.

Every image is checked (missing channel, unreadable or truncated PNG, channels of
different sizes, bad labels). Problem images are reported, stored in the ingest
stage's record, and skipped (``strict`` raises instead). Images already in the store
are left alone, so re-running ingest after adding files registers only the new ones.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..classes import N_CLASSES, parse_labels
from ..errors import InputError
from ..progress import NullProgress, add_task
from ..store import begin_stage
from .pngio import channel_paths, inspect_rgby, resize_rgby

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
class IngestReport:
    added: int = 0
    skipped_existing: int = 0
    problems: list[dict] = field(default_factory=list)

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


def run_ingest(
    store,
    candidates: list[Candidate],
    *,
    data_root: Path,
    cache_size: int | None = None,
    strict: bool = False,
    workers: int = 2,
    progress=None,
    params: dict | None = None,
) -> IngestReport:
    store.require_writable()
    if cache_size is not None and not 16 <= cache_size <= 4096:
        raise InputError("--cache-size must be between 16 and 4096")
    table = store.images
    table.set_data_root(data_root)
    seen = set(table.ids().tolist())
    report = IngestReport()
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
    run = begin_stage(store, "ingest", "ingest", params or {})
    progress = progress or NullProgress()
    task = add_task(progress, "ingest", len(todo), unit="img")
    pending: list = []

    def commit() -> None:
        if not pending:
            return
        rows = pd.DataFrame([p[0] for p in pending])
        labels = np.stack([p[1] for p in pending])
        paths = [[table.relative_path(Path(x)) for x in p[2]] for p in pending]
        cache = np.stack([p[3] for p in pending]) if cache_size else None
        table.append(rows, labels, paths, cache=cache, cache_size=cache_size)
        report.added += len(pending)
        pending.clear()

    try:
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
    except BaseException:
        run.finish("failed", added=report.added, problems=report.problems[:MAX_STORED_PROBLEMS])
        raise
    old = (store.attrs("ingest").get("provenance") or {}).get("summary") or {}
    run.finish(
        "done",
        added=report.added,
        skipped_existing=report.skipped_existing,
        n_problems=report.n_problems,
        problems=report.problems[:MAX_STORED_PROBLEMS],
        total_images=table.n,
        previous_added=old.get("added"),
    )
    from ..store.truth import ingest_truth_files  # cell-level truth of synthetic datasets

    ingest_truth_files(store, Path(data_root))
    return report
