"""Submission/truth CSVs: writing, parsing, every check with its line, and the CLI."""

from __future__ import annotations

import base64
import json
import zlib

import numpy as np
import pytest

from hpacli.errors import EXIT_USAGE, InputError
from hpacli.evaluate.submission import (
    HEADER,
    check_submission,
    parse_frame,
    read_frame,
    read_parsed,
    submission_row,
    truth_row,
    write_rows,
)
from hpacli.io.masks import decode_mask, encode_mask


def _labels():
    lab = np.zeros((24, 32), np.int32)
    lab[2:10, 3:12] = 4
    lab[12:20, 14:30] = 9
    lab[0:3, 28:32] = 2  # a cell cut by the border
    return lab


CELLS = {4: [0, 11], 9: [5], 2: [18]}


def _probs(rng, lab):
    return {int(k): rng.random(19) for k in np.unique(lab) if k}


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    lab = _labels()
    truth = tmp_path / "truth.csv"
    sub = tmp_path / "sub.csv"
    write_rows(truth, [truth_row("img0", lab, CELLS), truth_row("img1", lab, {9: [5, 16]})])
    write_rows(sub, [submission_row("img0", lab, _probs(rng, lab)), submission_row("img1", lab, _probs(rng, lab))])
    return truth, sub


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_truth_and_submission_rows_round_trip(files):
    truth, sub = files
    assert truth.read_text().splitlines()[0] == ",".join(HEADER)
    parsed = read_parsed(truth, kind="truth")
    img = parsed.images["img0"]
    assert (img.width, img.height) == (32, 24)
    assert sorted(img.labels.tolist()) == [0, 5, 11, 18]
    assert np.all(img.scores == 1)
    assert img.n_masks == 3  # one mask per cell, shared by its labels
    lab = _labels()
    row = read_frame(truth).iloc[0]
    tokens = row.PredictionString.split()
    for i in range(0, len(tokens), 3):
        cell = {0: 4, 11: 4, 5: 9, 18: 2}[int(tokens[i])]
        assert np.array_equal(decode_mask(tokens[i + 2], 24, 32), lab == cell)
    s = read_parsed(sub).images["img1"]
    assert len(s) == 3 * 19 and s.n_masks == 3
    # min_score and classes filter the triples of a submission row
    _, _, _, pred = submission_row("x", lab, {4: np.full(19, 0.2), 9: np.linspace(0, 1, 19)}, classes=[0, 1, 18],
                                   min_score=0.1)
    assert len(pred.split()) == 3 * (3 + 1)  # cell 9: only class 18 (score 1) passes 0.1


def test_check_accepts_a_good_file_and_an_image_list(files, tmp_path):
    _, sub = files
    report = check_submission(sub)
    assert report.ok and report.n_rows == 2 and report.n_triples == 2 * 3 * 19
    listed = _write(tmp_path / "list.csv", ["ID,ImageWidth,ImageHeight", "img0,32,24", "img1,32,24"])
    assert check_submission(sub, images=listed).ok
    listed = _write(tmp_path / "list2.csv", ["ID,ImageWidth,ImageHeight", "img0,32,24", "img2,32,24", "img1,64,64"])
    report = check_submission(sub, images=listed)
    text = [str(p) for p in report.problems.items]
    assert "ID img2: missing from the submission" in text
    assert any("line 3, ID img1: size 32x24 differs from the image list's 64x64" == t for t in text)
    only_ids = _write(tmp_path / "ids.csv", ["ID", "img0"])
    report = check_submission(sub, images=only_ids)
    assert [str(p) for p in report.problems.items] == [f"line 3, ID img1: ID is not in the image list {only_ids}"]
    with pytest.raises(InputError, match="needs an ID column"):
        check_submission(sub, images=_write(tmp_path / "noid.csv", ["Image", "img0"]))


