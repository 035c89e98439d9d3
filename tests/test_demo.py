"""`hpa demo --quick` runs every stage end to end (a smoke test of the whole pipeline), and
a second run resumes: finished steps are skipped. The yardstick's table logic on made-up
scores."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from hpacli.demo import ROWS, DemoSettings, demo_steps, yardstick_markdown, yardstick_table
from hpacli.errors import EXIT_USAGE, HpaError


@pytest.mark.slow
def test_demo_quick_end_to_end_and_resume(cli, tmp_path):
    out = tmp_path / "demo"
    res = cli(["demo", "--out", out, "--quick", "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "submission.csv: row (d); submission_image_model.csv: row (a)" in text
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["rows"]) == {"image", "outliers"} and scores["best"] == "outliers"
    for row in ("image", "outliers"):  # the plain demo predicts and scores the test images only
        assert set(scores["rows"][row]) == {"test"}
        assert 0.0 < scores["rows"][row]["test"]["mAP"] <= 1.0
        assert len(scores["rows"][row]["test"]["per_class_AP"]) == 19
    rec = scores["selections"]["outliers"]
    assert rec["selected"] > 0 and 0.0 <= rec["precision"] <= 1.0
    sig = scores["y_init_spindle"]["labelled_images"]
    assert sig["cells"] >= sig["spindle_cells"] and 0.0 <= sig["chance"] <= 1.0
    for name in ("submission.csv", "submission_image_model.csv", "data/test_truth.csv", "data/dev_truth.csv",
                 "cells.csv", "hpa.zarr", "data/preview.png", "submissions/outliers_test.csv"):
        assert (out / name).exists(), name
    # the top-level files are the best row's and the image models' test submissions
    assert (out / "submission.csv").read_bytes() == (out / "submissions" / "outliers_test.csv").read_bytes()
    assert (out / "submission_image_model.csv").read_bytes() == (out / "submissions" / "image_test.csv").read_bytes()
    test_ids = set(pd.read_csv(out / "data" / "test_truth.csv")["ID"])
    assert set(pd.read_csv(out / "submission.csv")["ID"]) == test_ids
    dev_ids = set(pd.read_csv(out / "data" / "dev_truth.csv")["ID"])
    assert dev_ids and not dev_ids & test_ids
    assert list((out / "overlays").glob("*.png")) and list((out / "selection").glob("*.png"))
    state = json.loads((out / "demo.json").read_text())
    assert list(state["done"]) == demo_steps(DemoSettings.quick())
    # the cell model kept best.pt by the seed's rule, not by truth
    import torch

    best = torch.load(out / "runs" / "cell" / "outliers" / "fold0" / "best.pt", weights_only=True)
    assert best["best"]["metric"] == "bin_acc"
    # the submission passes the checker
    assert cli(["submit", "--check", out / "submission.csv"]).exit_code == 0
    # a second run skips every finished step and prints the same table
    again = cli(["demo", "--out", out, "--quick", "--quiet", "--device", "cpu"])
    assert again.exit_code == 0
    assert "done before, skipped" in again.output
    assert json.loads((out / "scores.json").read_text()) == scores
    # other settings in the same folder are refused
    other = cli(["demo", "--out", out, "--quiet", "--device", "cpu"])
    assert other.exit_code == EXIT_USAGE and "other settings" in other.output


def test_rows_and_steps():
    s = DemoSettings()
    assert demo_steps(s)[-1] == "evaluate" and "train-cell image" not in demo_steps(s)
    full = DemoSettings(rows=tuple(ROWS))
    steps = demo_steps(full)
    assert [x for x in steps if x.startswith("train-cell")] == [f"train-cell {r}" for r in ROWS if r != "image"]
    assert steps.index("select-mitotic") < steps.index("train-cell yopt")
    for bad in ({"rows": ("image", "nope", "outliers")}, {"best": "truth", "rows": tuple(ROWS)},
                {"best": "image"}, {"rows": ("outliers",)}, {"cell_folds": (2,)}):
        with pytest.raises(HpaError):
            DemoSettings(**bad).check()


def _scores(image, best, truth, dev_shift=0.01):
    def row(m, spindle):
        return {"dev": {"mAP": m + dev_shift, "per_class_AP": {"11": spindle}},
                "test": {"mAP": m, "per_class_AP": {"11": spindle}}}

    return {"rows": {"image": row(*image), "outliers": row(*best), "truth": row(*truth)},
            "selections": {"outliers": {"recovered": 3, "missing_from_labels": 10, "precision": 0.5, "selected": 6}},
            "y_init_spindle": {"labelled_images": {"ap": 0.3, "chance": 0.1}}}


def test_yardstick_table_means_gains_and_markdown():
    per_seed = {7: _scores((0.60, 0.10), (0.64, 0.30), (0.70, 0.50)),
                8: _scores((0.50, 0.00), (0.52, 0.20), (0.60, 0.40))}
    t = yardstick_table(per_seed, "outliers")
    assert list(t["rows"]) == ["image", "outliers", "truth"]  # ROWS order, rows every seed has
    m, sd = t["rows"]["outliers"]["test_mAP"]["mean_sd"]
    assert m == pytest.approx(0.58) and sd == pytest.approx(0.0848528, abs=1e-6)
    assert t["gain"]["test_mAP"]["per_seed"] == {7: pytest.approx(0.04), 8: pytest.approx(0.02)}
    assert t["gain"]["test_mAP"]["mean_sd"][0] == pytest.approx(0.03)
    assert t["gain"]["spindle_AP"]["mean_sd"][0] == pytest.approx(0.20)
    assert t["rows"]["image"]["dev_mAP"]["per_seed"][8] == pytest.approx(0.51)
    assert t["bounds"] == {}  # no seed scored the bounds
    for seed, (lo, hi) in ((7, (0.55, 0.85)), (8, (0.45, 0.75))):
        per_seed[seed]["bounds"] = {"test": {"floor": lo, "ceiling": hi}, "dev": {"floor": lo + 0.01, "ceiling": hi}}
    t = yardstick_table(per_seed, "outliers")
    assert t["bounds"]["ceiling"]["test_mAP"]["mean_sd"][0] == pytest.approx(0.80)
    assert t["bounds"]["floor"]["dev_mAP"]["per_seed"] == {7: pytest.approx(0.56), 8: pytest.approx(0.46)}
    md = yardstick_markdown(t, {7: 600.0, 8: 660.0})
    assert "| random scores on the same cells (floor) | 0.550 | 0.450 | 0.500 ± 0.071 | – | 0.510 ± 0.071 |" in md
    assert "| (d) (b) + outlier selection | 0.640 | 0.520 | 0.580 ± 0.085 |" in md
    assert "+0.040" in md and "3 / 10, 0.500 (6)" in md and "0.300 (chance 0.100)" in md and "s8 11.0 min" in md
    # a row missing from one seed is left out rather than averaged over fewer seeds
    del per_seed[8]["rows"]["truth"]
    assert "truth" not in yardstick_table(per_seed, "outliers")["rows"]


def test_yardstick_jobs_runs_seeds_in_worker_processes(tmp_path):
    """`--jobs 2`: each seed runs in its own (spawned) process and the table gathers them; here
    the seeds' demos are already finished, so each worker resumes, skips every step and
    returns its scores (the pool, the gathering and the files, without training)."""
    from dataclasses import replace

    from hpacli.demo import SCORED, run_yardstick
    from hpacli.plaindata import to_plain

    base = DemoSettings.quick()
    made = {7: _scores((0.60, 0.10), (0.64, 0.30), (0.70, 0.50)), 8: _scores((0.50, 0.00), (0.52, 0.20), (0.60, 0.40))}
    for seed, scores in made.items():
        s = replace(base, seed=seed, rows=tuple(ROWS), splits=SCORED)
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        done = {name: {"seconds": 60.0, "cpu_seconds": 60.0, "result": None} for name in demo_steps(s)}
        (d / "demo.json").write_text(json.dumps({"settings": to_plain(s), "done": done}))
        (d / "scores.json").write_text(json.dumps(scores))
    table = run_yardstick(tmp_path, [8, 7], base, device="cpu", jobs=2)
    assert table["jobs"] == 2 and table["seeds"] == [7, 8]
    assert table["gain"]["test_mAP"]["per_seed"] == {7: pytest.approx(0.04), 8: pytest.approx(0.02)}
    assert table["seconds_per_seed"] == {7: 60.0 * len(demo_steps(s)), 8: 60.0 * len(demo_steps(s))}
    assert "+0.040" in (tmp_path / "yardstick.md").read_text()
    assert json.loads((tmp_path / "yardstick.json").read_text())["jobs"] == 2


def test_a_selection_that_accepted_nothing_is_row_b():
    """Row (c) or (d) whose selection accepted no cell has (b)'s cell models, so the demo
    neither trains nor predicts it again: it takes (b)'s files and scores."""
    from hpacli.demo import same_models_as

    rows = tuple(ROWS)
    sel = {"yopt": {"accepted": 0}, "outliers": {"accepted": 5}}
    assert same_models_as("yopt", rows, sel) == "soft"
    assert same_models_as("outliers", rows, sel) == "outliers"
    assert same_models_as("soft", rows, sel) == "soft" and same_models_as("truth", rows, sel) == "truth"
    assert same_models_as("yopt", ("image", "yopt"), sel) == "yopt"  # no (b) to take from
    assert same_models_as("yopt", rows, None) == "yopt"  # not selected yet
