"""hpa dedup: pHash per channel, pair searches (index == brute force), groups, the stage and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from hpacli.classes import CHANNELS
from hpacli.data.ingest import kaggle_candidates, run_ingest
from hpacli.errors import EXIT_USAGE
from hpacli.prep.dedup import (
    choose_blocks,
    connected_groups,
    find_pairs,
    find_pairs_brute,
    find_pairs_indexed,
    phash64,
    phash_rgb,
    run_dedup,
)
from hpacli.store import open_store
from hpacli.store.dedup import read_groups, read_hashes, read_pairs


def texture(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A random smooth RGBY texture, uint8 [4, size, size] spanning most of 0..255."""
    out = []
    for _ in range(4):
        x = gaussian_filter(rng.standard_normal((size, size)), sigma=size / 16)
        x = (x - x.min()) / (x.max() - x.min() + 1e-9)
        out.append((20 + 220 * x).astype(np.uint8))
    return np.stack(out)


def write_image(folder: Path, image_id: str, px: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for c, name in enumerate(CHANNELS):
        Image.fromarray(px[c]).save(folder / f"{image_id}_{name}.png")


def make_dataset(root: Path, seed: int = 0):
    """8 distinct images plus copies: exact, intensity x0.7, slightly noised; one test copy.
    Returns the expected duplicate pairs as ID tuples."""
    rng = np.random.default_rng(seed)
    base = {f"img{k}": texture(rng) for k in range(8)}
    train = dict(base)
    train["img0_copy"] = base["img0"].copy()
    train["img1_dim"] = (base["img1"].astype(float) * 0.7).round().astype(np.uint8)
    noisy = base["img2"].astype(float) + rng.normal(0, 3, base["img2"].shape)
    train["img2_noisy"] = np.clip(noisy, 0, 255).round().astype(np.uint8)
    train["img0_copy2"] = base["img0"].copy()  # a group of three
    rows = []
    for image_id, px in train.items():
        write_image(root / "train", image_id, px)
        rows.append({"ID": image_id, "Label": str(int(image_id[3]) % 19)})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    write_image(root / "test", "test_of_3", base["img3"].copy())
    expected = {
        ("img0", "img0_copy"), ("img0", "img0_copy2"), ("img0_copy", "img0_copy2"),
        ("img1", "img1_dim"), ("img2", "img2_noisy"), ("img3", "test_of_3"),
    }
    return expected


def ingest(root: Path, store_path: Path, cache_size: int | None = None):
    st = open_store(store_path, "a")
    run_ingest(st, kaggle_candidates(root), data_root=root, cache_size=cache_size, workers=1)
    return st


def found_pairs(st) -> set[tuple[str, str]]:
    ids = st.images.ids()
    pairs, _ = read_pairs(st)
    return {tuple(sorted((ids[a], ids[b]))) for a, b in pairs}


# ------------------------------------------------------------------------------ hashing
def test_phash64_matches_imagehash_hex():
    import imagehash

    rng = np.random.default_rng(1)
    x = texture(rng)[0]
    assert int(phash64(x)) == int(str(imagehash.phash(Image.fromarray(x))), 16)


def test_hash_survives_scaling_and_noise_but_not_other_images():
    rng = np.random.default_rng(2)
    a, b = texture(rng), texture(rng)
    ha = phash_rgb(a)
    dim = phash_rgb((a * 0.7).astype(np.uint8))
    noisy = phash_rgb(np.clip(a + rng.normal(0, 3, a.shape), 0, 255).astype(np.uint8))
    other = phash_rgb(b)
    d = lambda x, y: np.bitwise_count(x ^ y)  # noqa: E731
    assert d(ha, dim).max() <= 4
    assert d(ha, noisy).max() <= 6
    assert d(ha, other).min() > 12


# ------------------------------------------------------------------------------ searches
def planted(n: int, n_dups: int, seed: int, threshold: int = 12):
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, size=(n, 3), dtype=np.uint64, endpoint=False)
    src = rng.choice(n, n_dups, replace=False)
    dst = rng.choice(n, n_dups, replace=False)
    for k, (s, t) in enumerate(zip(src, dst)):
        if s == t:
            continue
        v = h[s].copy()
        outside = rng.integers(0, 3) if k % 2 else -1  # every other pair is just past the threshold in one channel
        for c in range(3):
            n_flips = rng.integers(threshold + 1, threshold + 4) if c == outside else rng.integers(0, threshold + 1)
            for bit in rng.choice(64, n_flips, replace=False):
                v[c] ^= np.uint64(1) << np.uint64(int(bit))
        h[t] = v
    return h