def test_every_row_problem_is_reported_with_its_line(tmp_path):
    m = np.zeros((8, 8), bool)
    m[1:4, 1:4] = True
    good = encode_mask(m)
    wrong_size = encode_mask(np.ones((8, 9), bool))
    bad_runs = base64.b64encode(zlib.compress(b"\x01\x02", 9)).decode()  # zlib fine, RLE not
    lines = [
        ",".join(HEADER),
        f"ok,8,8,0 0.5 {good}",
        f"badlabel,8,8,19 0.5 {good}",
        f"textlabel,8,8,x 0.5 {good}",
        f"badconf,8,8,0 high {good}",
        f"nanconf,8,8,0 nan {good}",
        "badmask,8,8,0 0.5 eNqzAAAA!!",
        f"size,8,8,0 0.5 {wrong_size}",
        f"tokens,8,8,0 0.5 {good} 1",
        f"width,eight,8,0 0.5 {good}",
        f"ok,8,8,0 0.5 {good}",
        f",8,8,0 0.5 {good}",
        "emptyok,8,8,",
        f"badruns,8,8,0 0.5 {good} 1 0.5 {bad_runs}",
    ]
    path = _write(tmp_path / "bad.csv", lines)
    report = check_submission(path)
    got = {(p.line, p.image_id): p.message for p in report.problems.items}
    assert got[(3, "badlabel")] == "triple 1: label 19 is outside 0..18"
    assert got[(4, "textlabel")] == "triple 1: label 'x' is not an integer"
    assert got[(5, "badconf")] == "triple 1: confidence 'high' is not a number"
    assert "not a finite number" in got[(6, "nanconf")]
    assert got[(7, "badmask")].startswith("triple 1: undecodable mask")
    assert got[(8, "size")] == "triple 1: mask covers 72 pixels, expected 64 (= ImageWidth 8 x ImageHeight 8)"
    assert "4 tokens, not a multiple of 3" in got[(9, "tokens")]
    assert "positive integers" in got[(10, "width")]
    assert got[(11, "ok")] == "ID repeated (first on line 2)"
    assert got[(12, None)] == "empty ID"
    assert got[(14, "badruns")] == "triple 2: undecodable mask (bad RLE character)"
    assert report.problems.count == 11 and not report.ok
    # the same problems stop evaluate_frames / read_parsed, listed in one message
    with pytest.raises(InputError) as err:
        read_parsed(path)
    assert "11 problem(s)" in str(err.value) and "line 3, ID badlabel" in str(err.value)
    # at most max_problems listed, the rest counted
    report = check_submission(path, max_problems=3)
    assert len(report.problems.items) == 3 and "and 8 more" in report.problems.text("x")


def test_truth_specific_checks(tmp_path):
    m = np.zeros((8, 8), bool)
    m[1:4, 1:4] = True
    empty = encode_mask(np.zeros((8, 8), bool))
    path = _write(tmp_path / "t.csv", [
        ",".join(HEADER), f"a,8,8,0 1 {encode_mask(m)} 0 1 {encode_mask(m)}", f"b,8,8,3 1 {empty}",
    ])
    parsed = parse_frame(read_frame(path), kind="truth")
    got = {p.line: p.message for p in parsed.problems.items}
    assert "same (mask, label) pair appears twice" in got[2]
    assert "empty mask in the truth" in got[3]
    # in a submission, an empty mask is dropped and counted, not a problem
    parsed = parse_frame(read_frame(path), kind="submission")
    assert not parsed.problems and parsed.n_empty == 1 and len(parsed.images["b"]) == 0


