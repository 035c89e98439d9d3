"""hpa review: decisions in the store, the HTTP endpoints and their checks, concurrent
pages, the page itself in a real headless Chromium, and train-cell / select-mitotic
reading the reviewed decisions."""

from __future__ import annotations

import http.client
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from hpacli.errors import EXIT_USAGE, HpaError, StoreError
from hpacli.store import denoise as D
from tests.browser import Chromium, find_chromium
from tests.test_crops import make_cell_store
from tests.test_train_cell import RUN, write_pseudolabels

CLS = 11
K = 6
N_SELECTED = 12
REPO = Path(__file__).resolve().parents[1]


def make_review_store(tmp: Path, n_images: int = 6, top: int = N_SELECTED):
    """A small store with images, cells, pseudo-labels, de-noised labels (with neighbour
    lists) and a selection of ``top`` cells made by `select-mitotic`'s own code."""
    from hpacli.label.denoise import run_select
    from hpacli.store.cells import CellTable
    from hpacli.store.folds import read_image_folds

    store, _ = make_cell_store(tmp, n_images=n_images, cells_per_image=(4, 7))
    cells = CellTable(store)
    labelled = read_image_folds(store)[cells.column("image")] >= 0
    rng = np.random.default_rng(7)
    probs = (rng.random((cells.n, 19)) * 0.3).astype(np.float32)
    write_pseudolabels(store, RUN, probs, labelled)
    rows = np.flatnonzero(labelled)
    D.prepare(store, RUN, cells.n, K, {"cells_table_id": cells.table_id, "denoiser": "fake", "params": {},
                                       "cell_folds": "default"})
    y_init = np.concatenate([probs, 1 - probs.max(axis=1, keepdims=True)], axis=1)[rows]
    y_opt = y_init.copy()
    y_opt[:, CLS] = rng.random(len(rows))
    emb = rng.normal(size=(len(rows), 3))
    d = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    knn = rows[np.argsort(d, axis=1)[:, :K]]
    D.write_fold(store, RUN, rows, 0, y_init, y_opt, knn)
    res = run_select(store, RUN, cls=CLS, top=top, init_below=1.0)
    assert len(res.cells) == top
    return store, probs


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    store, probs = make_review_store(tmp_path_factory.mktemp("review"))
    return store.path, probs


@pytest.fixture
def review_store(template, tmp_path):
    """A fresh copy of the module's store for each test (built once: seconds)."""
    import shutil

    from hpacli.store import open_store

    path, probs = template
    shutil.copytree(path, tmp_path / "hpa.zarr")
    return open_store(tmp_path / "hpa.zarr", "a"), probs


@pytest.fixture
def served(review_store):
    from hpacli.review import open_session, serving

    store, probs = review_store
    session = open_session(store, RUN, "mitotic", reviewer="tester")
    with serving(session) as server:
        yield server, store, probs