@pytest.mark.parametrize("threshold", [0, 5, 12])
def test_index_and_brute_force_agree(threshold):
    h = planted(6000, 400, seed=threshold, threshold=threshold)
    p1, d1 = find_pairs_brute(h, threshold)
    p2, d2 = find_pairs_indexed(h, threshold)
    assert len(p1) >= 150  # the planted pairs within the threshold are there (about 200)
    assert len(p1) <= 260  # and the ones just past it are not
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(d1, d2)
    assert (d1 <= threshold).all()
    assert (p1[:, 0] < p1[:, 1]).all()
    # every reported pair really is within threshold in all channels; nothing missed vs an exact check
    full = np.bitwise_count(h[p1[:, 0]] ^ h[p1[:, 1]])
    np.testing.assert_array_equal(full, d1)


def test_index_with_forced_block_counts_and_clustered_hashes():
    # many identical hashes (a large bucket) and near copies: every block count finds the same pairs
    rng = np.random.default_rng(5)
    h = planted(1500, 200, seed=7)
    h[:50] = h[0]
    h[50:60, 1] = rng.integers(0, 2**64, size=10, dtype=np.uint64)  # same R, different G: not duplicates
    h[50:60, 0] = h[0, 0]
    ref, dref = find_pairs_brute(h, 12)
    for m in (3, 4, 7, 13):
        got, d = find_pairs_indexed(h, 12, n_blocks=m)
        np.testing.assert_array_equal(got, ref)
    assert ((ref[:, 0] < 50) & (ref[:, 1] < 50)).sum() == 50 * 49 // 2
    with pytest.raises(ValueError):
        find_pairs_indexed(h, 12, n_blocks=2)  # 32-bit blocks: lookup tables too large


def test_choose_blocks_for_large_n():
    assert choose_blocks(100_000, 12) == 4


def test_find_pairs_rejects_bad_method():
    with pytest.raises(ValueError):
        find_pairs(np.zeros((3, 3), np.uint64), 12, method="nope")


def test_connected_groups():
    g = connected_groups(7, np.array([[1, 4], [4, 6], [2, 3]]))
    np.testing.assert_array_equal(g, [0, 1, 2, 2, 1, 5, 1])
    np.testing.assert_array_equal(connected_groups(3, np.zeros((0, 2))), [0, 1, 2])


# ------------------------------------------------------------------------------ the stage
@pytest.mark.parametrize("cache_size", [None, 64])
def test_run_dedup_finds_planted_duplicates(tmp_path, cache_size):
    expected = make_dataset(tmp_path / "data")
    st = ingest(tmp_path / "data", tmp_path / "s.zarr", cache_size)
    summary = run_dedup(st, threshold=12, workers=1)
    assert found_pairs(st) == expected
    assert summary["n_groups"] == 4
    assert summary["largest_group"] == 3
    assert summary["train_test_pairs"] == 1
    ids = st.images.ids().tolist()
    group = read_groups(st)
    assert group[ids.index("img0_copy2")] == group[ids.index("img0")] == ids.index("img0")
    assert group[ids.index("img4")] == ids.index("img4")
    hashes, ok = read_hashes(st)
    assert hashes.shape == (len(ids), 3) and ok.all()
    rec = st.attrs("dedup")["provenance"]
    assert rec["status"] == "done" and rec["params"]["source"] == ("cache" if cache_size else "png")


