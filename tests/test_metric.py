"""The metric: a hand-made case for every rule, a loop-based reference on random cases,
and the label-image entry point against the CSV one."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from hpacli.errors import InputError
from hpacli.evaluate.metric import (
    average_precision,
    evaluate,
    evaluate_frames,
    evaluate_instances,
    pairwise_iou,
    score_bounds,
)
from hpacli.evaluate.submission import HEADER, ImageInstances, format_prediction_string, parse_frame
from hpacli.io.masks import encode_mask


def rect(h, w, r0, r1, c0, c1):
    m = np.zeros((h, w), bool)
    m[r0:r1, c0:c1] = True
    return m


def frame(rows):
    """rows: [(ID, H, W, [(label, score, bool mask), ...])] -> a submission/truth DataFrame."""
    data = []
    for image_id, h, w, triples in rows:
        pred = format_prediction_string(
            [t[0] for t in triples], [t[1] for t in triples], [encode_mask(t[2]) for t in triples]
        )
        data.append((image_id, w, h, pred))
    return pd.DataFrame(data, columns=list(HEADER))


def truth(rows):
    """rows: [(ID, H, W, [(label, bool mask), ...])] -> truth frame (confidence 1)."""
    return frame([(i, h, w, [(c, 1, m) for c, m in t]) for i, h, w, t in rows])


# 20x20 images; A and B are two disjoint cells of 40 pixels
H = W = 20
A = rect(H, W, 0, 4, 0, 10)
B = rect(H, W, 10, 14, 0, 10)
C = rect(H, W, 10, 14, 10, 20)


def test_perfect_predictions_score_one():
    t = truth([("a", H, W, [(0, A), (2, A), (5, B)]), ("b", H, W, [(0, C), (18, B)])])
    res = evaluate_frames(t, t)
    assert res.mAP == 1.0
    assert {c for c, v in res.per_class_ap.items() if not math.isnan(v)} == {0, 2, 5, 18}
    assert res.n_truth[0] == 2 and res.n_det[0] == 2 and res.n_tp[0] == 2
    assert evaluate_frames(t, t, iou="box").mAP == 1.0


def test_taken_instance_is_a_false_positive_without_fallback():
    # d3's best instance is a_big (IoU 70/90); once a_big is taken, d3 is a false positive
    # even when its second-best instance a2_small (IoU 20/90) would pass a low threshold.
    d3 = rect(H, W, 0, 10, 0, 9)  # 90 px
    a_big = rect(H, W, 0, 10, 0, 7)  # 70 px inside d3
    a2_small = rect(H, W, 0, 10, 7, 9)  # 20 px inside d3, disjoint from a_big
    t = truth([("x", H, W, [(0, a_big), (0, a2_small)])])
    sub = frame([("x", H, W, [(0, 0.9, a_big), (0, 0.8, d3)])])
    res = evaluate_frames(t, sub)
    assert res.n_tp[0] == 1 and res.n_det[0] == 2
    assert res.per_class_ap[0] == pytest.approx(0.5)  # TP, FP; recall stops at 1/2
    # with the threshold low enough for the second-best instance, still no fallback
    res = evaluate_frames(t, sub, threshold=0.2)
    assert res.n_tp[0] == 1
    # the same detection ranked first takes the instance; the exact one is then the FP
    sub2 = frame([("x", H, W, [(0, 0.7, a_big), (0, 0.8, d3)])])
    res2 = evaluate_frames(t, sub2)
    assert res2.n_tp[0] == 1 and res2.per_class_ap[0] == pytest.approx(0.5)


def test_class_absent_from_image_truth_is_dropped():
    t = truth([("a", H, W, [(0, A)]), ("b", H, W, [(3, B)])])
    # class 3 predicted in image a (no class 3 there) with a top score: dropped, not an FP
    sub = frame([("a", H, W, [(0, 0.9, A), (3, 0.99, A), (3, 0.98, C)]), ("b", H, W, [(3, 0.5, B)])])
    res = evaluate_frames(t, sub)
    assert res.per_class_ap[3] == 1.0
    assert res.n_det[3] == 1 and res.n_dropped == 2
    assert res.mAP == 1.0


def test_empty_prediction_string_and_missing_images():
    t = truth([("a", H, W, [(0, A)]), ("b", H, W, [(1, B)])])
    sub = pd.DataFrame([("a", W, H, ""), ("b", W, H, format_prediction_string([1], [0.3], [encode_mask(B)]))],
                       columns=list(HEADER))
    res = evaluate_frames(t, sub)
    assert res.per_class_ap[0] == 0.0  # truth but no detections
    assert res.per_class_ap[1] == 1.0
    assert math.isnan(res.per_class_ap[2])  # no truth anywhere
    assert res.mAP == pytest.approx(0.5)  # NaN classes left out of the mean
    # an image missing from the submission counts as no detections
    res = evaluate_frames(t, sub.iloc[1:])
    assert res.per_class_ap[0] == 0.0 and res.n_images_without_pred == 1
    # an empty submission: every class with truth scores 0
    empty = pd.DataFrame([], columns=list(HEADER))
    res = evaluate_frames(t, empty)
    assert res.mAP == 0.0


def test_image_without_truth_is_ignored():
    t = truth([("a", H, W, [(0, A)])])
    sub = frame([("a", H, W, [(0, 0.5, A)]), ("zz", H, W, [(0, 0.9, A), (0, 0.95, B)])])
    res = evaluate_frames(t, sub)
    assert res.mAP == 1.0
    assert res.n_images_without_truth == 1 and res.n_dropped == 2 and res.n_det[0] == 1
    # an image whose truth row is empty has no evaluatable class either
    t2 = pd.concat([t, pd.DataFrame([("zz", W, H, "")], columns=list(HEADER))])
    res2 = evaluate_frames(t2, sub)
    assert res2.mAP == 1.0 and res2.n_dropped == 2 and res2.n_images_without_truth == 0


def test_ties_submission_follows_the_file_group_is_order_independent():
    t = truth([("a", H, W, [(0, A)]), ("b", H, W, [(0, A)])])
    tp_first = frame([("a", H, W, [(0, 0.5, A)]), ("b", H, W, [(0, 0.5, C)])])  # TP in a, FP in b
    fp_first = tp_first.iloc[::-1].reset_index(drop=True)
    # default = submission: tied detections ranked one by one in file order (images, then triples)
    assert evaluate_frames(t, tp_first).per_class_ap[0] == pytest.approx(0.5)
    assert evaluate_frames(t, fp_first).per_class_ap[0] == pytest.approx(0.25)
    assert evaluate_frames(t, tp_first).ties == "submission"
    assert evaluate_frames(t, tp_first, ties="first").per_class_ap[0] == pytest.approx(0.5)  # the older name
    # group: one threshold at 0.5 -> precision 1/2 at recall 1/2, whatever the order
    assert evaluate_frames(t, tp_first, ties="group").per_class_ap[0] == pytest.approx(0.25)
    assert evaluate_frames(t, fp_first, ties="group").per_class_ap[0] == pytest.approx(0.25)
    # within one PredictionString, too
    t1 = truth([("a", H, W, [(0, A), (0, B)])])
    s_tp = frame([("a", H, W, [(0, 0.5, A), (0, 0.5, C)])])
    s_fp = frame([("a", H, W, [(0, 0.5, C), (0, 0.5, A)])])
    assert evaluate_frames(t1, s_tp).per_class_ap[0] == pytest.approx(0.5)
    assert evaluate_frames(t1, s_fp).per_class_ap[0] == pytest.approx(0.25)
    assert evaluate_frames(t1, s_fp, ties="group").per_class_ap[0] == evaluate_frames(
        t1, s_tp, ties="group").per_class_ap[0] == 0.25
    # two tied detections of the same instance: one TP, one FP whatever the order
    s_dup = frame([("a", H, W, [(0, 0.5, A), (0, 0.5, A)])])
    assert evaluate_frames(t1, s_dup).n_tp[0] == 1
    with pytest.raises(InputError, match="ties"):
        evaluate_frames(t1, s_dup, ties="random")


def test_iou_exactly_at_threshold_is_a_match():
    gt = rect(H, W, 0, 2, 0, 5)  # 10 px
    six = rect(H, W, 0, 2, 0, 3)  # 6 px inside: IoU = 6/10 = 0.6 exactly
    below = rect(H, W, 0, 2, 0, 3) | rect(H, W, 5, 6, 0, 1)  # 6 px inside + 1 outside: 6/11
    t = truth([("a", H, W, [(0, gt)])])
    assert evaluate_frames(t, frame([("a", H, W, [(0, 0.5, six)])])).mAP == 1.0
    assert evaluate_frames(t, frame([("a", H, W, [(0, 0.5, below)])])).mAP == 0.0
    assert evaluate_frames(t, frame([("a", H, W, [(0, 0.5, six)])]), threshold=0.61).mAP == 0.0
    # box IoU exactly 0.6 (16x16 image: the normalised coordinates are exact in binary)
    gt_box = rect(16, 16, 0, 2, 0, 5)
    t = truth([("a", 16, 16, [(0, gt_box)])])
    sub = frame([("a", 16, 16, [(0, 0.5, rect(16, 16, 0, 2, 0, 3))])])
    assert evaluate_frames(t, sub, iou="box").mAP == 1.0


def test_empty_predicted_masks_are_ignored():
    t = truth([("a", H, W, [(0, A)])])
    empty = np.zeros((H, W), bool)
    sub = frame([("a", H, W, [(0, 0.99, empty), (0, 0.5, A), (1, 0.9, empty)])])
    res = evaluate_frames(t, sub)
    assert res.mAP == 1.0 and res.n_empty == 2 and res.n_det[0] == 1


def test_box_iou_uses_normalised_bounding_boxes():
    ring = rect(H, W, 2, 12, 2, 12) & ~rect(H, W, 3, 11, 3, 11)  # hollow square, 36 px
    filled = rect(H, W, 2, 12, 2, 12)  # 100 px, same bounding box
    t = truth([("a", H, W, [(0, ring)])])
    sub = frame([("a", H, W, [(0, 0.5, filled)])])
    assert evaluate_frames(t, sub, iou="mask").mAP == 0.0  # pixel IoU 0.36
    assert evaluate_frames(t, sub, iou="box").mAP == 1.0  # same box
    # the boxes as the evaluator normalises them: ymin=r0/H, xmin=c0/W, ymax=(r1+1)/H, xmax=(c1+1)/W
    from hpacli.evaluate.metric import _boxes

    parsed = parse_frame(frame([("a", 10, 16, [(0, 1, rect(10, 16, 2, 5, 3, 9))])])).images["a"]
    assert np.allclose(_boxes(parsed), [[2 / 10, 3 / 16, 5 / 10, 9 / 16]])
    lab = np.zeros((10, 16), np.int32)
    lab[2:5, 3:9] = 7
    inst = ImageInstances.from_label_truth("a", lab, {7: [0]})
    assert np.array_equal(_boxes(inst), _boxes(parsed))
    # one-pixel boxes side by side do not overlap
    p1 = parse_frame(frame([("a", 4, 4, [(0, 1, rect(4, 4, 1, 2, 1, 2)), (0, 1, rect(4, 4, 1, 2, 2, 3))])]))
    iou = pairwise_iou(p1.images["a"], p1.images["a"], "box")
    assert np.allclose(iou, np.eye(2))


def test_average_precision_is_voc_monotone():
    # TP, FP, TP with 2 instances: (r=.5, p=1), (r=1, p=2/3)
    assert average_precision(np.array([3, 2, 1.0]), np.array([1, 0, 1], bool), 2) == pytest.approx(0.5 + 1 / 3)
    # FP, TP, TP: precision at recall 1/2 (1/2) is raised to the later 2/3
    assert average_precision(np.array([3, 2, 1.0]), np.array([0, 1, 1], bool), 2) == pytest.approx(2 / 3)
    # recall that never reaches 1
    assert average_precision(np.array([1.0]), np.array([1], bool), 4) == pytest.approx(0.25)
    assert average_precision(np.zeros(0), np.zeros(0, bool), 3) == 0.0
    assert math.isnan(average_precision(np.array([1.0]), np.array([0], bool), 0))


def test_bad_inputs_raise_input_errors_with_lines():
    t = truth([("a", H, W, [(0, A)])])
    sub = frame([("a", H, W, [(0, 0.5, A)])])
    bad = sub.copy()
    bad.loc[0, "PredictionString"] = "19 0.5 " + encode_mask(A)
    with pytest.raises(InputError, match=r"line 2, ID a: triple 1: label 19 is outside 0\.\.18"):
        evaluate_frames(t, bad)
    bad.loc[0, "PredictionString"] = "0 high " + encode_mask(A)
    with pytest.raises(InputError, match="confidence 'high' is not a number"):
        evaluate_frames(t, bad)
    other_size = frame([("a", H + 1, W, [(0, 0.5, rect(H + 1, W, 0, 3, 0, 3))])])
    with pytest.raises(InputError, match="differs from the truth"):
        evaluate_frames(t, other_size)
    with pytest.raises(InputError, match="--iou"):
        evaluate_frames(t, sub, iou="segm")


# ---------------------------------------------------------------- reference implementation


def _decode_rows(df):
    from hpacli.io.masks import decode_mask

    out = {}
    for _, row in df.iterrows():
        tok = row.PredictionString.split()
        h, w = int(row.ImageHeight), int(row.ImageWidth)
        out[row.ID] = [(int(tok[i]), float(tok[i + 1]), decode_mask(tok[i + 2], h, w)) for i in range(0, len(tok), 3)]
    return out


def _reference_map(truth_df, sub_df, thr=0.6):
    """The rules written out with loops over pixels-as-arrays, for distinct scores."""
    gts, dets = _decode_rows(truth_df), _decode_rows(sub_df)
    pooled = {c: [] for c in range(19)}
    n_gt = {c: 0 for c in range(19)}
    for gt in gts.values():
        for c, _, _ in gt:
            n_gt[c] += 1
    for image_id, det in dets.items():
        gt = gts.get(image_id, [])
        classes = {c for c, _, _ in gt}
        for c in classes:
            inst = [m for cc, _, m in gt if cc == c]
            taken = [False] * len(inst)
            mine = sorted([(s, m) for cc, s, m in det if cc == c and m.any()], key=lambda x: -x[0])
            for s, m in mine:
                ious = [(m & g).sum() / (m | g).sum() for g in inst]
                j = int(np.argmax(ious))
                ok = ious[j] >= thr and not taken[j]
                if ok:
                    taken[j] = True
                pooled[c].append((s, ok))
    aps = []
    for c in range(19):
        if n_gt[c] == 0:
            continue
        items = sorted(pooled[c], key=lambda x: -x[0])
        tp = fp = 0
        points = []
        for _, ok in items:
            tp += ok
            fp += not ok
            points.append((tp / n_gt[c], tp / (tp + fp)))
        ap, prev_r = 0.0, 0.0
        for i, (r, _) in enumerate(points):
            best_p = max(p for _, p in points[i:])
            ap += (r - prev_r) * best_p
            prev_r = r
        aps.append(ap)
    return float(np.mean(aps))


def _random_case(rng, n_images=6, size=24, levels=None):
    """Random truth and detections; ``levels``: draw the scores from these values (ties)."""
    def score():
        return float(rng.choice(levels)) if levels is not None else float(rng.random())

    truth_rows, sub_rows = [], []
    for i in range(n_images):
        cells = []
        for _ in range(rng.integers(0, 5)):
            r0, c0 = rng.integers(0, size - 4, size=2)
            cells.append(rect(size, size, r0, r0 + rng.integers(3, 9), c0, c0 + rng.integers(3, 9)))
        gt = [(int(c), m) for m in cells for c in rng.choice(4, size=rng.integers(1, 3), replace=False)]
        det = []
        for m in cells:
            shifted = np.roll(m, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
            for c in range(4):
                if rng.random() < 0.7:
                    det.append((c, score(), shifted if rng.random() < 0.8 else m))
        if rng.random() < 0.5:
            det.append((int(rng.integers(0, 4)), score(), rect(size, size, 0, 5, 0, 5)))
        truth_rows.append((f"img{i}", size, size, gt))
        sub_rows.append((f"img{i}", size, size, det))
    return truth(truth_rows), frame(sub_rows)


def test_random_cases_match_a_loop_reference():
    rng = np.random.default_rng(7)
    for _ in range(12):
        t, s = _random_case(rng)
        expected = _reference_map(t, s)
        for ties in ("submission", "group"):
            got = evaluate_frames(t, s, ties=ties).mAP
            if math.isnan(expected):
                assert math.isnan(got)
            else:
                assert got == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------ ties: the Open Images evaluator


def _open_images_ap(truth_df, sub_df, rank, thr=0.6):
    """The Open Images challenge evaluation written out for one order of the tied detections.

    ``rank[(image_id, triple_index)]`` orders detections that share a score (lower first).
    The evaluator's unstable argsorts (of the scores, reversed) leave tied detections in
    *some* order, once when an image's detections are sorted for matching and once when a
    class's pooled detections are sorted for the precision/recall curve; here both follow
    ``rank``. Per image: classes absent from its truth and empty masks dropped; each
    detection compared with the truth instance of highest IoU (the first on ties), a TP if
    that IoU >= thr and the instance is still free. Per class: cumulative TP and FP down the
    sorted list, one precision point per detection, precision made non-increasing from the
    right, AP = sum of recall steps times precision. Returns {class: AP} (NaN without truth).
    """
    gts, dets = _decode_rows(truth_df), _decode_rows(sub_df)
    n_gt = np.zeros(19, dtype=int)
    for gt in gts.values():
        for c, _, _ in gt:
            n_gt[c] += 1
    pooled = {c: [] for c in range(19)}
    for image_id, det in dets.items():
        gt = gts.get(image_id)
        if gt is None:
            continue
        for c in {c for c, _, _ in gt}:
            inst = [m for cc, _, m in gt if cc == c]
            mine = [(sc, rank[(image_id, j)], m) for j, (cc, sc, m) in enumerate(det) if cc == c and m.any()]
            mine.sort(key=lambda e: (-e[0], e[1]))
            taken = [False] * len(inst)
            for sc, r, m in mine:
                ious = np.array([(m & g).sum() / (m | g).sum() for g in inst])
                j = int(np.argmax(ious))
                ok = bool(ious[j] >= thr and not taken[j])
                taken[j] = taken[j] or ok
                pooled[c].append((sc, r, ok))
    out = {}
    for c in range(19):
        if n_gt[c] == 0:
            out[c] = float("nan")
            continue
        items = sorted(pooled[c], key=lambda e: (-e[0], e[1]))
        tp = fp = 0
        precision, recall = [0.0], [0.0]
        for _, _, ok in items:
            tp += ok
            fp += not ok
            precision.append(tp / (tp + fp))
            recall.append(tp / n_gt[c])
        precision.append(0.0)
        recall.append(1.0)
        for i in range(len(precision) - 2, -1, -1):
            precision[i] = max(precision[i], precision[i + 1])
        out[c] = sum((recall[i] - recall[i - 1]) * precision[i] for i in range(1, len(recall))
                     if recall[i] != recall[i - 1])
    return out


def _submission_rank(sub_df):
    """Submission order: images as the file lists them, then triples as written."""
    return {(row.ID, j): (pos, j) for pos, row in enumerate(sub_df.itertuples())
            for j in range(len(row.PredictionString.split()) // 3)}


def _mean(ap):
    vals = [v for v in ap.values() if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _n_tied(sub_df):
    scores = [float(x) for p in sub_df["PredictionString"] for x in p.split()[1::3]]
    return len(scores) - len(set(scores))


def test_tied_scores_get_the_evaluators_score_for_the_submission_order():
    rng = np.random.default_rng(11)
    order_mattered = group_differed = 0
    for _ in range(8):
        t, s = _random_case(rng, n_images=40, size=16, levels=[0.25, 0.5, 0.75])
        assert _n_tied(s) > 50  # mostly ties
        rank = _submission_rank(s)
        want = _open_images_ap(t, s, rank)
        got = evaluate_frames(t, s)  # default: submission order
        for c in range(19):
            if math.isnan(want[c]):
                assert math.isnan(got.per_class_ap[c])
            else:
                assert got.per_class_ap[c] == pytest.approx(want[c], abs=1e-12), c
        assert got.mAP == pytest.approx(_mean(want), abs=1e-12)
        # the order of the ties matters in these cases (so the comparison above means something)
        backwards = {k: (-v[0], -v[1]) for k, v in rank.items()}
        order_mattered += abs(_mean(_open_images_ap(t, s, backwards)) - got.mAP) > 1e-9
        group_differed += abs(evaluate_frames(t, s, ties="group").mAP - got.mAP) > 1e-9
    assert order_mattered >= 4 and group_differed >= 4


def test_the_file_order_decides_the_ties():
    rng = np.random.default_rng(12)
    t, s = _random_case(rng, n_images=30, size=16, levels=[0.4, 0.6])
    # another file with the same detections: rows shuffled, triples shuffled within each row
    rows = []
    for row in s.sample(frac=1.0, random_state=3).itertuples():
        tok = row.PredictionString.split()
        triples = [tok[i : i + 3] for i in range(0, len(tok), 3)]
        perm = rng.permutation(len(triples))
        rows.append((row.ID, row.ImageWidth, row.ImageHeight, " ".join(" ".join(triples[i]) for i in perm)))
    s2 = pd.DataFrame(rows, columns=list(HEADER))
    for sub in (s, s2):
        assert evaluate_frames(t, sub).mAP == pytest.approx(_mean(_open_images_ap(t, sub, _submission_rank(sub))),
                                                           abs=1e-12)
    # group ignores the order
    assert evaluate_frames(t, s, ties="group").mAP == pytest.approx(evaluate_frames(t, s2, ties="group").mAP,
                                                                    abs=1e-12)


def test_the_default_is_a_score_the_evaluator_gives_for_some_order():
    import itertools

    # two images, five tied detections of class 0 (three hit a truth cell, two do not)
    t = truth([("a", H, W, [(0, A), (0, B)]), ("b", H, W, [(0, A), (0, C)])])
    s = frame([("a", H, W, [(0, 0.5, C), (0, 0.5, A), (0, 0.5, B)]), ("b", H, W, [(0, 0.5, B), (0, 0.5, A)])])
    keys = list(_submission_rank(s))
    reachable = set()
    for perm in itertools.permutations(range(len(keys))):
        reachable.add(round(_open_images_ap(t, s, dict(zip(keys, perm)))[0], 12))
    assert len(reachable) > 1  # the evaluator's score depends on the order of these ties
    assert round(evaluate_frames(t, s).per_class_ap[0], 12) in reachable
    # group: the evaluator's score for the order with the tied false positives first (its lowest)
    assert round(evaluate_frames(t, s, ties="group").per_class_ap[0], 12) == min(reachable)


def test_cli_evaluate_scores_ties_in_submission_order(tmp_path, cli):
    import json

    rng = np.random.default_rng(13)
    t, s = _random_case(rng, n_images=25, size=16, levels=[0.3, 0.7])
    t.to_csv(tmp_path / "truth.csv", index=False)
    s.to_csv(tmp_path / "sub.csv", index=False)
    want = _mean(_open_images_ap(t, s, _submission_rank(s)))
    res = cli(["evaluate", "--truth", tmp_path / "truth.csv", "--submission", tmp_path / "sub.csv", "--json",
               tmp_path / "out.json", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "out.json").read_text())["mAP"] == pytest.approx(want, abs=1e-12)
    res = cli(["evaluate", "--truth", tmp_path / "truth.csv", "--submission", tmp_path / "sub.csv", "--ties",
               "group", "--json", tmp_path / "group.json", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "group.json").read_text())["mAP"] != pytest.approx(want, abs=1e-9)


def _random_labels(rng, size, n):
    lab = np.zeros((size, size), np.int32)
    for k in range(1, n + 1):
        r0, c0 = rng.integers(0, size - 6, size=2)
        lab[r0 : r0 + rng.integers(4, 12), c0 : c0 + rng.integers(4, 12)] = k
    return lab


@pytest.mark.parametrize("iou", ["mask", "box"])
def test_label_images_agree_with_csv_path(iou):
    from hpacli.evaluate.submission import submission_row, truth_row

    rng = np.random.default_rng(11)
    truth_in, preds_in, t_rows, p_rows = {}, {}, [], []
    for i in range(5):
        tl = _random_labels(rng, 32, 5)
        pl = np.where(rng.random(tl.shape) < 0.05, 0, np.roll(tl, 1, axis=1)) * 3  # other ids
        cells = {int(k): rng.choice(19, size=rng.integers(1, 3), replace=False).tolist() for k in np.unique(tl) if k}
        probs = {int(k): rng.random(19) for k in np.unique(pl) if k}
        probs[999] = rng.random(19)  # absent from the label image: an empty mask, dropped
        truth_in[f"i{i}"] = (tl, cells)
        preds_in[f"i{i}"] = (pl, probs)
        t_rows.append(truth_row(f"i{i}", tl, cells))
        p_rows.append(submission_row(f"i{i}", pl, probs))
    a = evaluate_instances(truth_in, preds_in, iou=iou)
    b = evaluate_frames(pd.DataFrame(t_rows, columns=list(HEADER)), pd.DataFrame(p_rows, columns=list(HEADER)), iou=iou)
    assert a.n_det == b.n_det and a.n_truth == b.n_truth and a.n_tp == b.n_tp
    assert a.mAP == pytest.approx(b.mAP, abs=1e-12)
    assert a.n_empty == 5 * 19
    # mixed: truth from the CSV, predictions from label images
    t_parsed = parse_frame(pd.DataFrame(t_rows, columns=list(HEADER)), kind="truth").images
    p_inst = {k: ImageInstances.from_label_scores(k, lab, pr) for k, (lab, pr) in preds_in.items()}
    assert evaluate(t_parsed, p_inst, iou=iou).mAP == pytest.approx(a.mAP, abs=1e-12)


def test_evaluate_instances_perfect_and_bad_input():
    lab = np.zeros((16, 16), np.int32)
    lab[:8, :8], lab[8:, 8:] = 1, 2
    cells = {1: [0, 11], 2: [3]}
    probs = {1: np.eye(19)[0] + np.eye(19)[11], 2: np.eye(19)[3]}
    assert evaluate_instances({"a": (lab, cells)}, {"a": (lab, probs)}).mAP == 1.0
    with pytest.raises(InputError, match="cell 5 is not in its label image"):
        evaluate_instances({"a": (lab, {5: [0]})}, {"a": (lab, probs)})
    with pytest.raises(InputError, match="19 finite scores"):
        evaluate_instances({"a": (lab, cells)}, {"a": (lab, {1: [0.5] * 18})})
    with pytest.raises(InputError, match="differs from the truth"):
        evaluate_instances({"a": (lab, cells)}, {"a": (lab[:8], {1: np.zeros(19)})})


def test_json_dict_has_every_class_and_null_for_nan():
    t = truth([("a", H, W, [(0, A)])])
    d = evaluate_frames(t, t).to_json_dict()
    assert d["mAP"] == 1.0
    assert list(d["per_class_AP"]) == [str(c) for c in range(19)]
    assert d["per_class_AP"]["0"] == 1.0 and d["per_class_AP"]["1"] is None


# ------------------------------------------------------------ floor and ceiling of a submission's cells


def test_bounds_rescore_the_same_cells_randomly_and_with_their_true_classes():
    # A is found exactly; B's mask is cut to 24 of its 40 pixels (IoU 0.6: a match); C is cut
    # to 20 of 40 (IoU 0.5: missed by the segmentation); D is a cell that is not there.
    b_cut, c_cut, d = rect(H, W, 10, 14, 0, 6), rect(H, W, 10, 14, 10, 15), rect(H, W, 16, 20, 0, 10)
    t = truth([("x", H, W, [(0, A), (2, A), (5, B), (5, C), (0, B)])])
    triples = [(c, 0.5, m) for m in (A, b_cut, c_cut, d) for c in (0, 2, 5)]
    truth_i = parse_frame(t, kind="truth").images
    sub_i = parse_frame(frame([("x", H, W, triples)])).images
    got = score_bounds(truth_i, sub_i)
    # ceiling: class 0: A and B found, first two of 4 detections -> AP 1; class 2: AP 1;
    # class 5: B found, C missed -> recall 1/2 at precision 1 -> AP 0.5
    assert got["ceiling"] == pytest.approx((1 + 1 + 0.5) / 3)
    # the same as scoring those 0/1 scores by hand
    hand = frame([("x", H, W, [(c, float(ok), m) for (c, _, m), ok in zip(
        triples, [1, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0])])])
    assert evaluate_frames(t, hand).mAP == pytest.approx(got["ceiling"])
    # floor: seeded, so the same twice; another seed, another value; below the ceiling
    assert score_bounds(truth_i, sub_i)["floor"] == got["floor"]
    assert score_bounds(truth_i, sub_i, seed=1)["floor"] != got["floor"]
    assert 0.0 < got["floor"] < got["ceiling"]
    # a perfect segmentation with every class as a triple: the ceiling is 1
    whole = parse_frame(frame([("x", H, W, [(c, 0.5, m) for m in (A, B, C) for c in (0, 2, 5)])])).images
    assert score_bounds(truth_i, whole)["ceiling"] == 1.0


def test_bounds_on_random_cases_match_a_pixel_loop_ceiling():
    import dataclasses

    rng = np.random.default_rng(11)
    for _ in range(6):
        t, s = _random_case(rng)
        ti, si = parse_frame(t, kind="truth").images, parse_frame(s).images
        got = score_bounds(ti, si, draws=2)
        # the ceiling written out: a detection scores 1 when some truth instance of its class
        # overlaps its mask with IoU >= 0.6
        gts, dets = _decode_rows(t), _decode_rows(s)
        rows = []
        for image_id, triples in dets.items():
            inst = gts.get(image_id, [])
            rows.append((image_id, 24, 24, [
                (c, float(any((m & g).sum() / (m | g).sum() >= 0.6 for gc, _, g in inst if gc == c)), m)
                for c, _, m in triples]))
        want = evaluate_frames(t, frame(rows)).mAP
        if math.isnan(want):
            assert math.isnan(got["ceiling"])
            continue
        assert got["ceiling"] == pytest.approx(want, abs=1e-12)
        # reusing the IoUs gives the same scores as computing them again
        ious = {k: pairwise_iou(p, ti[k]) for k, p in si.items() if k in ti}
        flat = {k: dataclasses.replace(p, scores=np.full(len(p.labels), 0.5)) for k, p in si.items()}
        assert evaluate(ti, si, ious=ious).mAP == pytest.approx(evaluate(ti, si).mAP, abs=1e-12)
        assert evaluate(ti, flat, ious=ious).mAP == pytest.approx(evaluate(ti, flat).mAP, abs=1e-12)


def test_cli_evaluate_bounds_in_the_json(tmp_path, cli):
    import json

    t = truth([("x", H, W, [(0, A), (2, A), (5, B)])])
    s = frame([("x", H, W, [(c, 0.5, m) for m in (A, B) for c in (0, 2, 5)])])
    t.to_csv(tmp_path / "truth.csv", index=False)
    s.to_csv(tmp_path / "sub.csv", index=False)
    res = cli(["evaluate", "--truth", tmp_path / "truth.csv", "--submission", tmp_path / "sub.csv", "--bounds",
               "--json", tmp_path / "out.json", "-q"])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "out.json").read_text())["bounds"]
    assert got["ceiling"] == 1.0 and 0.0 < got["floor"] < 1.0
    assert "ceiling" in " ".join(res.output.split())
