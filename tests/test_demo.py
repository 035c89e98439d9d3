"""`hpa demo --quick` runs every stage end to end (a smoke test of the whole pipeline), and
a second run resumes: finished steps are skipped."""

from __future__ import annotations

import json

import pytest

from hpacli.errors import EXIT_USAGE


@pytest.mark.slow
def test_demo_quick_end_to_end_and_resume(cli, tmp_path):
    out = tmp_path / "demo"
    res = cli(["demo", "--out", out, "--quick", "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "(a) image-level model on cells" in text and "(b) full pipeline" in text
    scores = json.loads((out / "scores.json").read_text())
    for name in ("image-model", "pipeline"):
        assert 0.0 < scores[name]["mAP"] <= 1.0
        assert len(scores[name]["per_class_AP"]) == 19
    rec = scores["recovery"]
    assert rec["selected"] > 0 and 0.0 <= rec["precision"] <= 1.0
    for name in ("submission.csv", "submission_image_model.csv", "cells.csv", "hpa.zarr", "data/preview.png"):
        assert (out / name).exists(), name
    assert list((out / "overlays").glob("*.png")) and list((out / "selection").glob("*.png"))
    state = json.loads((out / "demo.json").read_text())
    assert len(state["done"]) == 13
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
