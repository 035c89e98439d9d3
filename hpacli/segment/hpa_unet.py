"""The ``hpa-unet`` segmenter: the HPA DPN-UNet pair (nuclei + 3-channel cell model) run by
our own implementation, batched, then :mod:`.postprocess`.

Weights come from local files only (``nuclei_model``/``cell_model`` or the environment
variables ``HPA_NUCLEI_MODEL``/``HPA_CELL_MODEL``); nothing is downloaded. Images are
reduced to the network scale (0.25 by default, anti-aliased bilinear), normalised
(mean (124, 117, 104)/255, std 1/(0.0167·255)), reflect-padded to a multiple of 32 (1728²
-> 432 -> 448 works), run in batches (bf16 on GPU unless ``precision="fp32"``; fp32 on
CPU), softmaxed and cropped back.

Options (``hpa segment --segmenter hpa-unet -o key=value``): ``nuclei_model``,
``cell_model`` (weight files; ``--nuclei-model``/``--cell-model`` are aliases),
``postprocess`` (``fast``, default, or ``exact``: upstream's full-size steps),
``author_rules`` (``fast`` only: the seed author's median seed cutoff and small edge
cells dropped; off by default = upstream's behaviour), ``scale``, ``precision``.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from .postprocess import label_cells_from_maps, upsample_labels
from .unet import MEAN, STD

ENV = {"nuclei": "HPA_NUCLEI_MODEL", "cell": "HPA_CELL_MODEL"}
OPTION = {"nuclei": "--nuclei-model", "cell": "--cell-model"}
FILES = {"nuclei": "dpn_unet_nuclei_v1.pth", "cell": "dpn_unet_cell_3ch_v1.pth"}


def resolve_weights(role: str, path) -> str:
    path = path or os.environ.get(ENV[role])
    if not path:
        raise InputError(
            f"hpa-unet needs the {role} model weights: pass {OPTION[role]} PATH (the official "
            f"{FILES[role]}, zenodo record 4665863) or set {ENV[role]}; hpacli never downloads weights. "
            "The weight-free default is --segmenter classical."
        )
    if not os.path.isfile(path):
        raise InputError(f"{OPTION[role]} {path}: no such file")
    return str(path)


def pad_to_32(x, multiple: int = 32):
    """Reflect-pad a [B, C, H, W] tensor at the bottom/right to a multiple of ``multiple``."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class HpaUnetSegmenter:
    name = "hpa-unet"

    def __init__(self, nuclei_model=None, cell_model=None, device: str = "auto", batch_size: int = 4,
                 scale: float = 0.25, postprocess: str = "fast", precision: str = "auto",
                 author_rules: bool = False, models=None) -> None:
        import torch

        if postprocess not in ("fast", "exact"):
            raise InputError(f"postprocess must be fast or exact, not {postprocess!r}")
        if author_rules and postprocess != "fast":
            raise InputError("author_rules=true needs postprocess=fast (exact is upstream's result)")
        self.author_rules = bool(author_rules)
        from ..infer.device import resolve_device

        self.device = resolve_device(device)
        self.batch_size = max(1, int(batch_size))
        self.scale = float(scale)
        self.postprocess = postprocess
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(precision)
        if self.dtype is None:
            raise InputError(f"precision must be auto, bf16, fp16 or fp32, not {precision!r}")
        if models is not None:  # (nuclei, cell) modules already built (tests, notebooks)
            self.nuclei_net, self.cell_net = models
        else:
            from .weights import load_dpn_unet

            self.nuclei_net = load_dpn_unet(resolve_weights("nuclei", nuclei_model))
            self.cell_net = load_dpn_unet(resolve_weights("cell", cell_model))
        self.nuclei_net = self.nuclei_net.to(self.device).eval()
        self.cell_net = self.cell_net.to(self.device).eval()

    # -------------------------------------------------------------------- network maps
    def _net_input(self, images: list[np.ndarray]):
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.stack(images)).to(self.device).float().div_(255.0)  # [B, 4, H, W]
        h, w = x.shape[-2:]
        size = (max(1, int(round(h * self.scale))), max(1, int(round(w * self.scale))))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        nuc = (x[:, [2, 2, 2]] - mean) / STD
        cell = (x[:, [0, 3, 2]] - mean) / STD
        return pad_to_32(nuc), pad_to_32(cell), size

    def predict_maps(self, images) -> list[tuple[np.ndarray, np.ndarray]]:
        """Softmax maps (3, h, w) float32 of both networks for RGBY uint8 images."""
        import torch

        images = [np.asarray(i) for i in images]
        out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(images)
        by_shape: dict[tuple, list[int]] = {}
        for k, img in enumerate(images):
            by_shape.setdefault(img.shape, []).append(k)
        use_amp = self.dtype != torch.float32
        for idx in by_shape.values():
            for s in range(0, len(idx), self.batch_size):
                part = idx[s:s + self.batch_size]
                nuc_in, cell_in, (h, w) = self._net_input([images[k] for k in part])
                with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=use_amp):
                    nuc = torch.softmax(self.nuclei_net(nuc_in).float(), dim=1)[..., :h, :w]
                    cell = torch.softmax(self.cell_net(cell_in).float(), dim=1)[..., :h, :w]
                nuc = nuc.cpu().numpy()
                cell = cell.cpu().numpy()
                for j, k in enumerate(part):
                    out[k] = (nuc[j], cell[j])
        return out  # type: ignore[return-value]

    # -------------------------------------------------------------------- segmenter contract
    def segment_scaled(self, images, shapes):
        """(nuclei, cells) at the given mask shapes."""
        images = [np.asarray(i) for i in images]
        res = []
        for img, maps, shape in zip(images, self.predict_maps(images), shapes):
            full = img.shape[1:]
            if self.postprocess == "exact":
                from ..store.segmentation import downsample_labels

                nuc, cells = label_cells_from_maps(maps[0], maps[1], output_size=full, mode="exact")
                res.append((downsample_labels(nuc, shape), downsample_labels(cells, shape)))
            else:
                from .postprocess import enlarge_fast_labels, label_cells_at_map_scale

                nuc, cells = label_cells_at_map_scale(maps[0], maps[1], output_size=full,
                                                      author_rules=self.author_rules)
                if tuple(shape) == tuple(full):  # masks at full size: exactly what `fast` gives
                    res.append(enlarge_fast_labels(nuc, cells, shape))
                else:
                    res.append((upsample_labels(nuc, shape), upsample_labels(cells, shape)))
        return res

    def segment(self, images):
        images = [np.asarray(i) for i in images]
        res = []
        for img, maps in zip(images, self.predict_maps(images)):
            res.append(label_cells_from_maps(maps[0], maps[1], output_size=img.shape[1:], mode=self.postprocess,
                                             author_rules=self.author_rules))
        return res
