"""The ``hpa denoise`` and ``hpa select-mitotic`` stages (library side; the CLI only parses).

``run_denoise`` de-noises each cell fold of a pseudo-label run with a registered denoiser
(``graph-l1`` by default): Y_init from the stored probabilities, embeddings read chunk by
chunk from the store, Y_init / Y_opt / the kNN lists written per fold; a fold is marked
done only after its rows are written, so a killed run redoes at most the fold in flight
(the computation is deterministic for a given seed: same result).

``run_select`` applies the selection rules to the stored Y_opt, writes the selection into
the store, a CSV (ID, cell index, scores) and a PNG gallery; ``run_accept`` makes the
final selection from a reviewed CSV or from the decisions made in ``hpa review``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import HpaError, InputError, StoreError
from ..summary import Summary
from . import select as sel
from .graph_l1 import make_y_init


@dataclass
class DenoiseSummary(Summary):
    run: str = "default"
    denoiser: str = "graph-l1"
    folds_done: list[int] = field(default_factory=list)
    folds_skipped: list[int] = field(default_factory=list)
    cells: dict[int, int] = field(default_factory=dict)
    diagnostics: dict[int, dict] = field(default_factory=dict)
    complete: bool = False


def _fold_rows(store, run: str, cell_folds: str) -> tuple[np.ndarray, np.ndarray]:
    from ..store import pseudolabels as pl
    from ..store.folds import read_cell_folds

    pl.check_current(store, run)
    fold = read_cell_folds(store, cell_folds)  # refused when made for another cells table
    labelled = pl.labelled_mask(store, run)
    if len(fold) != len(labelled):
        raise StoreError("the cell folds belong to another cells table; run `hpa fold --cells` again")
    fold = np.where(labelled, fold, -1).astype(np.int8)
    return fold, labelled


def create(denoiser: str, options: dict | None = None):
    """The denoiser ``denoiser`` built with its own ``options`` (checked against its
    factory's signature: unknown keys are a one-line error naming the accepted ones)."""
    from ..registry import DENOISERS

    options = dict(options or {})
    DENOISERS.check_options(denoiser, options)
    return DENOISERS.create(denoiser, **options)


def _contract(den, denoiser: str, options: dict) -> tuple[int, int, dict]:
    """(min_cells, n_neighbours, params) of a denoiser, with the defaults of the hook spec."""
    def as_int(name: str, default: int) -> int:
        value = getattr(den, name, default)
        try:
            return int(value if value is not None else default)
        except (TypeError, ValueError):
            raise HpaError(f"denoiser {denoiser!r}: its {name} must be an int, not {value!r}") from None

    params = getattr(den, "params", None)
    params = dict(params) if isinstance(params, dict) else dict(options)
    return max(1, as_int("min_cells", 1)), max(0, as_int("n_neighbours", 0)), params


def run_denoise(store, run: str = "default", folds: str | list[int] = "all", denoiser: str = "graph-l1",
                params: dict | None = None, cell_folds: str = "default", overwrite: bool = False,
                recall_sample: int = 300, progress=None) -> DenoiseSummary:
    """De-noise the cell folds of pseudo-label run ``run`` (see the module doc). ``params``
    are the denoiser's own options (``-o key=value``)."""
    from ..plaindata import to_plain
    from ..store import BlockWork, begin_stage
    from ..store import denoise as layout
    from ..store.cells import CellTable
    from ..store.folds import cell_folds_id

    options = dict(params or {})
    den = create(denoiser, options)
    min_cells, n_neighbours, all_params = _contract(den, denoiser, options)
    all_params = to_plain(all_params)
    width = max(n_neighbours, 1)
    fold, _ = _fold_rows(store, run, cell_folds)
    n_folds = int(fold.max()) + 1 if (fold >= 0).any() else 0
    if n_folds == 0:
        raise HpaError(f"no labelled cell is in a de-noising fold; run `hpa pseudolabel --run {run}` and "
                       "`hpa fold --cells` first")
    wanted = list(range(n_folds)) if folds == "all" else [int(f) for f in folds]
    for f in wanted:
        if not 0 <= f < n_folds:
            raise HpaError(f"--fold {f} does not exist: the cells are in folds 0..{n_folds - 1}")
    table_id = CellTable(store).table_id
    # one process per run at a time: folds share chunks (their rows interleave), so they are not shards
    busy = f"another `hpa denoise --run {run}` is running on {store.path}; let it finish (it resumes folds one by one)"
    with layout.run_lock(store, run, busy):
        key = layout.prepare(store, run, len(fold), width, {"cells_table_id": table_id, "denoiser": denoiser,
                                                        "params": all_params, "cell_folds": cell_folds,
                                                        "cell_folds_id": cell_folds_id(store, cell_folds)},
                             overwrite=overwrite)
        with begin_stage(store, key, "denoise", {"run": run, "denoiser": denoiser, **all_params}) as stage:
            summary = DenoiseSummary(run=run, denoiser=denoiser)
            stage.summary = summary.as_dict()
            _denoise_folds(store, run, key, den, denoiser, min_cells, width, fold, n_folds, wanted, recall_sample,
                           progress, summary)
            summary.complete = BlockWork(store, key, n_folds, 1).all_done()
            stage.finish("done" if summary.complete else "running", folds_done=summary.folds_done)
    return summary


def _denoise_folds(store, run, key, den, denoiser, min_cells, width, fold, n_folds, wanted, recall_sample, progress,
                   summary):
    from ..store import BlockWork
    from ..store import denoise as layout
    from ..store import pseudolabels as pl
    from . import knn as knnmod

    work = BlockWork(store, key, n_folds, 1)
    done = work.done_mask()
    probs = pl.read_probs(store, run)
    for f in wanted:
        if done[f]:
            summary.folds_skipped.append(f)
            continue
        rows = np.flatnonzero(fold == f)
        if len(rows) < min_cells:
            raise InputError(f"fold {f} has {len(rows)} labelled cells, fewer than the {min_cells} denoiser "
                             f"{denoiser!r} needs (its min_cells); change its options (-o, e.g. a smaller k) or "
                             "label more cells")
        t0 = time.perf_counter()
        y_init = make_y_init(probs[rows])
        emb = pl.read_embeddings(store, run, rows, dtype=np.float32)  # the contract: a plain [N, D] float32 array
        out = den.denoise(emb, y_init, progress=progress)
        y_opt = np.asarray(out, dtype=np.float64)
        if y_opt.shape != y_init.shape:
            raise HpaError(f"denoiser {denoiser!r} returned Y_opt of shape {y_opt.shape}, expected {y_init.shape}")
        diag = dict(getattr(out, "diagnostics", None) or {})
        nb = getattr(out, "neighbours", None)
        knn_rows = np.full((len(rows), width), -1, dtype=np.int64)
        if nb is not None:
            nb = np.asarray(nb)
            if nb.ndim != 2 or nb.shape[0] != len(rows) or nb.shape[1] > width or (nb >= len(rows)).any():
                raise HpaError(f"denoiser {denoiser!r} returned neighbour lists of shape {nb.shape} for {len(rows)} "
                               f"cells (at most {width} per cell, positions 0..{len(rows) - 1}; its n_neighbours "
                               "says how many)")
            knn_rows[:, : nb.shape[1]] = np.where(nb >= 0, rows[np.clip(nb, 0, None)], -1)
            if diag.get("knn") != "exact" and recall_sample > 0:
                diag["recall_at_k"] = round(knnmod.knn_recall(emb, nb, sample=recall_sample), 4)
        layout.write_fold(store, run, rows, f, y_init, y_opt, knn_rows)
        diag["cells"] = int(len(rows))
        diag["seconds_total"] = round(time.perf_counter() - t0, 2)
        layout.write_fold_diagnostics(store, run, f, diag)
        work.mark_done(f)
        summary.folds_done.append(f)
        summary.cells[f] = int(len(rows))
        summary.diagnostics[f] = diag
    return summary


# ----------------------------------------------------------------------------- select
KNOWN_RULES = ("y-init", "outliers")
FLAG_SCORE, FLAG_OUTLIER, FLAG_NEIGHBOUR = 1, 2, 4  # which rule proposed a selected cell (bit flags)


@dataclass
class SelectSummary(Summary):
    cells: np.ndarray
    counts: dict
    csv: Path | None
    gallery: Path | None
    rule: str


def _scores(y_init, y_opt, fold, cls):
    yo = y_opt[:, cls].astype(np.float64)
    scaled = np.zeros_like(yo)
    for f in np.unique(fold[fold >= 0]):
        m = fold == f
        top = np.nanmax(yo[m]) if m.any() else 0.0
        scaled[m] = yo[m] / top if top > 0 else 0.0
    return y_init[:, cls].astype(np.float64), yo, scaled


def run_select(store, run: str = "default", cls: int = sel.MITOTIC_SPINDLE, init_below: float = 0.4,
               opt_frac: float = 0.92, top: int | None = None, neighbours: int | None = None, min_hits: int = 3,
               positive_at: float = 0.5, name: str = "mitotic", out_dir: Path | None = None,
               gallery: int = 120, known: str = "y-init", per_image: int = 1) -> SelectSummary:
    """Select cells of class ``cls`` (per de-noising fold, as the fold's Y_opt max differs).

    ``known`` says where the known positives come from: ``"y-init"`` (Y_init ≥
    ``positive_at``, the seed's) or ``"outliers"`` (the ``per_image`` cells of each image
    labelled with ``cls`` that differ most from the rest of their image; these are selected
    themselves too). Known positives feed the neighbour rule when ``neighbours`` is given."""
    from ..outpaths import check_out_dir
    from ..store import denoise as layout

    if known not in KNOWN_RULES:
        raise HpaError(f"--known must be one of {', '.join(KNOWN_RULES)}, not {known!r}")
    layout.selection_key(run, name)  # a bad name, a bad folder or a stale run: refused before anything is written
    if out_dir is not None:
        out_dir = check_out_dir(out_dir, "--out")
    layout.check_current(store, run)

    data = layout.read(store, run)
    fold = data["fold"].astype(np.int64)
    ok = fold >= 0
    if not ok.any():
        raise HpaError(f"no de-noised cells for {run!r}; run `hpa denoise --run {run}` first")
    y_init = np.nan_to_num(data["y_init"], nan=1.0)  # not de-noised: never "under the bound"
    y_opt = np.nan_to_num(data["y_opt"], nan=0.0)
    if not 0 <= cls < y_opt.shape[1] - 1:
        raise HpaError(f"--class must be 0..{y_opt.shape[1] - 2}, got {cls}")
    picked: list[np.ndarray] = []
    flag_of: dict[int, int] = {}  # cell row -> bit flags of the rules that picked it (FLAG_*)

    def mark(rows, flag):
        for r in np.asarray(rows).tolist():
            flag_of[int(r)] = flag_of.get(int(r), 0) | flag

    counts: dict = {"per_fold": {}}
    knn = layout.read_knn(store, run) if neighbours else None
    if known == "outliers":
        known_rows = _outlier_known(store, run, cls, ok, per_image)
    else:
        known_rows = sel.known_positives(y_init, cls, positive_at)
        known_rows = known_rows[ok[known_rows]]
    for f in np.unique(fold[ok]):
        rows = np.flatnonzero(fold == f)
        yi, yo = y_init[rows], y_opt[rows]
        c = sel.selection_counts(yi, yo, cls, init_below, opt_frac, top, None, None, min_hits, positive_at)
        fold_counts = c.as_dict()
        if top is not None:
            idx = sel.select_top(yi, yo, top, cls, init_below)
        else:
            idx = sel.select_threshold(yi, yo, cls, init_below, opt_frac)
        chosen = rows[idx]
        mark(chosen, FLAG_SCORE)
        pos = known_rows[fold[known_rows] == f]
        fold_counts["known"] = int(len(pos))
        if known == "outliers":
            mark(pos, FLAG_OUTLIER)
            chosen = np.concatenate([chosen, np.setdiff1d(pos, chosen)])
        if neighbours:
            if (knn[pos] < 0).any():
                raise HpaError("this run stored no neighbour lists (its denoiser gives none); drop --neighbours")
            nb, _ = sel.select_neighbours(knn, pos, neighbours, min_hits)
            nb = nb[(fold[nb] == f) & (y_init[nb, cls] < init_below)]
            fold_counts["neighbours"] = int(len(nb))
            mark(nb, FLAG_NEIGHBOUR)
            chosen = np.concatenate([chosen, np.setdiff1d(nb, chosen)])
        counts["per_fold"][int(f)] = fold_counts
        picked.append(chosen)
    cells = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    yi, yo, scaled = _scores(y_init, y_opt, fold, cls)
    cells = cells[np.argsort(-scaled[cells], kind="stable")]
    scores = np.stack([yi[cells], yo[cells], scaled[cells]], axis=1) if len(cells) else np.zeros((0, 3))
    rule = f"top {top}" if top is not None else f"Y_init < {init_below} and Y_opt >= {opt_frac} * max"
    if known == "outliers":
        rule += f" + image outliers ({per_image} per labelled image)"
    if neighbours:
        rule += f" + neighbours of the known (k={neighbours}, hits >= {min_hits})"
    for key_ in ("threshold", "top", "neighbours", "below_bound", "known"):
        vals = [v.get(key_) for v in counts["per_fold"].values() if v.get(key_) is not None]
        counts[key_] = int(sum(vals)) if vals else None
    flags = {str(FLAG_SCORE): (f"one of the {top} highest Y_opt of its fold (Y_init < {init_below})"
                               if top is not None else f"Y_init < {init_below} and Y_opt >= {opt_frac} x fold max"),
             str(FLAG_OUTLIER): f"one of the {per_image} cell(s) least like the rest of its labelled image",
             str(FLAG_NEIGHBOUR): f"among the first {neighbours} neighbours of >= {min_hits} known positives"}
    proposed = np.array([flag_of.get(int(c), 0) for c in cells], dtype=np.uint8)
    attrs = {"class": int(cls), "rule": rule, "init_below": init_below, "opt_frac": opt_frac, "top": top,
             "neighbours": neighbours, "min_hits": min_hits, "known": known, "per_image": per_image,
             "counts": counts, "accepted": False}
    layout.write_selection(store, run, name, cells, scores, attrs, proposed_by=proposed, flags=flags)
    csv = png = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        csv = out_dir / f"{name}_{run}.csv"
        write_csv(store, csv, cells, scores, fold)
        if gallery and len(cells):
            png = out_dir / f"{name}_{run}.png"
            write_gallery(store, png, cells[:gallery], scores[:gallery])
    return SelectSummary(cells, counts, csv, png, rule)


def _outlier_known(store, run: str, cls: int, ok: np.ndarray, per_image: int) -> np.ndarray:
    """Rows of the ``per_image`` most unusual cells of each image labelled with ``cls``
    (among the de-noised rows ``ok``), from the run's stored embeddings."""
    from ..store import pseudolabels as pl
    from ..store.cells import CellTable

    if not store.images.exists:
        raise HpaError("the store holds no images table: --known outliers needs the image labels")
    image = CellTable(store).column("image").astype(np.int64)
    if len(image) != len(ok):
        raise StoreError(f"the de-noised run has {len(ok)} rows but the cells table {len(image)}; de-noise again")
    labelled = store.images.labels()[:, cls] > 0
    rows = np.flatnonzero(ok & labelled[image])
    if not len(rows):
        return rows
    emb = pl.read_embeddings(store, run, rows).astype(np.float32)
    score = sel.image_outliers(emb, image[rows])
    return rows[sel.outlier_positives(score, image[rows], per_image)]


def write_csv(store, path: Path, cells: np.ndarray, scores: np.ndarray, fold: np.ndarray,
              extra: dict | None = None) -> None:
    import pandas as pd

    from ..store.cells import CellTable

    table = CellTable(store)
    image = table.column("image")[cells]
    all_ids = store.images.ids() if store.images.exists else np.zeros(0, dtype=str)
    ids = np.array([all_ids[i] if i < len(all_ids) else "" for i in image], dtype=object)
    pd.DataFrame({
        "ID": ids, "cell_index": table.column("cell_id")[cells], "row": cells, "fold": fold[cells],
        "y_init": np.round(scores[:, 0], 5), "y_opt": np.round(scores[:, 1], 5),
        "y_opt_scaled": np.round(scores[:, 2], 5), **(extra or {}),
    }).to_csv(path, index=False)


def stretch_protein(g: np.ndarray) -> np.ndarray:
    """float32 0..255: the protein (green) channel scaled so its 99.5th percentile is white."""
    g = np.asarray(g, dtype=np.float32)
    top = max(float(np.percentile(g, 99.5)), 1.0) if g.size else 1.0
    return np.clip(g * (255.0 / top), 0, 255)


def crop_composite(crop: np.ndarray) -> np.ndarray:
    """uint8 ``[h, w, 3]`` of an RGBY ``[4, h, w]`` crop: red = microtubules + yellow/2,
    green = protein stretched (:func:`stretch_protein`), blue = nuclei."""
    r, g, b, y = (np.asarray(crop[j], dtype=np.float32) for j in range(4))
    rgb = np.stack([np.clip((r + y / 2) * 0.6, 0, 255), stretch_protein(g), np.clip(b * 0.8, 0, 255)], axis=-1)
    return rgb.astype(np.uint8)


def fit_tile(img, tile: int):
    """A PIL image scaled (bilinear, aspect kept) so that its longer side is ``tile``."""
    from PIL import Image

    scale = tile / max(img.size)
    return img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))), Image.BILINEAR)


