"""What the review page shows and writes: one selection of one de-noising run.

:class:`ReviewSession` reads the selection (cells, scores, the rules that proposed each
cell), the cells' images and neighbour lists from the store, renders PNGs on request
(the select-mitotic gallery's colours: :func:`hpacli.label.denoise.crop_composite`) and
writes each decision to the store at once (:func:`hpacli.store.denoise.write_decisions`,
under the store lock). Cells are addressed by their position in the selection (0..n-1);
every position is checked.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from datetime import datetime, timezone

import numpy as np

from ..classes import CLASS_NAMES
from ..errors import HpaError, StoreError
from ..store import denoise as D

PANELS = ("rgb", "red", "green", "blue", "yellow")  # the composite, then the four channels
PANEL_SIZE = 200
THUMB_SIZE = 72
IMAGE_SIZE = 480  # the whole image is shown at most this wide/high (at least half of it)
N_NEIGHBOURS = 24  # neighbours kept per cell (selection positions, nearest first)
OUTLINE = (255, 255, 0)


class ReviewSession:
    """One selection under review; thread-safe (the page's requests come in parallel)."""

    def __init__(self, store, run: str, name: str, cls: int | None = None, reviewer: str = "",
                 cache_images: int = 6) -> None:
        from ..store.cells import CellTable

        self.store, self.run, self.name, self.reviewer = store, run, name, str(reviewer)[:64]
        details = D.read_selection_details(store, run, name)
        attrs = details["attrs"]
        sel_cls = attrs.get("class")
        if cls is None and sel_cls is None:
            raise HpaError(f"selection {name!r} of {run!r} names no class; pass --class")
        if cls is not None and sel_cls is not None and int(cls) != int(sel_cls):
            raise HpaError(f"selection {name!r} of {run!r} is for class {int(sel_cls)} "
                           f"({CLASS_NAMES[int(sel_cls)]}), not {int(cls)}; select again with --class {int(cls)}")
        self.cls = int(cls if cls is not None else sel_cls)
        if not 0 <= self.cls < len(CLASS_NAMES):
            raise HpaError(f"--class must be 0..{len(CLASS_NAMES) - 1}, got {self.cls}")
        self.cells = details["cells"].astype(np.int64)
        self.n = len(self.cells)
        self.scores = details["scores"]
        self.proposed_by = details["proposed_by"]
        self.flags = details["flags"]
        self.attrs = attrs
        table = CellTable(store)
        if self.n and (self.cells.min() < 0 or self.cells.max() >= table.n):
            raise StoreError(f"selection {name!r} of {run!r} names cells outside the cells table; select again")
        self.image = table.column("image")[self.cells].astype(np.int64)
        self.cell_id = table.column("cell_id")[self.cells].astype(np.int64)
        self.bbox = table.column("bbox")[self.cells].astype(np.int64)
        self.fold = D.read(store, run)["fold"][self.cells].astype(np.int64) if self.n else np.zeros(0, np.int64)
        ids = store.images.ids() if store.images.exists else np.zeros(0, dtype=str)
        self.image_ids = [str(ids[i]) if i < len(ids) else f"#{i}" for i in self.image.tolist()]
        self.neighbours, self.has_knn = self._neighbours()
        D.ensure_review(store, run, name, attrs={"class": self.cls})
        self._render_lock = threading.Lock()
        self._pixels: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._png: OrderedDict[tuple[int, str], bytes] = OrderedDict()
        self._cache_images = max(1, int(cache_images))

    # ------------------------------------------------------------------ data for the page
    def _neighbours(self) -> tuple[list[list[int]], bool]:
        """Per cell: the selection positions among its stored nearest cells, nearest first."""
        if not self.n:
            return [], False
        knn = D.read_knn(self.store, self.run, self.cells)
        if (knn < 0).all():
            return [[] for _ in range(self.n)], False
        pos = {int(c): i for i, c in enumerate(self.cells.tolist())}
        out = []
        for i, row in enumerate(knn.tolist()):
            out.append([pos[r] for r in row if r in pos and pos[r] != i][:N_NEIGHBOURS])
        return out, True

    def check_index(self, i: int) -> int:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.n:
            raise KeyError(f"no cell {i!r} in this selection (0..{self.n - 1})")
        return i

    def rule_of(self, i: int) -> str:
        bits = int(self.proposed_by[i]) if len(self.proposed_by) else 0
        texts = [t for f, t in sorted(self.flags.items(), key=lambda kv: int(kv[0])) if bits & int(f)]
        return "; ".join(texts) if texts else str(self.attrs.get("rule", "imported selection"))

    def meta(self) -> dict:
        return {"store": str(self.store.path), "run": self.run, "selection": self.name, "class": self.cls,
                "class_name": CLASS_NAMES[self.cls], "rule": str(self.attrs.get("rule", "")),
                "accepted": bool(self.attrs.get("accepted")), "n": self.n, "knn": self.has_knn,
                "reviewer": self.reviewer, "states": list(D.REVIEW_STATES), "panels": list(PANELS)}

    def cells_json(self) -> list[dict]:
        def num(v):
            v = float(v)
            return None if math.isnan(v) else round(v, 4)

        return [{"i": i, "row": int(self.cells[i]), "image": self.image_ids[i], "cell": int(self.cell_id[i]),
                 "fold": int(self.fold[i]), "y_init": num(self.scores[i, 0]), "y_opt": num(self.scores[i, 1]),
                 "scaled": num(self.scores[i, 2]), "rule": self.rule_of(i), "nb": self.neighbours[i]}
                for i in range(self.n)]

    def states(self) -> dict:
        review = D.read_review(self.store, self.run, self.name)
        state = review["state"]
        when = [None if math.isnan(t) else _iso(t) for t in review["time"].tolist()]
        return {"state": [int(s) for s in state.tolist()], "time": when, "who": [str(w) for w in review["who"]],
                "counts": D.review_counts(state)}

    def decide(self, i: int, state: str) -> dict:
        """Record one decision at once; returns the cell's stored state and the counts."""
        self.check_index(i)
        if state not in D.REVIEW_STATES:
            raise ValueError(f"state must be one of {', '.join(D.REVIEW_STATES)}")
        D.write_decisions(self.store, self.run, self.name, [i], [state], who=self.reviewer)
        st = self.states()
        return {"i": i, "state": st["state"][i], "time": st["time"][i], "who": st["who"][i],
                "counts": st["counts"]}

    def export_csv(self) -> bytes:
        """The selection with the decisions (``decision``, ``decided_at``, ``reviewer``),
        readable by ``hpa select-mitotic --accept``."""
        from ..label.denoise import write_csv

        st = self.states()
        extra = {"proposed_by": [self.rule_of(i) for i in range(self.n)],
                 "decision": [D.REVIEW_STATES[s] for s in st["state"]],
                 "decided_at": [t or "" for t in st["time"]], "reviewer": st["who"]}
        fold = np.full(int(self.cells.max()) + 1 if self.n else 0, -1, dtype=np.int64)
        fold[self.cells] = self.fold
        buf = io.StringIO()
        write_csv(self.store, buf, self.cells, self.scores, fold, extra=extra)
        return buf.getvalue().encode()

    # ------------------------------------------------------------------ PNGs
    def png(self, i: int, kind: str) -> bytes:
        """``kind``: a panel of :data:`PANELS`, ``image`` (the whole image, the cell
        outlined) or ``thumb``. A cell whose pixels cannot be read gets a tile saying why."""
        self.check_index(i)
        if kind not in (*PANELS, "image", "thumb"):
            raise KeyError(f"no picture {kind!r}")
        key = (i, kind)
        with self._render_lock:
            if key in self._png:
                self._png.move_to_end(key)
                return self._png[key]
            try:
                img = self._render(i, kind)
            except (HpaError, OSError, ValueError, IndexError, KeyError) as exc:
                img = _message_tile(f"unreadable:\n{str(exc)[:60]}", PANEL_SIZE if kind != "thumb" else THUMB_SIZE)
            buf = io.BytesIO()
            img.save(buf, format="PNG", compress_level=3)
            data = buf.getvalue()
            self._png[key] = data
            while len(self._png) > 400:
                self._png.popitem(last=False)
            return data

    def _load(self, im: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixels ``[4, H, W]`` at original resolution and the cell labels resized to them."""
        from ..data.crops import _resize, read_cell_labels, resize_nearest

        if im in self._pixels:
            self._pixels.move_to_end(im)
            return self._pixels[im]
        try:
            pix = self.store.images.read_image(im)
        except (HpaError, OSError, ValueError) as exc:  # the PNGs moved: the pixel cache, if any
            if self.store.images.cache_size is None:
                raise
            df = self.store.images.df()
            shape = (int(df["height"].iat[im]), int(df["width"].iat[im]))
            try:
                pix = _resize(self.store.images.read_cache(im), shape)
            except (StoreError, OSError, ValueError):
                raise exc from None
        lab = read_cell_labels(self.store, im)
        if lab.size == 0:
            raise HpaError("no label image (the image was unreadable when segmented)")
        lab = resize_nearest(lab, pix.shape[1:])
        self._pixels[im] = (pix, lab)
        while len(self._pixels) > self._cache_images:
            self._pixels.popitem(last=False)
        return pix, lab

    def _render(self, i: int, kind: str):
        from PIL import Image

        from ..data.crops import masked_crop, resize_nearest
        from ..label.denoise import crop_composite, fit_tile, stretch_protein

        pix, lab = self._load(int(self.image[i]))
        cid = int(self.cell_id[i])
        if kind == "image":
            return _outlined(pix, lab, cid, crop_composite, resize_nearest)
        crop = masked_crop(pix, lab, cid, self.bbox[i])
        if kind in ("rgb", "thumb"):
            img = Image.fromarray(crop_composite(crop))
        else:
            ch = PANELS.index(kind) - 1
            v = stretch_protein(crop[ch]) if kind == "green" else crop[ch].astype(np.float32)
            img = Image.fromarray(v.astype(np.uint8)).convert("RGB")
        size = THUMB_SIZE if kind == "thumb" else PANEL_SIZE
        tile = Image.new("RGB", (size, size), (0, 0, 0))
        img = fit_tile(img, size)
        tile.paste(img, ((size - img.size[0]) // 2, (size - img.size[1]) // 2))
        return tile


def _outlined(pix, lab, cid, composite, resize_nearest):
    """The whole image (composite colours) at most IMAGE_SIZE px, the cell's outline drawn."""
    from PIL import Image
    from scipy import ndimage

    h, w = pix.shape[1:]
    f = IMAGE_SIZE / max(h, w)
    if f > 1:  # small images: enlarge by a whole factor so the outline stays sharp
        f = max(1, int(f))
    shape = (max(1, round(h * f)), max(1, round(w * f)))
    img = Image.fromarray(composite(pix)).resize((shape[1], shape[0]), Image.NEAREST if f >= 1 else Image.BILINEAR)
    rgb = np.array(img)
    mask = resize_nearest(lab, shape) == cid
    edge = mask & ~ndimage.binary_erosion(mask)
    edge = ndimage.binary_dilation(edge, iterations=1)
    rgb[edge] = OUTLINE
    return Image.fromarray(rgb)


def _message_tile(text: str, size: int):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (80, 0, 0))
    ImageDraw.Draw(img).text((4, 4), text, fill=(255, 255, 255))
    return img


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).astimezone().isoformat(timespec="seconds")