def request(server, method, path, body=None, headers=None, token=True, host=None):
    """A raw HTTP request (no client-side rewriting of Host or the path)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    h = {"Host": host or f"127.0.0.1:{server.port}"}
    if token:
        h["X-Hpa-Token"] = server.token
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for k, v in h.items():
        conn.putheader(k, v)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), data


def decided(store, name="mitotic") -> dict[int, str]:
    review = D.read_review(store, RUN, name)
    return {i: D.REVIEW_STATES[s] for i, s in enumerate(review["state"].tolist()) if s != D.UNREVIEWED}


# ----------------------------------------------------------------------------- the store
def test_decisions_are_stored_per_cell_with_time_and_reviewer(review_store):
    store, _ = review_store
    assert D.read_review(store, RUN, "mitotic") is None
    assert D.selection_positives(store, RUN, "mitotic") is None  # neither accepted nor reviewed
    D.ensure_review(store, RUN, "mitotic")
    D.ensure_review(store, RUN, "mitotic")  # idempotent
    D.write_decisions(store, RUN, "mitotic", [0, 3], "accepted", who="ann", when=1000.0)
    D.write_decisions(store, RUN, "mitotic", [5], ["rejected"], who="bob", when=2000.0)
    r = D.read_review(store, RUN, "mitotic")
    assert decided(store) == {0: "accepted", 3: "accepted", 5: "rejected"}
    assert r["time"][0] == 1000.0 and r["who"][5] == "bob" and math.isnan(r["time"][1]) and r["who"][1] == ""
    key = D.review_key(RUN, "mitotic")
    assert store.attrs(f"{key}/state")["encoding"] == "review-state"
    assert store.attrs(key)["encoding"] == "hpacli-review" and store.attrs(key)["encoding_version"] == 1
    rows, info = D.selection_positives(store, RUN, "mitotic")
    assert rows.tolist() == r["cells"][[0, 3]].tolist() and info["counts"]["reviewed"] == 3
    # undo to unreviewed clears time and reviewer
    D.write_decisions(store, RUN, "mitotic", [3], "unreviewed", who="ann")
    r = D.read_review(store, RUN, "mitotic")
    assert r["state"][3] == 0 and math.isnan(r["time"][3]) and r["who"][3] == ""
    for bad_idx, bad_state in (([N_SELECTED], "accepted"), ([-1], "accepted"), ([0], "maybe"), ([0], 7)):
        with pytest.raises(StoreError):
            D.write_decisions(store, RUN, "mitotic", bad_idx, bad_state)
    with pytest.raises(StoreError, match="bad selection name"):
        D.read_selection(store, RUN, "../labels")


def test_reselecting_keeps_the_decisions_of_cells_still_selected(review_store):
    from hpacli.label.denoise import run_select

    store, _ = review_store
    cells, _ = D.read_selection(store, RUN, "mitotic")
    D.ensure_review(store, RUN, "mitotic")
    D.write_decisions(store, RUN, "mitotic", [0, 1, N_SELECTED - 1], ["accepted", "rejected", "accepted"], who="a")
    run_select(store, RUN, cls=CLS, top=N_SELECTED - 4, init_below=1.0)  # the 4 lowest scores drop out
    new_cells, _ = D.read_selection(store, RUN, "mitotic")
    assert new_cells.tolist() == cells[: N_SELECTED - 4].tolist()
    r = D.read_review(store, RUN, "mitotic")
    assert decided(store) == {0: "accepted", 1: "rejected"} and r["who"][0] == "a"


def test_accept_from_the_review_and_from_an_exported_csv(review_store, tmp_path, cli):
    from hpacli.review import open_session

    store, _ = review_store
    cells, _ = D.read_selection(store, RUN, "mitotic")
    res = cli(["select-mitotic", "--store", store.path, "--run", RUN, "--accept", "review"])
    assert res.exit_code == EXIT_USAGE and "hpa review" in res.output
    session = open_session(store, RUN, "mitotic", reviewer="r1")
    for i, s in ((2, "accepted"), (4, "rejected"), (6, "accepted"), (7, "skipped")):
        session.decide(i, s)
    out = tmp_path / "export.csv"
    res = cli(["review", "--store", store.path, "--run", RUN, "--selection", "mitotic", "--export", out])
    assert res.exit_code == 0, res.output
    import pandas as pd

    df = pd.read_csv(out, keep_default_na=False)
    assert len(df) == N_SELECTED and df["row"].tolist() == cells.tolist()
    assert df["decision"].tolist()[:8] == ["unreviewed", "unreviewed", "accepted", "unreviewed", "rejected",
                                           "unreviewed", "accepted", "skipped"]
    assert df.loc[2, "reviewer"] == "r1" and df.loc[2, "decided_at"] and "highest Y_opt" in df.loc[2, "proposed_by"]
    # the exported CSV as --accept input: the rows decided "accepted"
    from hpacli.label.denoise import run_accept

    assert run_accept(store, RUN, out, name="copy") == 2
    assert D.read_selection(store, RUN, "copy")[0].tolist() == cells[[2, 6]].tolist()
    # straight from the review
    res = cli(["select-mitotic", "--store", store.path, "--run", RUN, "--accept", "review"])
    assert res.exit_code == 0 and "accepted 2 cell(s) from hpa review" in res.output, res.output
    final, attrs = D.read_selection(store, RUN, "mitotic")
    assert final.tolist() == cells[[2, 6]].tolist() and attrs["accepted"] and attrs["accepted_from"] == "hpa review"
    assert decided(store) == {0: "accepted", 1: "accepted"}
    # an accepted selection reviewed again: a rejection takes the cell out
    D.write_decisions(store, RUN, "mitotic", [1], "rejected")
    rows, info = D.selection_positives(store, RUN, "mitotic")
    assert rows.tolist() == [int(cells[2])] and info["source"].startswith("accepted")


def test_review_command_errors_are_one_line(review_store, cli):
    store, _ = review_store
    base = ["review", "--store", store.path, "--run", RUN, "--export", "x.csv"]
    res = cli([*base, "--selection", "nope"])
    assert res.exit_code == EXIT_USAGE and "no selection 'nope'" in res.output
    res = cli([*base, "--class", "3"])
    assert res.exit_code == EXIT_USAGE and "is for class 11" in res.output
    res = cli([*base, "--selection", "../x"])
    assert res.exit_code == EXIT_USAGE and "bad selection name" in res.output


# ----------------------------------------------------------------------------- endpoints
def test_endpoints_serve_the_page_data_and_pictures(served):
    server, store, _ = served
    status, headers, body = request(server, "GET", f"/?t={server.token}", token=False)
    assert status == 200 and b"hpa review" in body
    csp = headers["Content-Security-Policy"]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'nonce="{nonce}"'.encode() in body and "default-src 'none'" in csp
    assert b"http://" not in body and b"https://" not in body  # nothing from the internet
    status, _, body = request(server, "GET", "/api/cells")
    data = json.loads(body)
    assert status == 200 and data["meta"]["n"] == N_SELECTED and data["meta"]["class_name"] == "Mitotic spindle"
    cells, _ = D.read_selection(store, RUN, "mitotic")
    assert [c["row"] for c in data["cells"]] == cells.tolist()
    assert data["counts"]["unreviewed"] == N_SELECTED and data["meta"]["knn"] is True
    assert all(0 <= j < N_SELECTED for c in data["cells"] for j in c["nb"])
    assert any(c["nb"] for c in data["cells"])
    import io

    from PIL import Image

    for kind, size in (("rgb", (200, 200)), ("green", (200, 200)), ("thumb", (72, 72))):
        status, headers, body = request(server, "GET", f"/api/cell/3/{kind}.png")
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert Image.open(io.BytesIO(body)).size == size
    status, _, body = request(server, "GET", "/api/cell/3/image.png")
    img = np.asarray(Image.open(io.BytesIO(body)))
    assert status == 200 and ((img == [255, 255, 0]).all(axis=-1)).sum() > 10  # the outline
    status, headers, body = request(server, "GET", "/api/export.csv")
    assert status == 200 and body.decode().splitlines()[0].startswith("ID,cell_index,row")
    assert "attachment" in headers["Content-Disposition"]


def test_decide_writes_the_store_at_once(served):
    server, store, _ = served
    status, _, body = request(server, "POST", "/api/decide", {"i": 4, "state": "accepted"})
    assert status == 200, body
    reply = json.loads(body)
    assert reply["state"] == 1 and reply["who"] == "tester" and reply["counts"]["accepted"] == 1
    assert decided(store) == {4: "accepted"}
    request(server, "POST", "/api/decide", {"i": 4, "state": "unreviewed"})  # undo
    assert decided(store) == {}


@pytest.mark.parametrize("path", [
    "/../zarr.json", "/api/../../zarr.json", "/api/cell/1/../../../zarr.json", "/%2e%2e/%2e%2e/etc/passwd",
    "//etc/passwd", "/page.html", "/hpacli/review/page.html", "/api/cell/99999/rgb.png", "/api/cell/-1/rgb.png",
    "/api/cell/1/../1/rgb.png", "/api/cell/1/passwd.png", "/api/cell/1e3/rgb.png", "/api/cells/../states",
    "/api/cell/0x1/rgb.png", "/api/cell/12/rgb.png",
])
def test_traversal_and_unknown_ids_are_not_found(served, path):
    server, _, _ = served
    status, _, body = request(server, "GET", path)
    assert status == 404, (path, status, body)
    assert json.loads(body)["error"]


def test_requests_without_the_token_or_for_another_host_are_refused(served):
    server, store, _ = served
    assert request(server, "GET", "/", token=False)[0] == 403
    assert request(server, "GET", "/?t=wrong", token=False)[0] == 403
    assert request(server, "GET", "/api/cells", headers={"X-Hpa-Token": "x" * 32})[0] == 403
    assert request(server, "POST", "/api/decide", {"i": 0, "state": "accepted"}, token=False)[0] == 403
    # DNS rebinding: a page of evil.example resolving to 127.0.0.1 sends its own Host
    assert request(server, "GET", "/api/cells", host=f"evil.example:{server.port}")[0] == 403
    assert request(server, "GET", "/api/cells", host="127.0.0.1")[0] == 403  # another port
    assert request(server, "GET", "/api/cells", host=f"localhost:{server.port}")[0] == 200
    assert decided(store) == {}


@pytest.mark.parametrize("method,path", [
    ("PUT", "/api/decide"), ("DELETE", "/api/decide"), ("PATCH", "/api/decide"), ("OPTIONS", "/"),
    ("HEAD", "/"), ("GET", "/api/decide"), ("POST", "/api/cells"), ("POST", "/"), ("TRACE", "/"),
])
def test_other_methods_are_refused(served, method, path):
    server, store, _ = served
    body = b'{"i": 0, "state": "accepted"}' if method not in ("GET", "HEAD", "TRACE") else None
    status, headers, _ = request(server, method, path, body, headers={"Content-Type": "application/json"})
    assert status == 405 and headers.get("Allow")
    assert decided(store) == {}


@pytest.mark.parametrize("body,headers,status", [
    ({"i": N_SELECTED, "state": "accepted"}, {}, 400),
    ({"i": -1, "state": "accepted"}, {}, 400),
    ({"i": True, "state": "accepted"}, {}, 400),
    ({"i": "0", "state": "accepted"}, {}, 400),
    ({"i": 0, "state": "maybe"}, {}, 400),
    ({"i": 0, "state": "accepted", "who": "eve"}, {}, 400),
    (b"[1, 2]", {"Content-Type": "application/json"}, 400),
    (b"{not json", {"Content-Type": "application/json"}, 400),
    (b'{"i": 0, "state": "accepted"}', {"Content-Type": "text/plain"}, 415),
    (b'{"i": 0, "state": "accepted"}', {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    (b'{"i": 0, "state": "accepted", "pad": "' + b"x" * 2000 + b'"}', {"Content-Type": "application/json"}, 413),
    ({"i": 0, "state": "accepted"}, {"Origin": "http://evil.example"}, 403),
    ({"i": 0, "state": "accepted"}, {"Origin": "null"}, 403),
    ({"i": 0, "state": "accepted"}, {"Sec-Fetch-Site": "cross-site"}, 403),
])
def test_bad_decisions_are_refused_and_change_nothing(served, body, headers, status):
    server, store, _ = served
    got, _, reply = request(server, "POST", "/api/decide", body, headers=headers)
    assert got == status, reply
    assert decided(store) == {}


def test_decisions_from_many_threads_are_all_kept(served):
    server, store, _ = served
    want = {i: ("accepted", "rejected", "skipped")[i % 3] for i in range(N_SELECTED)}
    errors = []

    def post(i):
        for state in ("skipped", "accepted", want[i]):  # the last write is the decision
            status, _, body = request(server, "POST", "/api/decide", {"i": i, "state": state})
            if status != 200:
                errors.append(body)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(N_SELECTED)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and decided(store) == want


def _start_review_process(store, reviewer):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE", "HPA_LOAD_PLUGINS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "hpacli.cli.app", "review", "--store", str(store.path), "--run",
                             RUN, "--selection", "mitotic", "--reviewer", reviewer], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    return proc, url


def test_two_review_processes_on_one_store_lose_no_decision(review_store):
    """Two `hpa review` processes (two people, two pages) decide on cells of the same chunk
    at the same time: every decision is in the store, with the reviewer of its page."""
    from types import SimpleNamespace
    from urllib.parse import parse_qs, urlsplit

    store, _ = review_store
    procs = [_start_review_process(store, who) for who in ("ann", "bob")]
    try:
        servers = []
        for _, url in procs:
            u = urlsplit(url)
            servers.append(SimpleNamespace(port=u.port, token=parse_qs(u.query)["t"][0]))
        want = {i: ("accepted", "rejected")[i % 2] for i in range(N_SELECTED)}
        errors = []

        def post(server, cells):
            for state in ("skipped", "rejected", "accepted"):
                for i in cells:
                    status, _, body = request(server, "POST", "/api/decide",
                                              {"i": i, "state": want[i] if state == "accepted" else state})
                    if status != 200:
                        errors.append(body)

        threads = [threading.Thread(target=post, args=(servers[k], list(range(k, N_SELECTED, 2)))) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert decided(store) == want
        who = D.read_review(store, RUN, "mitotic")["who"]
        assert set(who[0::2]) == {"ann"} and set(who[1::2]) == {"bob"}
        # each page sees the other's decisions
        _, _, body = request(servers[0], "GET", "/api/states")
        assert json.loads(body)["counts"]["reviewed"] == N_SELECTED
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait(10)
            proc.stdout.close()


# ----------------------------------------------------------------------------- the page, in a browser
CHROMIUM = find_chromium()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium, or set HPA_CHROMIUM "
                    "to a Chromium/Chrome binary): the page is not driven in a browser")
def test_page_in_headless_chromium_keyboard_reload_store_and_train_cell(served, cli, tmp_path):
    server, store, probs = served
    cells, _ = D.read_selection(store, RUN, "mitotic")
    with Chromium(CHROMIUM) as browser:
        page = browser.new_page()
        page.goto(server.url)
        order = page.evaluate("hpaReview.order()")
        assert sorted(order) == list(range(N_SELECTED)) and page.evaluate("hpaReview.current()") == order[0]
        assert page.evaluate("document.getElementById('progress-text').textContent").startswith(
            f"0 of {N_SELECTED} reviewed")
        page.wait_for("[...document.querySelectorAll('#panels img')].every(i => i.complete && i.naturalWidth == 200)")
        assert page.evaluate("document.querySelectorAll('#panels img').length") == 5
        facts = page.evaluate("document.getElementById('facts').textContent")
        assert "highest Y_opt" in facts and "Y_init (Mitotic spindle)" in facts
        for key in ("a", "a", "r"):  # accept two cells and reject one, with the keyboard
            page.press(key)
        page.wait_for("hpaReview.pending() === 0")
        want = {order[0]: "accepted", order[1]: "accepted", order[2]: "rejected"}
        assert decided(store) == want  # written at once, before any reload
        assert page.evaluate("hpaReview.current()") == order[3]
        # undo puts the last cell back to unreviewed (in the store too); r rejects it again
        page.press("u")
        page.wait_for("hpaReview.pending() === 0")
        assert decided(store) == {order[0]: "accepted", order[1]: "accepted"}
        assert page.evaluate("hpaReview.current()") == order[2]
        page.press("r")
        page.wait_for("hpaReview.pending() === 0")
        # close and come back: the same state
        page.reload()
        states = page.evaluate("hpaReview.states()")
        assert {i: s for i, s in enumerate(states) if s != "unreviewed"} == want
        assert page.evaluate("document.getElementById('progress-text').textContent").startswith(
            f"3 of {N_SELECTED} reviewed · 2 accepted · 1 rejected")
        assert page.evaluate("hpaReview.current()") == order[3]  # the first unreviewed cell
        # filter: 3 shows the accepted cells only
        page.press("3")
        assert page.evaluate("hpaReview.order()") == [order[0], order[1]]
        assert page.evaluate("[...document.querySelectorAll('#list .item')].map(e => e.dataset.state)") == \
            ["accepted", "accepted"]
        page.press("1")
        page.press("o")  # sort: score, low first
        assert page.evaluate("hpaReview.order()") == order[::-1]
        page.press("o")
        page.press("o")
        page.press("o")
        page.press("o")  # round the five orders, back to score, high first
        assert page.evaluate("hpaReview.order()") == order
        # the cell's accepted neighbours are shown
        nb = json.loads(request(server, "GET", "/api/cells")[2])["cells"]
        with_acc = [c["i"] for c in nb if set(c["nb"]) & {order[0], order[1]}]
        if with_acc:
            page.evaluate(f"document.querySelector('#list .item[data-i=\"{with_acc[0]}\"]').click()")
            assert page.evaluate("document.querySelectorAll('#nbs img').length") >= 1
    # the store holds exactly those decisions, stamped with the page's reviewer
    assert decided(store) == want
    review = D.read_review(store, RUN, "mitotic")
    assert all(review["who"][i] == "tester" and np.isfinite(review["time"][i]) for i in want)
    # train-cell --selection: the accepted cells become positives, the rejected one does not
    from hpacli.train import cell as TC

    tg = TC.assemble_targets(store, RUN, selection="mitotic")
    acc_rows = cells[[order[0], order[1]]]
    rej_row = int(cells[order[2]])
    assert tg.n_selected == 2 and (tg.y[acc_rows, CLS] == 1.0).all()
    assert tg.y[rej_row, CLS] == pytest.approx(probs[rej_row, CLS]) and probs[rej_row, CLS] < 1
    others = np.setdiff1d(cells, acc_rows)
    assert (tg.y[others, CLS] < 1).all()
    from tests.test_train_cell import save_image_model

    init = save_image_model(tmp_path / "image.pt")
    out = tmp_path / "cell"
    res = cli(["train-cell", "--store", store.path, "--fold", "0", "--labels", RUN, "--selection", "mitotic",
               "--init-from", init, "--out", out, "--img-size", "32", "--batch-size", "4", "--accum", "1",
               "--epochs", "1", "--max-steps", "1", "--workers", "0", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    import torch

    extra = torch.load(out / "last.pt", weights_only=True)["train_config"]["extra"]
    assert extra["selection"] == "mitotic" and extra["n_selected"] == 2


def test_train_cell_refuses_a_selection_neither_reviewed_nor_accepted(review_store):
    from hpacli.train import cell as TC

    store, _ = review_store
    with pytest.raises(HpaError, match="hpa review"):
        TC.assemble_targets(store, RUN, selection="mitotic")
    D.ensure_review(store, RUN, "mitotic")  # a review with no decision yet
    with pytest.raises(HpaError, match="not accepted and not reviewed"):
        TC.assemble_targets(store, RUN, selection="mitotic")


def test_info_shows_the_review_progress(review_store):
    from hpacli.store.summary import summarize

    store, _ = review_store
    D.ensure_review(store, RUN, "mitotic")
    D.write_decisions(store, RUN, "mitotic", [0, 1], ["accepted", "rejected"])
    rows = summarize(store)["tables"]["de-noised labels"]
    sel = [r for r in rows if r["fold"] == "selection mitotic"]
    assert sel and sel[0]["iterations"] == f"to review; reviewed 2/{N_SELECTED} (1 accepted)"