def test_header_and_csv_errors(tmp_path):
    with pytest.raises(InputError, match="the header must be ID,ImageWidth,ImageHeight,PredictionString"):
        read_frame(_write(tmp_path / "h.csv", ["ID,Width,Height,PredictionString", "a,1,1,"]))
    with pytest.raises(InputError, match="no such file"):
        read_frame(tmp_path / "missing.csv")
    ragged = check_submission(_write(tmp_path / "ragged.csv", [",".join(HEADER), "a,4,4,", "b,1,1,,x,y", "c,4,4,"]))
    assert [str(p) for p in ragged.problems.items] == ["line 3, ID b: 6 fields, expected 4"]
    assert ragged.n_rows == 3
    latin = tmp_path / "latin.csv"
    latin.write_bytes((",".join(HEADER) + "\n\xe9,4,4,\n").encode("latin-1"))
    with pytest.raises(InputError, match="UTF-8"):
        read_frame(latin)
    report = check_submission(_write(tmp_path / "h2.csv", ["Id,ImageWidth,ImageHeight,PredictionString"]))
    assert not report.ok and report.problems.items[0].line == 1
    # a UTF-8 byte-order mark is accepted
    bom = tmp_path / "bom.csv"
    bom.write_bytes(("\ufeff" + ",".join(HEADER) + "\na,4,4,\n").encode("utf-8"))
    assert check_submission(bom).ok


# ----------------------------------------------------------------------------- CLI


def test_cli_evaluate_prints_table_and_json(cli, files, tmp_path):
    truth, sub = files
    res = cli(["evaluate", "--truth", truth, "--submission", sub, "--json", tmp_path / "r" / "m.json"])
    assert res.exit_code == 0, res.output
    assert "Nucleoplasm" in res.output and "mAP" in res.output
    data = json.loads((tmp_path / "r" / "m.json").read_text())
    assert set(data) == {"mAP", "per_class_AP"} and len(data["per_class_AP"]) == 19
    assert data["per_class_AP"]["1"] is None and 0 <= data["per_class_AP"]["0"] <= 1
    # perfect: the truth scored against itself, JSON on stdout
    res = cli(["evaluate", "--truth", truth, "--submission", truth, "--json", "-", "--iou", "box"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["mAP"] == 1.0


def test_cli_evaluate_bad_files_are_one_line_without_traceback(cli, files, tmp_path):
    truth, sub = files
    bad = _write(tmp_path / "bad.csv", [",".join(HEADER), "img0,32,24,0 0.5 notamask"])
    res = cli(["evaluate", "--truth", truth, "--submission", bad])
    assert res.exit_code == EXIT_USAGE
    assert "line 2, ID img0: triple 1: undecodable mask" in res.output and "Traceback" not in res.output
    res = cli(["evaluate", "--truth", _write(tmp_path / "h.csv", ["a,b"]), "--submission", sub])
    assert res.exit_code == EXIT_USAGE and "header must be" in res.output
    res = cli(["evaluate", "--truth", tmp_path / "nope.csv", "--submission", sub])
    assert res.exit_code == EXIT_USAGE and "no such file" in res.output
    res = cli(["evaluate", "--truth", truth, "--submission", sub, "--iou", "segm"])
    assert res.exit_code == EXIT_USAGE and "--iou" in res.output


def test_cli_submit_check(cli, files, tmp_path):
    _, sub = files
    res = cli(["submit", "--check", sub])
    assert res.exit_code == 0 and "ok" in res.output
    listed = _write(tmp_path / "list.csv", ["ID", "img0", "img1", "img7"])
    res = cli(["submit", "--check", sub, "--images", listed])
    assert res.exit_code == 1 and "img7" in res.output and "missing from the submission" in res.output
    bad = _write(tmp_path / "bad.csv", [",".join(HEADER), "img0,32,24,0 0.5", "img0,32,24,"])
    res = cli(["submit", "--check", bad])
    assert res.exit_code == 1 and "not a multiple of 3" in res.output and "repeated" in res.output
    res = cli(["submit"])
    assert res.exit_code == EXIT_USAGE and "--check" in res.output
    res = cli(["submit", "--check", tmp_path / "nope.csv"])
    assert res.exit_code == EXIT_USAGE and "no such file" in res.output
