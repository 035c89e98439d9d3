"""graph-l1 de-noising: closed-form solver vs the faithful ADMM reference, kNN, selections, hook."""

from __future__ import annotations

import numpy as np
import pytest

from hpacli.errors import EXIT_USAGE, HpaError, InputError
from hpacli.label import graph_l1 as gl
from hpacli.label import knn as knnmod
from hpacli.label import reference as ref
from hpacli.label import select as sel


def clustered(n=400, d=24, n_clusters=5, rare=30, missing=12, seed=0):
    """Clusters in d dims; class c = cluster c; a rare cluster whose class-11 label is partly missing."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters + 1, d)) * 3.0
    cluster = np.concatenate([rng.integers(0, n_clusters, n - rare), np.full(rare, n_clusters)])
    x = centres[cluster] + rng.normal(size=(n, d))
    probs = rng.uniform(0.0, 0.15, size=(n, 19))
    common = cluster < n_clusters
    probs[np.flatnonzero(common), cluster[common]] = rng.uniform(0.5, 0.95, size=common.sum())
    rare_idx = np.flatnonzero(~common)
    probs[rare_idx, 11] = rng.uniform(0.6, 0.95, size=rare)
    miss = rare_idx[:missing]
    probs[miss, 11] = rng.uniform(0.0, 0.1, size=missing)
    return x.astype(np.float32), gl.make_y_init(probs), miss, rare_idx


@pytest.fixture(scope="module")
def fold():
    return clustered()


# ----------------------------------------------------------------------------- Y_init
def test_y_init_adds_nothing_column_and_hand_picked():
    p = np.array([[0.2, 0.7], [0.1, 0.3]])
    y = gl.make_y_init(p, hand_picked={0: [1]})
    assert y.shape == (2, 3)
    np.testing.assert_allclose(y[:, 2], [0.3, 0.7])  # 1 - max, before hand-picking
    assert y[1, 0] == 1.0 and y[0, 0] == 0.2


@pytest.mark.parametrize("bad", [np.array([[np.nan, 0.1]]), np.array([[1.5, 0.1]]), np.zeros(3)])
def test_y_init_rejects_bad_probabilities(bad):
    with pytest.raises(InputError):
        gl.make_y_init(bad)


# ------------------------------------------------------------------------------ steps
def test_a_step_closed_form_equals_admm_and_is_the_minimiser():
    rng = np.random.default_rng(1)
    v, _ = np.linalg.qr(rng.normal(size=(300, 10)))
    w = np.sort(rng.uniform(0, 1.5, 10))
    w[0] = 0.0
    y = rng.uniform(0, 1, size=(300, 20))
    lam = 0.3  # large enough that many entries are thresholded to zero
    a = gl.a_step(v, y, w, lam)
    assert (a == 0).sum() > 10
    np.testing.assert_allclose(ref.admm_a_step(v, y, w, lam, 1000), a, atol=1e-10)

    def f(a_):
        return 0.5 * np.sum((y - v @ a_) ** 2) + lam * np.sum(np.sqrt(w)[:, None] * np.abs(a_))

    base = f(a)
    for _ in range(20):
        assert f(a + rng.normal(size=a.shape) * 1e-3) >= base - 1e-12


def test_y_step_is_the_constrained_elementwise_minimiser():
    rng = np.random.default_rng(2)
    f = rng.uniform(-0.5, 1.5, size=500)
    y0 = rng.uniform(0, 1, size=500)
    gamma = 0.12
    z = gl.y_step(f, y0, gamma)
    np.testing.assert_allclose(z, ref.y_step_cases(f, y0, gamma), rtol=0, atol=1e-14)
    assert (z >= 0).all()
    grid = np.linspace(0, 2, 4001)
    cost = 0.5 * (grid[None, :] - f[:, None]) ** 2 + gamma * np.abs(grid[None, :] - y0[:, None])
    best = grid[cost.argmin(axis=1)]
    np.testing.assert_allclose(z, best, atol=1e-3)


def test_convergence_rule():
    old = np.ones(1000)
    new = old.copy()
    new[:1] = 2.0  # 0.1 % of the entries moved a lot
    assert gl.converged(new, old, 0.01, 0.999)[0]  # the seed's rule (no tol) stops here
    assert not gl.converged(new, old, 0.01, 0.999, tol=1e-6)[0]  # the default does not
    new[:2] = 2.0
    assert not gl.converged(new, old, 0.01, 0.999)[0]
    new = old + 5e-7
    assert gl.converged(new, old, 0.01, 0.999, tol=1e-6)[0]
    assert not gl.converged(new + 1e-6, old, 0.01, 0.999, tol=1e-6)[0]


# ---------------------------------------------------------------------- full pipeline
def test_fast_pipeline_reaches_the_reference_optimum(fold):
    x, y0, _, _ = fold
    params = {"k": 20, "n_eig": 12}
    fast = gl.GraphL1Denoiser(**params, knn="exact").run(x, y0)
    slow = ref.reference_denoise(x, y0, **params)
    np.testing.assert_array_equal(fast.knn.indices, slow.knn)  # same exact graph
    np.testing.assert_allclose(fast.eigvals, slow.eigvals, atol=1e-8)
    assert fast.n_iter == slow.n_iter > 1
    assert abs(fast.objective - slow.objective) <= 1e-6 * abs(slow.objective)
    assert np.abs(fast.y_opt - slow.y_opt).max() <= 1e-4
    # the reported objective is the objective of the returned point
    a = gl.a_step(slow.v, slow.y_opt, slow.eigvals, 0.001)
    assert ref.reference_objective(slow.y_opt, slow.a, slow.v, slow.eigvals, y0, 0.001, 0.12) == pytest.approx(
        slow.objective, rel=1e-12)
    assert gl.objective(slow.y_opt, a, slow.v, slow.eigvals, y0, 0.001, 0.12) <= slow.objective + 1e-9


def test_objective_never_increases_and_the_seeds_early_stop_is_above_the_optimum(fold):
    x, y0, _, _ = fold
    r = gl.GraphL1Denoiser(k=20, n_eig=12, knn="exact").run(x, y0)
    h = np.array(r.history)
    assert (np.diff(h) <= 1e-9).all() and r.converged
    early = gl.GraphL1Denoiser(k=20, n_eig=12, knn="exact", tol=0).run(x, y0, graph=r.knn)  # the seed's rule
    assert early.converged and early.n_iter < r.n_iter and early.objective > r.objective
    assert early.params["tol"] is None and r.params["tol"] == 1e-6


def test_denoising_raises_the_missing_positives(fold):
    x, y0, miss, rare = fold
    y = gl.GraphL1Denoiser(k=20, n_eig=12).denoise(x, y0)
    assert y.shape == y0.shape and (y >= 0).all()
    others = np.setdiff1d(np.arange(len(x)), rare)
    assert y[miss, 11].min() > y[others, 11].max()
    top = sel.select_top(y0, y, len(miss), cls=11)
    assert set(top) == set(miss)


def test_lanczos_eigenpairs_match_dense(fold):
    x, *_ = fold
    g = knnmod.knn_graph(x, 20, "exact")
    a = knnmod.connectivity(g.indices)
    w1, v1 = gl.laplacian_eigs(a, 12, "lanczos", tol=1e-10)
    w2, v2 = gl.laplacian_eigs(a, 12, "dense")
    np.testing.assert_allclose(w1, w2, atol=1e-8)
    np.testing.assert_allclose(v1.T @ v1, np.eye(12), atol=1e-8)
    # same subspace (eigenvectors of repeated eigenvalues may differ by a rotation)
    np.testing.assert_allclose(np.linalg.svd(v1.T @ v2, compute_uv=False), 1.0, atol=1e-6)


# ----------------------------------------------------------------------------- kNN
class SliceOnly:
    """An array-like that only supports row slices, like a Zarr array read chunk by chunk."""

    def __init__(self, a):
        self.a = a
        self.shape = a.shape
        self.reads = 0

    def __getitem__(self, s):
        assert isinstance(s, slice)
        self.reads += 1
        return self.a[s]


def test_knn_exact_matches_numpy_and_reads_in_chunks(fold):
    x, *_ = fold
    src = SliceOnly(x.astype(np.float16))
    g = knnmod.knn_graph(src, 15, "exact", chunk=64)
    assert src.reads >= len(x) // 64
    want = knnmod.exact_knn_numpy(x.astype(np.float16).astype(np.float32), 15)
    np.testing.assert_array_equal(g.indices, want)
    assert not (g.indices == np.arange(len(x))[:, None]).any()  # no self loops
    assert (np.diff(g.distances, axis=1) >= 0).all()
    assert knnmod.knn_recall(src, g.indices, sample=50) == 1.0


def test_approximate_knn_recall_is_measured(fold):
    x, *_ = fold
    for method in ("ivf", "hnsw", "pca-exact"):
        g = knnmod.knn_graph(x, 15, method, pca_dim=0, nlist=8, nprobe=4)
        r = knnmod.knn_recall(x, g.indices, sample=100)
        assert 0.8 < r <= 1.0, (method, r)
    lossy = knnmod.knn_graph(x, 15, "pca-exact", pca_dim=4)  # a reduction that loses neighbours
    assert knnmod.knn_recall(x, lossy.indices, sample=100) < 0.9
    broken = np.roll(knnmod.exact_knn_numpy(x, 15), 7, axis=0)
    assert knnmod.knn_recall(x, broken, sample=100) < 0.5


def test_connectivity_is_symmetric_binary():
    idx = np.array([[1, 2], [0, 2], [0, 1], [0, 1]])
    a = knnmod.connectivity(idx).toarray()
    np.testing.assert_array_equal(a, a.T)
    assert set(np.unique(a)) == {0.0, 1.0}
    assert a[0, 3] == 1 and a.diagonal().sum() == 0


def test_knn_bad_input():
    with pytest.raises(InputError, match="need at least 6 cells"):
        knnmod.knn_graph(np.zeros((5, 3), np.float32), 6)  # k counts the cell itself: 5 cells allow k = 5
    assert knnmod.knn_graph(np.arange(15, dtype=np.float32).reshape(5, 3), 5).indices.shape == (5, 4)
    with pytest.raises(HpaError, match="at least 2"):
        knnmod.knn_graph(np.zeros((5, 3), np.float32), 1)
    with pytest.raises(InputError, match="not finite"):
        knnmod.knn_graph(SliceOnly(np.full((30, 3), np.nan, np.float32)), 5)
    with pytest.raises(HpaError, match="unknown kNN"):
        knnmod.knn_graph(np.zeros((30, 3), np.float32), 5, "magic")
    with pytest.raises(InputError, match="shape"):
        gl.GraphL1Denoiser(k=5).denoise(np.zeros((30, 3), np.float32), np.zeros((20, 20)))


# ------------------------------------------------------------------------- selection
def test_threshold_rule_and_its_lone_outlier_failure():
    y0 = np.zeros((6, 12))
    yo = np.zeros((6, 12))
    y0[:, 11] = [0.1, 0.1, 0.1, 0.5, 0.0, 0.39]
    yo[:, 11] = [0.50, 0.47, 0.10, 0.6, 0.2, 0.46]
    # max = 0.6 (a cell above the bound); 0.92*0.6 = 0.552: nobody under the bound reaches it
    assert len(sel.select_threshold(y0, yo, 11)) == 0
    np.testing.assert_array_equal(sel.select_threshold(y0, yo, 11, opt_frac=0.75), [0, 1, 5])
    np.testing.assert_array_equal(sel.select_top(y0, yo, 2, 11), [0, 1])
    c = sel.selection_counts(y0, yo, 11, top=2)
    assert (c.threshold, c.top, c.below_bound) == (0, 2, 5)
    with pytest.raises(HpaError, match="out of range"):
        sel.select_threshold(y0, yo, 19)


def test_neighbour_rule_counts_hits():
    knn = np.array([[1, 2], [2, 3], [3, 1], [1, 2], [4, 4]])
    # positives 0,1,3: neighbours 1,2 | 2,3 | 1,2 → hits: 1:2, 2:3, 3:1
    idx, hits = sel.select_neighbours(knn, [0, 1, 3], k=2, min_hits=2)
    np.testing.assert_array_equal(idx, [2])  # 1 has 2 hits but is itself a positive
    np.testing.assert_array_equal(hits, [3])
    idx, _ = sel.select_neighbours(knn, [0, 1, 3], k=1, min_hits=2)  # first neighbours only: 1,2,1
    assert len(idx) == 0
    with pytest.raises(HpaError):
        sel.neighbour_hits(knn, [0], k=3)
    assert sel.precision_recall(np.array([2, 4]), np.array([2, 3])) == (1, 0.5, 0.5)


# ------------------------------------------------------------------------------ hook
def test_graph_l1_is_registered_through_the_hook(fold):
    from hpacli.registry import create_denoiser, list_denoisers

    assert "graph-l1" in list_denoisers()
    d = create_denoiser("graph-l1", k=20, n_eig=12, gamma=0.2)
    assert d.gamma == 0.2 and d.lam == 0.001
    x, y0, *_ = fold
    y = d.denoise(x, y0)
    assert y.shape == y0.shape
    with pytest.raises(HpaError):
        create_denoiser("graph-l1", stop_frac=2.0)


# ----------------------------------------------------------------------------- stage
@pytest.fixture()
def denoise_store(tmp_path):
    from hpacli.store import BlockWork, open_store
    from hpacli.store import pseudolabels as pl
    from hpacli.store.cells import CellTable, write_cells_table
    from hpacli.store.folds import write_cell_folds

    x, y0, miss, rare = clustered(n=600, rare=60, missing=20, seed=3)
    n = len(x)
    st = open_store(tmp_path / "s.zarr", "a")
    image = np.repeat(np.arange(60), 10)
    write_cells_table(st, {"image": image, "cell_id": np.tile(np.arange(1, 11), 60), "bbox": np.zeros((n, 4)),
                           "area": np.ones(n), "nucleus_bbox": np.zeros((n, 4)), "border": np.zeros(n, bool)}, 60)
    attrs = {"cells_table_id": CellTable(st).table_id, "models": {}, "views": ["id"], "img_size": {}}
    pl.prepare_run(st, "r", n, x.shape[1], attrs, block=100)
    for s in range(0, n, 100):
        pl.write_block(st, "r", s, y0[s:s + 100, :19], x[s:s + 100], np.zeros(100, np.int8))
    work = BlockWork(st, "labels/r", n, 100)
    for b in range(work.n_blocks):
        work.mark_done(b)
    write_cell_folds(st, np.tile(np.arange(2), n // 2).astype(np.int8))  # 2 folds, interleaved
    return st, y0, miss


def test_denoise_stage_writes_per_fold_results_and_resumes(denoise_store, tmp_path):
    from hpacli.label.denoise import run_accept, run_denoise, run_select
    from hpacli.store import denoise as layout

    st, y0, miss = denoise_store
    params = {"k": 20, "n_eig": 12}
    s1 = run_denoise(st, "r", params=params, recall_sample=0)
    assert s1.folds_done == [0, 1] and s1.cells == {0: 300, 1: 300}
    first = layout.read(st, "r")
    assert (first["fold"] == np.tile(np.arange(2), 300)).all()
    np.testing.assert_allclose(first["y_init"], y0, atol=1e-6)
    # each fold alone equals the library on that fold's cells
    rows = np.flatnonzero(first["fold"] == 1)
    emb = st.array("labels/r/embeddings")[:][rows]
    want = gl.GraphL1Denoiser(**params).denoise(emb, gl.make_y_init(np.asarray(
        st.array("labels/r/probs")[:], np.float64)[rows]))
    np.testing.assert_allclose(first["y_opt"][rows], want, atol=1e-5)
    knn = layout.read_knn(st, "r")
    assert (first["fold"][knn[rows]] == 1).all()  # neighbours stay inside the fold
    # a run killed during fold 1: marker not set, rows half written -> rerun gives the same
    st.array("denoise/r/_done")[1] = False
    arr = st.array("denoise/r/y_opt")
    arr[:50] = 0.0
    s2 = run_denoise(st, "r", params=params, recall_sample=0)
    assert s2.folds_skipped == [0] and s2.folds_done == [1]
    again = layout.read(st, "r")
    np.testing.assert_array_equal(again["y_opt"][rows], first["y_opt"][rows])
    with pytest.raises(HpaError, match="other params"):
        run_denoise(st, "r", params={"k": 20, "n_eig": 12, "gamma": 0.3})

    res = run_select(st, "r", top=10)
    assert len(res.cells) == 20  # 10 per fold
    assert len(np.intersect1d(res.cells, miss)) >= 18
    assert res.counts["top"] == 20 and res.counts["threshold"] is not None
    cells, attrs = layout.read_selection(st, "r")
    np.testing.assert_array_equal(cells, res.cells)
    assert attrs["accepted"] is False
    res_nb = run_select(st, "r", neighbours=10, min_hits=3, name="nb")
    assert res_nb.counts["neighbours"] >= 1
    csv = tmp_path / "reviewed.csv"
    csv.write_text("row,y_opt\n" + "\n".join(f"{c},0" for c in res.cells[:5]) + "\n")
    assert run_accept(st, "r", csv) == 5
    cells, attrs = layout.read_selection(st, "r")
    assert attrs["accepted"] is True and list(cells) == list(res.cells[:5])
    bad = tmp_path / "bad.csv"
    bad.write_text("foo\n1\n")
    with pytest.raises(InputError):
        run_accept(st, "r", bad)


def test_denoise_and_select_commands(denoise_store, tmp_path):
    from typer.testing import CliRunner

    from hpacli.cli.app import build_app

    st, _, miss = denoise_store
    runner = CliRunner()
    s = str(st.path)
    res = runner.invoke(build_app(), ["denoise", "--store", s, "--run", "r", "--k", "20", "--n-eig", "12",
                                      "--fold", "0", "--recall-sample", "0", "-q"])
    assert res.exit_code == 0, res.output
    assert "de-noised" in res.output
    res = runner.invoke(build_app(), ["denoise", "--store", s, "--run", "r", "--fold", "7", "--k", "20",
                                      "--n-eig", "12", "-q"])
    assert res.exit_code == EXIT_USAGE and "does not exist" in res.output
    res = runner.invoke(build_app(), ["select-mitotic", "--store", s, "--run", "r", "--top", "5", "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "threshold rule picks" in res.output
    import pandas as pd

    df = pd.read_csv(tmp_path / "mitotic_r.csv")
    assert len(df) == 5 and set(df.columns) >= {"ID", "cell_index", "row", "y_init", "y_opt", "y_opt_scaled"}
    assert (df["fold"] == 0).all() and (df["y_init"] < 0.4).all()
    assert (tmp_path / "mitotic_r.png").exists()
    res = runner.invoke(build_app(), ["select-mitotic", "--store", s, "--run", "r", "--known", "outliers",
                                      "-o", str(tmp_path / "o")])
    assert res.exit_code == EXIT_USAGE and "images table" in res.output  # this store has cells but no images
    res = runner.invoke(build_app(), ["select-mitotic", "--store", s, "--run", "r", "--accept",
                                      str(tmp_path / "mitotic_r.csv")])
    assert res.exit_code == 0 and "accepted 5" in res.output
    from hpacli.store.summary import summarize

    tables = summarize(st)["tables"]
    rows = tables["de-noised labels"]
    assert rows[0]["fold"] == "0" and rows[0]["cells"] == 300
    assert any(r["fold"] == "selection mitotic" and r["iterations"] == "accepted" for r in rows)


def test_exact_knn_is_exact_far_from_the_origin():
    # embeddings with a large common offset: float32 ‖x‖² + ‖y‖² − 2x·y would mis-order them
    # (uncentred, faiss gets the neighbour sets of ~100 of these 1000 cells wrong)
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(1000, 256)) + 30.0).astype(np.float32)
    g = knnmod.knn_graph(x, 30, "exact")
    np.testing.assert_array_equal(np.sort(g.indices, 1), np.sort(knnmod.exact_knn_numpy(x, 30), 1))
    assert x.mean() > 25  # the caller's array is left alone


# ----------------------------------------------------------------------------- outlier known positives
def _images_with_rare_cells(n_images=30, cells=12, d=16, seed=0):
    """Each image: cells around its own pattern; images 0..9 also hold 1–2 'rare' cells near
    one shared direction (the class only a few cells show)."""
    rng = np.random.default_rng(seed)
    rare_dir = rng.normal(size=d) * 3
    emb, image, rare = [], [], []
    for i in range(n_images):
        centre = rng.normal(size=d) * 3
        x = centre + rng.normal(size=(cells, d)) * 0.5
        is_rare = np.zeros(cells, bool)
        if i < 10:
            k = 1 + i % 2
            is_rare[:k] = True
            x[:k] = rare_dir + rng.normal(size=(k, d)) * 0.5
        emb.append(x)
        image.append(np.full(cells, i))
        rare.append(is_rare)
    return np.concatenate(emb), np.concatenate(image), np.concatenate(rare)


def test_image_outliers_point_at_the_rare_cells_of_each_image():
    emb, image, rare = _images_with_rare_cells()
    order = np.random.default_rng(1).permutation(len(image))  # rows of an image need not be contiguous
    emb, image, rare = emb[order], image[order], rare[order]
    score = sel.image_outliers(emb, image)
    labelled = image < 10
    pos = sel.outlier_positives(score[labelled], image[labelled], per_image=1)
    assert len(pos) == 10 and rare[labelled][pos].all()  # one per image, each a rare cell
    pos2 = sel.outlier_positives(score[labelled], image[labelled], per_image=2)
    assert len(pos2) == 20 and rare[labelled][pos2].sum() == 15  # the 15 rare cells, then the next best
    # leave-one-out: a cell alone in its image scores 0, a uniform image scores ~0 everywhere
    assert sel.image_outliers(np.ones((1, 4)), np.array([3]))[0] == 0.0
    flat = sel.image_outliers(np.ones((5, 4)), np.zeros(5, int))
    np.testing.assert_allclose(flat, 0.0, atol=1e-12)


def test_image_outliers_bad_input():
    with pytest.raises(InputError):
        sel.image_outliers(np.ones((3, 4)), np.zeros(2, int))
    with pytest.raises(InputError):
        sel.image_outliers(np.full((3, 4), np.nan), np.zeros(3, int))
    with pytest.raises(HpaError):
        sel.outlier_positives(np.ones(3), np.zeros(3, int), per_image=0)


def test_select_with_outlier_known_positives_needs_image_labels(denoise_store):
    from hpacli.label.denoise import run_denoise, run_select

    st, _, _ = denoise_store
    run_denoise(st, "r", params={"k": 20, "n_eig": 12}, recall_sample=0)
    with pytest.raises(HpaError, match="images table"):
        run_select(st, "r", top=0, known="outliers")
    with pytest.raises(HpaError, match="--known"):
        run_select(st, "r", top=0, known="labels")


# ----------------------------------------------------------------------------- the seed's de-noiser
def _seed_denoiser(x, y0, k, n_eig, lam=0.001, gamma=0.12):
    """The seed's de-noiser written from its description, sharing no code with hpacli:
    sklearn's ``kneighbors_graph(mode='connectivity', include_self=True)`` by brute force
    (k counts the cell itself), ``(A + Aᵀ) > 0``, scipy's ``csgraph.laplacian(normed=True)``
    (degrees and off-diagonal without the self loops), a dense eigensolver, and the
    objective minimised by exact alternating steps until nothing moves (1e-13)."""
    from scipy.linalg import eigh

    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # exact: 0 on the diagonal
    nearest = np.argsort(d2, axis=1, kind="stable")[:, :k]
    assert (nearest[:, 0] == np.arange(n)).all()  # each cell is its own first neighbour
    graph = np.zeros((n, n))
    graph[np.repeat(np.arange(n), k), nearest.ravel()] = 1.0
    graph = ((graph + graph.T) > 0).astype(np.float64)
    off = graph - np.diag(np.diag(graph))
    deg = off.sum(axis=1)
    lap = np.eye(n) - off / np.sqrt(np.outer(deg, deg))
    lam_all, vecs = eigh(lap)
    w, v = np.clip(lam_all[:n_eig], 0, None), vecs[:, :n_eig]
    assert lam_all[n_eig] - lam_all[n_eig - 1] > 1e-6  # a well-defined eigenspace
    thr = lam * np.sqrt(w)[:, None]
    y = np.array(y0, dtype=np.float64)
    for _ in range(100000):
        b = v.T @ y
        f = v @ (np.sign(b) * np.maximum(np.abs(b) - thr, 0.0))
        # per entry: the better of the two one-sided minimisers of ½(z − f)² + γ|z − y0|, z ≥ 0
        hi = np.maximum(f - gamma, y0)
        lo = np.maximum(0.0, np.minimum(f + gamma, y0))
        cost_hi = 0.5 * (hi - f) ** 2 + gamma * np.abs(hi - y0)
        cost_lo = 0.5 * (lo - f) ** 2 + gamma * np.abs(lo - y0)
        y_new = np.where(cost_hi <= cost_lo, hi, lo)
        moved = np.abs(y_new - y).max()
        y = y_new
        if moved < 1e-13:
            break
    return y, nearest


@pytest.fixture(scope="module")
def seed_case():
    x, y0, miss, rare = clustered(n=900, d=16, n_clusters=6, rare=40, missing=15, seed=3)
    x = x * 0.6 + np.random.default_rng(4).normal(size=x.shape).astype(np.float32)  # clusters touch: one graph
    k, n_eig = 40, 20
    y_ref, nearest = _seed_denoiser(x, y0, k, n_eig)
    return x, y0, k, n_eig, y_ref, nearest


def test_graph_l1_matches_the_seeds_denoiser(seed_case):
    x, y0, k, n_eig, y_ref, nearest = seed_case
    res = gl.GraphL1Denoiser(k=k, n_eig=n_eig, knn="exact").run(x, y0)
    # the same graph: k counts the cell itself, so the table holds its k − 1 nearest others
    assert res.knn.indices.shape == (len(x), k - 1) and res.knn.k == k
    np.testing.assert_array_equal(np.sort(res.knn.indices, 1), np.sort(nearest[:, 1:], 1))
    assert res.converged
    assert np.abs(res.y_opt - y_ref).max() <= 1e-4  # the bar is 1e-3; measured 2.5e-6
    # the faithful reference of hpacli (ADMM A-steps) agrees too
    slow = ref.reference_denoise(x, y0, k=k, n_eig=n_eig)
    assert np.abs(slow.y_opt - y_ref).max() <= 1e-4
    # IVF searching every list finds the same graph
    ivf = knnmod.knn_graph(x, k, "ivf", pca_dim=0, nlist=8, nprobe=8)
    np.testing.assert_array_equal(np.sort(ivf.indices, 1), np.sort(res.knn.indices, 1))


def test_the_seed_check_catches_an_off_by_one_graph_and_the_early_stop(seed_case):
    x, y0, k, n_eig, y_ref, _ = seed_case
    # k other cells instead of k − 1 (the old meaning of k): visibly another optimum
    off_by_one = gl.GraphL1Denoiser(k=k + 1, n_eig=n_eig, knn="exact").run(x, y0)
    assert np.abs(off_by_one.y_opt - y_ref).max() > 1e-3
    # the seed's early stopping rule leaves Y_opt short of the optimum by more than the bar
    early = gl.GraphL1Denoiser(k=k, n_eig=n_eig, knn="exact", tol=0).run(x, y0)
    assert np.abs(early.y_opt - y_ref).max() > 1e-3


def test_near_ties_at_the_kth_neighbour_are_settled_in_float64():
    import faiss

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 64)) * 2.5
    x = (centres[rng.integers(0, 12, 6000)] + rng.normal(size=(6000, 64))).astype(np.float32)
    want = knnmod.exact_knn_numpy(x, 200)  # float64
    g = knnmod.knn_graph(x, 200, "exact")
    assert all(set(a) == set(b) for a, b in zip(g.indices, want))
    # float32 search alone gets the 199th other cell of a few cells wrong (this data: 3)
    xc = knnmod._centred(x)
    index = faiss.IndexFlatL2(64)
    index.add(xc)
    plain, _ = knnmod._search(index, xc, 200, 8192)
    assert sum(set(a) != set(b) for a, b in zip(plain, want)) >= 1