def write_gallery(store, path: Path, cells: np.ndarray, scores: np.ndarray, tile: int = 128, cols: int = 10) -> None:
    """Masked crops (other cells zeroed) as RGB composites (red = microtubules + yellow/2,
    green = protein stretched to its 99.5th percentile, blue = nuclei), scaled to ``tile``,
    in the given (score) order, titled "Y_init / scaled Y_opt"."""
    from PIL import Image, ImageDraw

    from ..data.crops import masked_crop, read_cell_labels, resize_nearest
    from ..store.cells import CellTable

    table = CellTable(store)
    image, cell_id, bbox = table.column("image"), table.column("cell_id"), table.column("bbox")
    rows_n = (len(cells) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * tile, rows_n * (tile + 14)), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    cache: dict[int, tuple] = {}
    for i, c in enumerate(cells):
        im = int(image[c])
        try:
            if im not in cache:
                cache.clear()
                pix = store.images.read_image(im)
                lab = read_cell_labels(store, im)
                cache[im] = (pix, resize_nearest(lab, pix.shape[1:]))
            pix, lab = cache[im]
            crop = masked_crop(pix, lab, int(cell_id[c]), bbox[c])
            thumb = fit_tile(Image.fromarray(crop_composite(crop)), tile)
        except (HpaError, OSError, ValueError, IndexError, KeyError) as exc:  # reported on the tile
            thumb = Image.new("RGB", (tile, tile), (80, 0, 0))
            ImageDraw.Draw(thumb).text((4, 4), f"unreadable:\n{str(exc)[:40]}", fill=(255, 255, 255))
        x, yy = (i % cols) * tile, (i // cols) * (tile + 14)
        sheet.paste(thumb, (x, yy + 14))
        draw.text((x + 2, yy + 1), f"{scores[i, 0]:.2f} / {scores[i, 2]:.2f}", fill=(255, 255, 0))
    sheet.save(path)


@dataclass(eq=False)
class AcceptSummary(Summary):
    """``hpa select-mitotic --accept``: the cells of the final selection. Compares equal to
    (and converts to) its count, as the int this stage returned before."""

    accepted: int
    run: str
    name: str
    source: str

    def __int__(self) -> int:
        return int(self.accepted)

    def __eq__(self, other) -> bool:
        if isinstance(other, AcceptSummary):
            return self.as_dict() == other.as_dict()
        if isinstance(other, (int, np.integer)):
            return int(self.accepted) == int(other)
        return NotImplemented

    __hash__ = None


def run_accept(store, run: str, csv: Path | str | None, name: str = "mitotic") -> AcceptSummary:
    """Make the final selection ``name``: from a reviewed CSV (rows kept = accepted; with a
    ``decision`` column, as ``hpa review --export`` writes, the rows whose decision is
    ``accepted``) or, with ``csv=None``, from the decisions made in ``hpa review``
    (the cells accepted there). Returns its size."""
    import pandas as pd

    from ..store import denoise as layout
    from ..store.cells import CellTable

    layout.selection_key(run, name)
    layout.check_current(store, run)
    table = CellTable(store)
    details = layout.read_selection_details(store, run, name) if layout.has_selection(store, run, name) else None
    old = details["attrs"] if details is not None else {}
    if csv is None:
        review = layout.read_review(store, run, name) if details is not None else None
        if review is None:
            raise HpaError(f"selection {name!r} of {run!r} has no review decisions; review it with "
                           f"`hpa review --run {run} --selection {name}` first")
        cells = review["cells"][review["state"] == layout.ACCEPTED]
        source = "hpa review"
    else:
        path = Path(csv)
        source = str(path)
        try:
            df = pd.read_csv(path)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from None
        if "decision" in df.columns:
            df = df[df["decision"].astype(str).str.strip().str.lower() == "accepted"]
        if "row" in df.columns:
            cells = df["row"].to_numpy(dtype=np.int64)
        elif {"ID", "cell_index"} <= set(df.columns):
            img = store.images.index_of(df["ID"].astype(str).to_numpy())
            starts = table.offsets()[img]
            stops = table.offsets()[img + 1]
            ids = table.column("cell_id")
            cells = []
            for s, e, cid in zip(starts, stops, df["cell_index"].to_numpy()):
                hit = np.flatnonzero(ids[s:e] == cid)
                if not len(hit):
                    raise InputError(f"{path}: cell {cid} is not in its image")
                cells.append(s + int(hit[0]))
            cells = np.asarray(cells, dtype=np.int64)
        else:
            raise InputError(f"{path} needs a 'row' column or 'ID' and 'cell_index' columns")
        if len(cells) and (cells.min() < 0 or cells.max() >= table.n):
            raise InputError(f"{path}: cell rows outside 0..{table.n - 1}")
    cells = np.asarray(cells, dtype=np.int64)
    data = layout.read(store, run)
    cls = int(old.get("class", sel.MITOTIC_SPINDLE))
    yi, yo, scaled = _scores(np.nan_to_num(data["y_init"], nan=1.0), np.nan_to_num(data["y_opt"], nan=0.0),
                             data["fold"].astype(np.int64), cls)
    scores = np.stack([yi[cells], yo[cells], scaled[cells]], axis=1) if len(cells) else np.zeros((0, 3))
    proposed = flags = None
    if details is not None and details["flags"]:
        by_row = dict(zip(details["cells"].tolist(), details["proposed_by"].tolist()))
        proposed = np.array([by_row.get(int(c), 0) for c in cells], dtype=np.uint8)
        flags = details["flags"]
    layout.write_selection(store, run, name, cells, scores,
                           {**old, "class": cls, "accepted": True, "accepted_from": source},
                           proposed_by=proposed, flags=flags)
    review = layout.read_review(store, run, name)
    if review is not None:  # the kept cells are accepted, whatever an earlier review said
        todo = np.flatnonzero(review["state"] != layout.ACCEPTED)
        layout.write_decisions(store, run, name, todo, "accepted", who=f"--accept {source}")
    return AcceptSummary(int(len(cells)), run, name, source)