def test_run_dedup_resumes_and_is_deterministic(tmp_path, monkeypatch):
    make_dataset(tmp_path / "data")
    st = ingest(tmp_path / "data", tmp_path / "s.zarr")
    import hpacli.prep.dedup as mod

    monkeypatch.setattr(mod, "HASH_BLOCK", 4)
    calls = []
    real = mod.phash_rgb

    def failing(px):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt  # a kill in the second block
        return real(px)

    monkeypatch.setattr(mod, "phash_rgb", failing)
    with pytest.raises(KeyboardInterrupt):
        run_dedup(st, workers=1)
    assert st.attrs("dedup")["provenance"]["status"] == "failed"
    monkeypatch.setattr(mod, "phash_rgb", real)
    counted = []
    monkeypatch.setattr(mod, "phash_rgb", lambda px: counted.append(1) or real(px))
    run_dedup(st, workers=1)
    assert len(counted) == st.images.n - 4  # the first block was not hashed again
    first = found_pairs(st)
    h1, _ = read_hashes(st)
    run_dedup(st, workers=1, overwrite=True)
    h2, _ = read_hashes(st)
    np.testing.assert_array_equal(h1, h2)
    assert found_pairs(st) == first


def test_images_ingested_later_are_hashed_without_redoing_the_rest(tmp_path, monkeypatch):
    import hpacli.prep.dedup as mod

    root = tmp_path / "data"
    make_dataset(root)
    st = ingest(root, tmp_path / "s.zarr")
    monkeypatch.setattr(mod, "HASH_BLOCK", 4)
    run_dedup(st, workers=1)
    n_old = st.images.n  # 13: blocks of 4, the last one partly filled
    write_image(root / "train", "img4_copy", np.stack([
        np.asarray(Image.open(root / "train" / f"img4_{c}.png")) for c in CHANNELS]))
    df = pd.read_csv(root / "train.csv")
    pd.concat([df, pd.DataFrame([{"ID": "img4_copy", "Label": "4"}])]).to_csv(root / "train.csv", index=False)
    run_ingest(st, kaggle_candidates(root), data_root=root, workers=1)
    assert st.images.n == n_old + 1
    counted = []
    real = mod.phash_rgb
    monkeypatch.setattr(mod, "phash_rgb", lambda px: counted.append(1) or real(px))
    run_dedup(st, workers=1)
    assert len(counted) == n_old % 4 + 1  # the partial block again, plus the new image
    assert ("img4", "img4_copy") in found_pairs(st)
    hashes, ok = read_hashes(st)
    assert ok.all() and len(hashes) == n_old + 1


def test_run_dedup_skips_unreadable_image(tmp_path):
    make_dataset(tmp_path / "data")
    st = ingest(tmp_path / "data", tmp_path / "s.zarr")
    (tmp_path / "data" / "train" / "img5_green.png").write_bytes(b"not a png")
    summary = run_dedup(st, workers=1, overwrite=True)
    assert summary["n_unreadable"] == 1
    assert summary["problems"][0]["ID"] == "img5"
    _, ok = read_hashes(st)
    assert ok.sum() == st.images.n - 1


