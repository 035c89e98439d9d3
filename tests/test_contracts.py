"""The seams between the parts: plugin options, name clashes, completion without torch,
stamps checked on read, the stage record, a backbone without an embedding, hpa-unet's
full-size masks and the author's rules as an option, the public API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpacli import hookimpl
from hpacli.errors import HpaError, InputError, StoreError, StoreVersionError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ options
def test_plugin_options_parse_as_json_else_text():
    from hpacli.cli.plugin_options import parse_options

    got = parse_options(["k=40", "knn=exact", "tol=0", "flag=true", "none=null", "xs=[1,2]", "name=a=b"])
    assert got == {"k": 40, "knn": "exact", "tol": 0, "flag": True, "none": None, "xs": [1, 2], "name": "a=b"}
    assert parse_options(None, {"k": 3, "n_eig": None}) == {"k": 3}  # aliases not given are left out
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_options(["k"])
    with pytest.raises(InputError, match="given twice"):
        parse_options(["k=3"], {"k": 4})


class ClashPlugin:
    @hookimpl
    def register_backbones(self, register):
        register("densenet121-hpa", lambda **kw: "hijacked")
        register("clash-own", lambda num_classes=19, in_chans=4, depth=2: ("own", depth))

    @hookimpl
    def register_denoisers(self, register):
        register("graph-l1", lambda **kw: "hijacked")


def test_a_name_registered_first_wins_and_the_clash_is_reported(register_plugin):
    from hpacli.registry import BACKBONES, DENOISERS, create_backbone

    register_plugin(ClashPlugin(), "clashy")
    assert BACKBONES.get("densenet121-hpa").plugin == "hpacli.builtin.backbones"
    assert DENOISERS.get("graph-l1").plugin == "hpacli.builtin.denoisers"
    assert any(p == "clashy" and "'densenet121-hpa'" in m and "registered first" in m for p, m in BACKBONES.errors)
    assert any(p == "clashy" and "'graph-l1'" in m for p, m in DENOISERS.errors)
    assert create_backbone("clash-own", depth=3) == ("own", 3)
    BACKBONES.check_options("clash-own", {"depth": 3}, supplied=("num_classes", "in_chans"))
    with pytest.raises(InputError, match=r"has no option dept; it takes: depth"):
        BACKBONES.check_options("clash-own", {"dept": 3}, supplied=("num_classes", "in_chans"))


def test_graph_l1_options_are_checked_against_its_signature():
    from hpacli.label.denoise import create

    assert create("graph-l1", {"k": 20, "pca_dim": 64}).params["pca_dim"] == 64
    with pytest.raises(InputError, match="has no option kk; it takes: k, n_eig"):
        create("graph-l1", {"kk": 20})


def test_segmenter_gets_device_only_when_its_factory_takes_it():
    from hpacli.segment.stage import create

    seg = create("classical", {}, device="cpu", batch_size=2)  # ClassicalSegmenter takes neither
    assert type(seg).__name__ == "ClassicalSegmenter"
    with pytest.raises(InputError, match="segmenter 'classical' has no option nuclei_model"):
        create("classical", {"nuclei_model": "x.pth"})


def test_completion_lists_names_without_importing_torch():
    code = ("import sys; from hpacli.registry import completer; "
            "print(completer('backbone')('dense'), completer('denoiser')('g'), completer('segmenter')('')); "
            "print('torch' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "HPA_LOAD_PLUGINS": "", "PATH": "/usr/bin:/bin"}).stdout
    first, second = out.strip().splitlines()
    assert "densenet121-hpa" in first and "graph-l1" in first and "classical" in first and "hpa-unet" in first
    assert second == "False False"


# ------------------------------------------------------------------------------ models
class NoEmbeddingPlugin:
    @hookimpl
    def register_backbones(self, register):
        def make(num_classes=19, in_chans=4):
            import torch

            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))

        register("bare-linear", make)


def test_a_backbone_without_embedding_trains_but_does_not_pseudolabel(register_plugin):
    from hpacli.label.pseudolabel import embedding_dim_of
    from hpacli.models.build import check_outputs, create_model

    register_plugin(NoEmbeddingPlugin(), "bare")
    model = create_model("bare-linear")
    assert model.hpa_config == {"backbone": "bare-linear", "num_classes": 19, "in_chans": 4}
    assert model.hpa_provider["plugin"] == "bare" and model.hpa_embedding == "logits"
    assert check_outputs(model, 8) == 19  # forward works: it can train and predict
    with pytest.raises(InputError, match="has no embedding.*forward_with_embedding"):
        embedding_dim_of(model, 8)


# ------------------------------------------------------------------------------ store
def test_stamps_are_checked_on_read(tmp_path):
    from hpacli.store import open_store

    st = open_store(tmp_path / "s.zarr", "a")
    st.create_array("x/a", (4,), "int8", (4,), encoding="fold-index")
    st.array("x/a", encoding="fold-index")
    with pytest.raises(StoreError, match="holds 'fold-index' at x/a, not the 'cell-id'") as err:
        st.array("x/a", encoding="cell-id")
    assert len(str(err.value).splitlines()) == 1
    st.update_attrs("x/a", {"encoding_version": 7})
    with pytest.raises(StoreVersionError, match="version 7; this hpacli reads version 1 or older"):
        st.array("x/a")


def test_the_stage_record_keeps_the_layout_stamp(tmp_path):
    from hpacli.store import begin_stage, open_store, stage_record

    st = open_store(tmp_path / "s.zarr", "a")
    st.group("labels/r", create=True)
    st.update_attrs("labels/r", {"encoding": "hpacli-pseudolabels", "encoding_version": 1})
    with begin_stage(st, "labels/r", "pseudolabel", {}) as run:
        run.summary = lambda: {"cells": 3}
        with pytest.raises(RuntimeError):
            with begin_stage(st, "other", "x", {}):
                raise RuntimeError("boom")
    assert st.attrs("labels/r")["encoding"] == "hpacli-pseudolabels"
    assert st.attrs("other")["encoding"] == "hpacli-stage-x"
    assert stage_record(st, "labels/r")["status"] == "done"
    rec = stage_record(st, "other")
    assert rec["status"] == "failed" and rec["summary"]["error"] == "RuntimeError: boom"


def test_cell_folds_carry_the_one_staleness_stamp(tmp_path, tiny_dataset, cli):
    from hpacli.store import open_store
    from hpacli.store.cellresults import STAMP
    from hpacli.store.cells import CellTable
    from hpacli.store.folds import cell_folds_key, read_cell_folds

    s = tmp_path / "hpa.zarr"
    assert cli(["ingest", tiny_dataset, "--store", s, "-q"]).exit_code == 0
    assert cli(["segment", "--store", s, "-q"]).exit_code == 0
    res = cli(["fold", "--store", s, "--cells", "-k", "2", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["n_cells"] == CellTable(open_store(s, "r")).n
    st = open_store(s, "r+")
    key = cell_folds_key()
    assert st.attrs(key)[STAMP] == CellTable(st).table_id and "table_id" not in st.attrs(key)
    # a store written before the one name: its stamp is still read
    attrs = st.attrs(key)
    st.update_attrs(key, {"table_id": attrs[STAMP], STAMP: None})
    assert len(read_cell_folds(st)) == CellTable(st).n
    st.update_attrs(key, {"table_id": "another table"})
    with pytest.raises(StoreError, match="older cells table"):
        read_cell_folds(st)


# ------------------------------------------------------------------------------ hpa-unet
def test_hpa_unet_full_size_masks_and_author_rules(monkeypatch):
    import tifffile
    import torch

    from hpacli.segment.hpa_unet import HpaUnetSegmenter
    from hpacli.segment.postprocess import label_cells_at_map_scale, label_cells_from_maps

    data = Path(__file__).parent / "data"
    maps = (tifffile.imread(data / "hpa_nuclei_maps.tif"), tifffile.imread(data / "hpa_cell_maps.tif"))
    image = np.zeros((4, 2048, 2048), np.uint8)
    for rules in (False, True):
        seg = HpaUnetSegmenter(device="cpu", models=(torch.nn.Identity(), torch.nn.Identity()), author_rules=rules)
        monkeypatch.setattr(seg, "predict_maps", lambda images: [maps] * len(images))
        full = seg.segment_scaled([image], [(2048, 2048)])[0]
        want = label_cells_from_maps(*maps, output_size=(2048, 2048), mode="fast", author_rules=rules)
        assert np.array_equal(full[0], want[0]) and np.array_equal(full[1], want[1])
        small = seg.segment_scaled([image], [(512, 512)])[0]
        at_map = label_cells_at_map_scale(*maps, output_size=(2048, 2048), author_rules=rules)
        assert np.array_equal(small[1], at_map[1])
    with pytest.raises(InputError, match="author_rules=true needs postprocess=fast"):
        HpaUnetSegmenter(device="cpu", models=(torch.nn.Identity(), torch.nn.Identity()), author_rules=True,
                         postprocess="exact")


# ------------------------------------------------------------------------------ public API
def test_stage_functions_are_exported_lazily():
    import hpacli

    code = "import sys, hpacli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}).stdout
    assert out.strip() == "False"
    for name in ("run_ingest", "run_segment", "run_dedup", "run_negatives", "run_fold", "run_cell_folds",
                 "run_train_image", "run_train_cell", "run_pseudolabel", "run_denoise", "run_select", "run_accept",
                 "run_predict", "write_submission", "evaluate_files", "run_synth", "run_demo", "create_model",
                 "load_model", "Denoised"):
        assert callable(getattr(hpacli, name)), name
    with pytest.raises(AttributeError):
        hpacli.no_such_thing  # noqa: B018
    with pytest.raises(HpaError):
        hpacli.create_model("no-such-backbone")
