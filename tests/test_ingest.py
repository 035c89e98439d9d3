"""hpa ingest: registering datasets, bad inputs reported without harming the store,
and a kill -9 in the middle followed by a rerun giving the same store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpacli.errors import EXIT_USAGE
from hpacli.store import open_store
from tests.datasets import make_kaggle_dataset, smooth_image, write_rgby


def _snapshot(store_path: Path) -> dict:
    st = open_store(store_path, "r")
    t = st.images
    out = {"ids": t.ids().tolist(), "labels": t.labels().tolist(), "df": t.df().to_dict("list")}
    if t.cache_size:
        out["cache"] = np.asarray(st.array("images/cache")[: t.n]).tobytes()
    return out


def test_ingest_kaggle_layout(cli, tiny_dataset, tmp_path):
    store = tmp_path / "s.zarr"
    res = cli(["ingest", tiny_dataset, "--store", store, "--cache-size", 32, "--quiet"])
    assert res.exit_code == 0, res.output
    st = open_store(store, "r")
    df = st.images.df()
    assert len(df) == 15
    assert (df["split"] == "train").sum() == 12 and (df["split"] == "test").sum() == 3
    assert set(df.loc[df.split == "test", "source"]) == {"test"}
    train = (tiny_dataset / "train.csv").read_text().splitlines()[1:]
    first_id, first_labels = train[0].split(",")
    i = int(np.flatnonzero(st.images.ids() == first_id)[0])
    assert sorted(np.flatnonzero(st.images.labels()[i]).tolist()) == sorted(map(int, first_labels.split("|")))
    assert st.images.read_cache(i).shape == (4, 32, 32)
    assert st.images.read_image(i).shape == (4, 64, 64)
    assert st.images.paths(i)[0].exists()
    # re-running adds nothing and leaves the table alone
    before = _snapshot(store)
    res = cli(["ingest", tiny_dataset, "--store", store, "--cache-size", 32, "--quiet"])
    assert res.exit_code == 0 and "0 new image" in res.output.replace("\n", " ")
    assert _snapshot(store) == before


def test_ingest_adds_new_images_only(cli, tmp_path):
    data = make_kaggle_dataset(tmp_path / "d", n_train=4, n_test=0)
    store = tmp_path / "s.zarr"
    assert cli(["ingest", data, "--store", store, "-q"]).exit_code == 0
    before = _snapshot(store)
    rng = np.random.default_rng(5)
    write_rgby(data / "train", "extra", smooth_image(rng, 64))
    with open(data / "train.csv", "a") as f:
        f.write("extra,3\n")
    assert cli(["ingest", data, "--store", store, "-q"]).exit_code == 0
    after = _snapshot(store)
    assert after["ids"][:4] == before["ids"] and after["ids"][4] == "extra"
    assert after["labels"][:4] == before["labels"]


def _bad_dataset(root: Path) -> Path:
    rng = np.random.default_rng(1)
    rows = []

    def add(image_id, label, pixels=None):
        if pixels is None:
            pixels = smooth_image(rng, 64)
        write_rgby(root / "train", image_id, pixels)
        rows.append(f"{image_id},{label}")

    add("good", "1|2")
    add("missing", "0")
    (root / "train" / "missing_yellow.png").unlink()
    add("corrupt", "0")
    data = (root / "train" / "corrupt_green.png").read_bytes()
    (root / "train" / "corrupt_green.png").write_bytes(data[: len(data) // 2])
    add("notpng", "0")
    (root / "train" / "notpng_red.png").write_text("hello")
    add("sizes", "0")
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(root / "train" / "sizes_blue.png")
    add("deep", "5", smooth_image(rng, 64, bits=16))
    add("unknown", "25")
    add("malformed", "a|b")
    add("nan", "")
    (root / "train.csv").write_text("ID,Label\n" + "\n".join(rows) + "\n")
    return root


def test_bad_inputs_are_reported_and_store_unharmed(cli, tiny_dataset, tmp_path):
    store = tmp_path / "s.zarr"
    assert cli(["ingest", tiny_dataset, "--store", store, "-q", "--cache-size", 32]).exit_code == 0
    before = _snapshot(store)
    bad = _bad_dataset(tmp_path / "bad")
    res = cli(["ingest", bad, "--store", store, "-q", "--no-test", "--cache-size", 32])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "missing channel file missing_yellow.png" in out
    assert "corrupt_green.png" in out and "notpng_red.png" in out
    assert "different sizes" in out
    assert "outside 0..18" in out and "not an integer" in out and "empty label" in out
    after = _snapshot(store)
    n0 = len(before["ids"])
    assert after["ids"][:n0] == before["ids"] and after["labels"][:n0] == before["labels"]
    assert after["ids"][n0:] == ["good", "deep"]  # the 16-bit image is accepted
    st = open_store(store, "r")
    i = st.images.ids().tolist().index("deep")
    assert int(st.images.df()["bit_depth"][i]) == 16
    assert st.images.read_image(i).dtype == np.uint8
    problems = st.attrs("ingest")["provenance"]["summary"]["problems"]
    assert {p["ID"] for p in problems} == {"missing", "corrupt", "notpng", "sizes", "unknown", "malformed", "nan"}


def test_strict_fails_without_touching_the_store(cli, tiny_dataset, tmp_path):
    store = tmp_path / "s.zarr"
    assert cli(["ingest", tiny_dataset, "--store", store, "-q"]).exit_code == 0
    before = _snapshot(store)
    bad = _bad_dataset(tmp_path / "bad")
    res = cli(["ingest", bad, "--store", store, "-q", "--strict", "--workers", 1])
    assert res.exit_code == EXIT_USAGE
    assert "error" in res.output and "--strict" in res.output
    assert "Traceback" not in res.output
    after = _snapshot(store)
    assert after["ids"][: len(before["ids"])] == before["ids"]


def test_not_a_dataset(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    res = cli(["ingest", tmp_path / "empty", "--store", tmp_path / "s.zarr"])
    assert res.exit_code == EXIT_USAGE and "not the Kaggle layout" in res.output


def test_public_layout(cli, tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "public"
    for i in range(3):
        write_rgby(folder, f"pub{i}", smooth_image(rng, 64))
    (tmp_path / "pub.csv").write_text("ID,Label_idx\npub0,1|2\npub1,18\npub2,0\n")
    store = tmp_path / "s.zarr"
    res = cli(["ingest", folder, "--layout", "public", "--csv", tmp_path / "pub.csv", "--store", store, "-q"])
    assert res.exit_code == 0, res.output
    df = open_store(store, "r").images.df()
    assert list(df["source"]) == ["public"] * 3


def test_kill_minus_nine_then_rerun_gives_the_same_store(tmp_path):
    data = make_kaggle_dataset(tmp_path / "d", n_train=260, n_test=0, size=48, seed=3)
    clean = tmp_path / "clean.zarr"
    killed = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "hpacli.cli.app", "ingest", str(data), "--quiet", "--cache-size", "24", "--workers", "1"]
    env = {**os.environ, "HPA_LOAD_PLUGINS": ""}
    subprocess.run([*cmd, "--store", str(clean)], check=True, env=env, capture_output=True)
    proc = subprocess.Popen([*cmd, "--store", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    killed_mid_way = False
    while time.time() < deadline and proc.poll() is None:
        meta = killed / "images" / "zarr.json"
        try:
            n = json.loads(meta.read_text()).get("attributes", {}).get("n", 0) if meta.exists() else 0
        except ValueError:  # caught while being rewritten
            n = 0
        if 64 <= n <= 192:  # any commit before the last (a heavily loaded machine may miss n == 64)
            proc.send_signal(signal.SIGKILL)
            killed_mid_way = True
            break
        time.sleep(0.01)
    proc.wait()
    assert killed_mid_way, "ingest finished before it could be killed; make the dataset larger"
    partial = open_store(killed, "r").images.n
    assert 0 < partial < 260
    subprocess.run([*cmd, "--store", str(killed)], check=True, env=env, capture_output=True)
    assert _snapshot(killed) == _snapshot(clean)


# ------------------------------------------------------------------ hostile and odd files
def _png_claiming(path: Path, width: int, height: int) -> None:
    """A small valid PNG whose IHDR is patched to claim ``width`` x ``height`` pixels."""
    import struct
    import zlib

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def test_hostile_and_odd_files_are_reported_and_the_rest_ingested(cli, tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "odd"
    rows = []
    grey = (np.arange(48 * 48).reshape(48, 48) % 16).astype(np.uint8)  # palette indices 0..15

    def add(image_id):
        write_rgby(root / "train", image_id, smooth_image(rng, 48))
        rows.append(f"{image_id},0")
        return root / "train" / f"{image_id}_green.png"

    add("good")
    _png_claiming(add("bomb"), 30000, 30000)
    _png_claiming(add("bigish"), 10000, 10000)  # over the limit, under Pillow's hard error
    alpha = np.full((48, 48), 255, np.uint8)
    alpha[0, 0] = 0
    Image.fromarray(np.stack([grey * 10, alpha], axis=-1), mode="LA").save(add("greyalpha"))
    opaque = np.stack([grey * 10, np.full((48, 48), 255, np.uint8)], axis=-1)
    Image.fromarray(opaque, mode="LA").save(add("greyalpha_opaque"))
    pal = Image.fromarray(grey, mode="P")
    pal.putpalette([17 * i for i in range(16) for _ in range(3)])
    pal.save(add("palette"))
    colour = Image.fromarray(grey, mode="P")
    colour.putpalette([v for i in range(16) for v in (17 * i, 0, 255 - 17 * i)])
    colour.save(add("palette_colour"))
    jpeg = add("jpeg")
    Image.fromarray(smooth_image(rng, 48)[0]).save(jpeg, format="JPEG")
    (root / "train.csv").write_text("ID,Label\n" + "\n".join(rows) + "\n")

    store = tmp_path / "s.zarr"
    res = cli(["ingest", root, "--store", store, "-q", "--cache-size", 48])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    st = open_store(store, "r")
    t = st.images
    assert t.ids().tolist() == ["good", "greyalpha_opaque", "palette"]
    problems = {p["ID"]: p["problem"] for p in st.attrs("ingest")["provenance"]["summary"]["problems"]}
    assert set(problems) == {"bomb", "bigish", "greyalpha", "palette_colour", "jpeg"}
    assert "claims 30000x30000 pixels" in problems["bomb"]
    assert "claims 10000x10000 pixels" in problems["bigish"]
    assert "transparent" in problems["greyalpha"]
    assert "colour image" in problems["palette_colour"]
    assert "is a JPEG file, not a PNG" in problems["jpeg"]
    # palette channels are stored as the grey levels their palette gives, not as indices
    i = t.ids().tolist().index("palette")
    np.testing.assert_array_equal(t.read_image(i)[1], grey * 17)
    np.testing.assert_array_equal(t.read_cache(i)[1], grey * 17)
    j = t.ids().tolist().index("greyalpha_opaque")
    np.testing.assert_array_equal(t.read_image(j)[1], grey * 10)


def test_bad_file_with_strict_is_one_line(cli, tmp_path):
    root = tmp_path / "odd"
    write_rgby(root / "train", "bomb", smooth_image(np.random.default_rng(0), 32))
    _png_claiming(root / "train" / "bomb_red.png", 30000, 30000)
    (root / "train.csv").write_text("ID,Label\nbomb,0\n")
    res = cli(["ingest", root, "--store", tmp_path / "s.zarr", "-q", "--strict"])
    assert res.exit_code == EXIT_USAGE and "Traceback" not in res.output
    assert "claims 30000x30000" in " ".join(res.output.split())


# ------------------------------------------------------------------ IDs that would escape their folder
def test_check_image_id():
    from hpacli.errors import InputError
    from hpacli.io.ids import check_image_id, image_id_problem

    for good in ("abc", "10580_1610_C1_1", "5a7e1c8e-bbbb-11e8-b2ba-ac1f6b6435d0", "a.b", "..a", "é" * 50):
        assert check_image_id(good) == good
    for bad, why in (("../../x", "path separator"), ("/abs/x", "path separator"), ("a\\b", "path separator"),
                     ("", "empty"), ("   ", "empty"), ("a\x00b", "control"), ("a\nb", "control"),
                     (".", "relative folder"), ("..", "relative folder"), ("x" * 256, "bytes long"),
                     ("é" * 101, "bytes long"), (" a", "white space"), (3, "not text")):
        assert why in image_id_problem(bad), bad
        with pytest.raises(InputError):
            check_image_id(bad)


# ------------------------------------------------------------------ pixel cache across ingests
def _half_dataset(root: Path, n: int = 10) -> tuple[Path, list[str]]:
    """A dataset whose train.csv lists only the first half of its images (the rest come later)."""
    data = make_kaggle_dataset(root, n_train=n, n_test=0, size=48, seed=4)
    lines = (data / "train.csv").read_text().splitlines()
    (data / "full.csv").write_text("\n".join(lines) + "\n")
    (data / "train.csv").write_text("\n".join(lines[: 1 + n // 2]) + "\n")
    return data, [line.split(",")[0] for line in lines[1:]]


def _expected_cache(data: Path, image_id: str, size: int) -> np.ndarray:
    from hpacli.io.png import channel_paths, read_rgby, resize_rgby

    return resize_rgby(read_rgby(channel_paths(data / "train", image_id)), size)


def test_cache_is_complete_after_ingests_with_and_without_it(cli, tmp_path):
    # without --cache-size first, then with it: the earlier images' rows are filled from their PNGs
    data, ids = _half_dataset(tmp_path / "d")
    store = tmp_path / "s.zarr"
    assert cli(["ingest", data, "--store", store, "-q"]).exit_code == 0
    assert open_store(store, "r").images.cache_size is None
    (data / "train.csv").write_text((data / "full.csv").read_text())
    res = cli(["ingest", data, "--store", store, "-q", "--cache-size", 32])
    assert res.exit_code == 0, res.output
    assert "5 earlier image(s) filled in" in " ".join(res.output.split())
    t = open_store(store, "r").images
    assert t.ids().tolist() == ids and t.cache_complete
    for i, image_id in enumerate(ids):
        np.testing.assert_array_equal(t.read_cache(i), _expected_cache(data, image_id, 32))
        assert t.read_cache(i).max() > 0
    assert open_store(store, "r").attrs("ingest")["provenance"]["summary"]["cache_filled"] == 5


def test_ingest_without_cache_size_keeps_the_stores_cache_complete(cli, tmp_path):
    # the reverse order: new images get cached at the store's size, never a short cache
    data, ids = _half_dataset(tmp_path / "d")
    store = tmp_path / "s.zarr"
    assert cli(["ingest", data, "--store", store, "-q", "--cache-size", 32]).exit_code == 0
    (data / "train.csv").write_text((data / "full.csv").read_text())
    assert cli(["ingest", data, "--store", store, "-q"]).exit_code == 0
    st = open_store(store, "r")
    t = st.images
    assert t.n == 10 and t.cache_complete and st.array("images/cache").shape[0] >= 10
    for i, image_id in enumerate(ids):
        np.testing.assert_array_equal(t.read_cache(i), _expected_cache(data, image_id, 32))


def test_other_cache_size_is_refused_unless_rebuilt(cli, tmp_path):
    data, ids = _half_dataset(tmp_path / "d")
    store = tmp_path / "s.zarr"
    assert cli(["ingest", data, "--store", store, "-q", "--cache-size", 32]).exit_code == 0
    before = _snapshot(store)
    old_id = open_store(store, "r").images.cache_id
    (data / "train.csv").write_text((data / "full.csv").read_text())
    res = cli(["ingest", data, "--store", store, "-q", "--cache-size", 24])
    assert res.exit_code == EXIT_USAGE and "Traceback" not in res.output
    msg = " ".join(res.output.split())
    assert "32px, not 24px" in msg and "--rebuild-cache" in msg
    assert _snapshot(store) == before  # nothing added, cache untouched
    res = cli(["ingest", data, "--store", store, "-q", "--rebuild-cache"])
    assert res.exit_code == EXIT_USAGE and "needs --cache-size" in res.output
    res = cli(["ingest", data, "--store", store, "-q", "--cache-size", 24, "--rebuild-cache"])
    assert res.exit_code == 0, res.output
    t = open_store(store, "r").images
    assert t.cache_size == 24 and t.cache_complete and t.n == 10 and t.cache_id != old_id
    np.testing.assert_array_equal(t.read_cache(0), _expected_cache(data, ids[0], 24))
    # a rebuild at the same size rebuilds too (a new cache id, every row filled again)
    id_24 = t.cache_id
    res = cli(["ingest", data, "--store", store, "-q", "--cache-size", 24, "--rebuild-cache"])
    assert res.exit_code == 0 and "10 earlier image(s) filled in" in " ".join(res.output.split())
    t2 = open_store(store, "r").images
    assert t2.cache_complete and t2.cache_id != id_24


def test_rows_without_marker_are_refused_or_read_from_png(cli, tmp_path):
    # a store whose cache has no markers (written before them, or never filled): no reader
    # takes its zero rows for pixels, and the next ingest fills them
    import shutil

    from hpacli.data.crops import load_pixels
    from hpacli.errors import HpaError, StoreError
    from hpacli.train.data import StoreImageDataset

    data = make_kaggle_dataset(tmp_path / "d", n_train=4, n_test=0, size=48, seed=4)
    store = tmp_path / "s.zarr"
    assert cli(["ingest", data, "--store", store, "-q", "--cache-size", 32]).exit_code == 0
    st = open_store(store, "a")
    st.array("images/cache")[1] = np.zeros((4, 32, 32), np.uint8)
    shutil.rmtree(store / "images" / "cache_ok")  # what a store from before the markers looks like
    t = st.images
    assert not t.cache_present().any() and not t.cache_complete
    with pytest.raises(StoreError, match="no pixels in the store's cache"):
        t.read_cache(1)
    png = t.read_image(1)
    assert load_pixels(st, 1, (32, 32)).max() > 0  # decoded from the PNGs instead
    np.testing.assert_array_equal(load_pixels(st, 1, (48, 48)), png)
    targets = np.zeros((4, 19), np.float32)
    auto = StoreImageDataset(store, np.arange(4), targets, img_size=32, augment=False)
    assert auto.source == "png" and auto.read(1).max() > 0
    with pytest.raises(HpaError, match="4 of the 4 images have no pixels"):
        StoreImageDataset(store, np.arange(4), targets, img_size=32, augment=False, source="cache")
    # ingest again: every row filled (from the PNGs), and a new cache id
    old_id = t.cache_id
    res = cli(["ingest", data, "--store", store, "-q"])
    assert res.exit_code == 0 and "4 earlier image(s) filled in" in " ".join(res.output.split())
    t = open_store(store, "r").images
    assert t.cache_complete and t.cache_id != old_id
    np.testing.assert_array_equal(t.read_cache(1), _expected_cache(data, "train0001", 32))
    ds = StoreImageDataset(store, np.arange(4), targets, img_size=32, augment=False, source="cache")
    assert ds.source == "cache"


# ------------------------------------------------------------------ two ingests at once
def test_two_ingest_processes_at_once_keep_every_image_once(tmp_path):
    # two real processes started together on one store; the datasets share 40 images
    a = make_kaggle_dataset(tmp_path / "a", n_train=150, n_test=0, size=32, seed=1, prefix="a")
    b = make_kaggle_dataset(tmp_path / "b", n_train=150, n_test=0, size=32, seed=2, prefix="b")
    shared = make_kaggle_dataset(tmp_path / "shared", n_train=40, n_test=0, size=32, seed=3, prefix="s")
    for d in (a, b):
        for f in (shared / "train").iterdir():
            (d / "train" / f.name).write_bytes(f.read_bytes())
        rows = (shared / "train.csv").read_text().splitlines()[1:]
        with open(d / "train.csv", "a") as fh:
            fh.write("\n".join(rows) + "\n")
    store = tmp_path / "s.zarr"
    env = {**os.environ, "HPA_LOAD_PLUGINS": ""}
    procs = [
        subprocess.Popen([sys.executable, "-m", "hpacli.cli.app", "ingest", str(d), "--store", str(store),
                          "--quiet", "--workers", "1", "--cache-size", "16"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for d in (a, b)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("Traceback" not in o for o in outs)
    t = open_store(store, "r").images
    ids = t.ids().tolist()
    expected = {f"a{i:04d}" for i in range(150)} | {f"b{i:04d}" for i in range(150)} | {f"s{i:04d}" for i in range(40)}
    assert len(ids) == len(set(ids)) == t.n == 340
    assert set(ids) == expected
    assert t.cache_complete
    paths = np.asarray(open_store(store, "r").array("images/paths")[: t.n])
    assert all(str(p[0]).endswith(f"{i}_red.png") for p, i in zip(paths, ids))
    for i in (0, t.n // 2, t.n - 1):  # each row's cached pixels are its own image's
        image_id = ids[i]
        folder = {"a": a, "b": b, "s": a}[image_id[0]]
        np.testing.assert_array_equal(t.read_cache(i), _expected_cache(folder, image_id, 16))


# ------------------------------------------------------------------ IDs in the CSVs
def test_ids_that_escape_the_dataset_are_skipped_and_nothing_outside_is_read(cli, tmp_path):
    rng = np.random.default_rng(6)
    root = tmp_path / "ds" / "data"
    # images a path escape would reach: outside the dataset, and at an absolute path
    write_rgby(tmp_path / "ds", "x", smooth_image(rng, 32))
    write_rgby(tmp_path / "abs", "y", smooth_image(rng, 32))
    write_rgby(root / "train", "ok", smooth_image(rng, 32))
    write_rgby(root / "test", "ok_test", smooth_image(rng, 32))
    bad_train = ["../../x", f"{tmp_path}/abs/y", "..\\x", "x" * 300]
    (root / "train.csv").write_text("ID,Label\nok,1\n" + "".join(f"{i},0\n" for i in bad_train) + '"",0\n')
    (root / "sample_submission.csv").write_text(
        "ID,ImageWidth,ImageHeight,PredictionString\nok_test,32,32,\n../x,32,32,\n")
    store = tmp_path / "s.zarr"
    res = cli(["ingest", root, "--store", store, "-q"])
    assert res.exit_code == 0, res.output
    st = open_store(store, "r")
    assert sorted(st.images.ids().tolist()) == ["ok", "ok_test"]
    problems = st.attrs("ingest")["provenance"]["summary"]["problems"]
    assert len(problems) == 6
    assert {p["ID"] for p in problems} == {*bad_train, "", "../x"}
    assert all("skipped" in p["problem"] for p in problems)
    # the public layout: same check
    (tmp_path / "pub.csv").write_text("ID,Label_idx\n../../x,1\nok,2\n")
    res = cli(["ingest", root / "train", "--layout", "public", "--csv", tmp_path / "pub.csv",
               "--store", tmp_path / "p.zarr", "-q"])
    assert res.exit_code == 0, res.output
    assert open_store(tmp_path / "p.zarr", "r").images.ids().tolist() == ["ok"]
    assert "path separator" in " ".join(res.output.split())


# ------------------------------------------------------------------ a damaged images table
def test_reingest_refuses_when_ids_read_back_empty(cli, tiny_dataset, tmp_path):
    import shutil

    store = tmp_path / "s.zarr"
    assert cli(["ingest", tiny_dataset, "--store", store, "-q"]).exit_code == 0
    shutil.rmtree(store / "images" / "id" / "c")  # the chunks of images/id are gone
    n_before = open_store(store, "r").images.n
    res = cli(["ingest", tiny_dataset, "--store", store, "-q"])
    assert res.exit_code == EXIT_USAGE and "Traceback" not in res.output
    msg = " ".join(res.output.split())
    # the coverage stamp notices the lost chunks first (stores without one get "read back empty")
    assert "images/id" in msg and ("lost rows" in msg or "read back empty" in msg), msg
    assert open_store(store, "r").images.n == n_before == 15


_CREATE_RACE = """
import multiprocessing as mp, shutil, sys
from hpacli.store import open_store

def go(path, bar, q):
    bar.wait()
    try:
        st = open_store(path, "a")
        q.put("ok" if st.schema_version else "no schema")
    except Exception as exc:
        q.put(f"{type(exc).__name__}: {exc}")

ctx = mp.get_context("fork")
failures = []
for i in range(int(sys.argv[2])):
    path = f"{sys.argv[1]}/s{i}.zarr"
    bar, q = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=go, args=(path, bar, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failures += [r for r in (q.get(), q.get()) if r != "ok"]
print(len(failures), failures[:3])
"""


def test_two_processes_creating_one_store_at_once(tmp_path):
    # two `hpa ingest` on a store that does not exist yet: both must open the same complete store
    # (before: about one start in four failed with zarr's ContainsGroupError)
    env = {**os.environ, "HPA_LOAD_PLUGINS": ""}
    res = subprocess.run([sys.executable, "-c", _CREATE_RACE, str(tmp_path), "20"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("0 "), res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"s{i}.zarr" for i in range(20))  # no leftovers