def test_cli_dedup(tmp_path):
    from typer.testing import CliRunner

    from hpacli.cli.app import build_app

    expected = make_dataset(tmp_path / "data")
    ingest(tmp_path / "data", tmp_path / "s.zarr", 64)
    out = tmp_path / "o" / "dups.csv"
    res = CliRunner().invoke(build_app(), ["dedup", "--store", str(tmp_path / "s.zarr"), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert {tuple(sorted(p)) for p in zip(df["ID1"], df["ID2"])} == expected
    assert set(df.columns) >= {"ID1", "ID2", "d_red", "d_green", "d_blue"}
    png = Image.open(out.with_suffix(".png"))
    assert png.size[0] > 256 and png.size[1] > 256
    bad = CliRunner().invoke(build_app(), ["dedup", "--store", str(tmp_path / "s.zarr"), "--source", "x", "-q"])
    assert bad.exit_code == EXIT_USAGE and "--source" in bad.output
    missing = CliRunner().invoke(build_app(), ["dedup", "--store", str(tmp_path / "none.zarr"), "-q"])
    assert missing.exit_code == EXIT_USAGE and "no store" in missing.output


# ------------------------------------------------------------------ two ingests, with and without the cache
@pytest.mark.parametrize("first,second", [(None, 64), (64, None), (64, 64), (None, None)])
def test_two_ingests_then_dedup_finds_planted_duplicates_only(tmp_path, first, second):
    """The first ingest registers half of the train images, the second the rest (and the
    test image); whatever the cache options, dedup finds exactly the planted pairs."""
    root = tmp_path / "data"
    expected = make_dataset(root)
    df = pd.read_csv(root / "train.csv")
    df.iloc[: len(df) // 2].to_csv(root / "train.csv", index=False)
    st = open_store(tmp_path / "s.zarr", "a")
    run_ingest(st, kaggle_candidates(root, include_test=False), data_root=root, cache_size=first, workers=1)
    df.to_csv(root / "train.csv", index=False)
    run_ingest(st, kaggle_candidates(root), data_root=root, cache_size=second, workers=1)
    assert st.images.n == len(df) + 1
    summary = run_dedup(st, threshold=12, workers=1)
    found = found_pairs(st)
    assert found == expected, (sorted(found - expected), sorted(expected - found))
    assert summary["n_pairs"] == 6 and summary["largest_group"] == 3
    cached = first is not None or second is not None
    assert st.attrs("dedup")["provenance"]["params"]["source"] == ("cache" if cached else "png")


def test_dedup_never_hashes_cache_rows_without_marker(tmp_path):
    """A cache without markers (a store from before them): auto hashes the PNGs, --source
    cache is refused, and hashes made from that cache before are not reused."""
    import shutil

    from hpacli.errors import HpaError

    expected = make_dataset(tmp_path / "data")
    st = ingest(tmp_path / "data", tmp_path / "s.zarr", 64)
    n = st.images.n
    st.array("images/cache")[: n // 2] = np.zeros((n // 2, 4, 64, 64), np.uint8)  # rows never written
    shutil.rmtree(tmp_path / "s.zarr" / "images" / "cache_ok")
    with pytest.raises(HpaError, match=f"{n} of {n} images have no pixels in the store's cache"):
        run_dedup(st, source="cache", workers=1)
    assert not st.has("dedup/group")
    run_dedup(st, workers=1)
    assert found_pairs(st) == expected
    assert st.attrs("dedup")["provenance"]["params"]["source"] == "png"
    # the next ingest fills the cache (new cache id): hashes of the cache are made afresh
    run_ingest(st, kaggle_candidates(tmp_path / "data"), data_root=tmp_path / "data", workers=1)
    assert st.images.cache_complete
    run_dedup(st, workers=1)
    assert found_pairs(st) == expected
    assert st.attrs("dedup/hashes")["cache_id"] == st.images.cache_id
    assert st.attrs("dedup")["provenance"]["params"]["source"] == "cache"


# ------------------------------------------------------------------ the output path
def test_cli_dedup_checks_the_output_before_storing(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from hpacli.cli.app import build_app

    make_dataset(tmp_path / "data")
    store = tmp_path / "s.zarr"
    ingest(tmp_path / "data", store, 64)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "dups.png").mkdir()  # the PNG beside dups.csv would land on a folder
    for bad, why in ((tmp_path / "a_file" / "dups.csv", "a_file is a file"),
                     (tmp_path / "a_dir", "is a folder"),
                     (tmp_path / "x.png", "give the CSV's name"),
                     (tmp_path / "dups.csv", "is a folder"),
                     (tmp_path / ("n" * 300) / "d.csv", "longer than 255 bytes")):
        res = CliRunner().invoke(build_app(), ["dedup", "--store", str(store), "-o", str(bad), "-q"])
        assert res.exit_code == EXIT_USAGE, (bad, res.output)
        assert "Traceback" not in res.output and why in " ".join(res.output.split()), res.output
        assert not store.joinpath("dedup").exists()  # nothing stored
    # by default the CSV goes beside the store, whatever the current folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = CliRunner().invoke(build_app(), ["dedup", "--store", str(store), "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s.zarr-duplicates.csv").exists() and (tmp_path / "s.zarr-duplicates.png").exists()
    assert list(elsewhere.iterdir()) == []
