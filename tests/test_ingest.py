"""hpa ingest: registering datasets, bad inputs reported without harming the store,
and a kill -9 in the middle followed by a rerun giving the same store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
    assert res.exit_code == 2
    assert "error" in res.output and "--strict" in res.output
    assert "Traceback" not in res.output
    after = _snapshot(store)
    assert after["ids"][: len(before["ids"])] == before["ids"]


def test_not_a_dataset(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    res = cli(["ingest", tmp_path / "empty", "--store", tmp_path / "s.zarr"])
    assert res.exit_code == 2 and "not the Kaggle layout" in res.output


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
        if meta.exists() and '"n": 64' in meta.read_text().replace('"n":64', '"n": 64'):
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
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "claims 30000x30000" in " ".join(res.output.split())


# ------------------------------------------------------------------ IDs that would escape their folder
def test_check_image_id():
    from hpacli.data.ids import check_image_id, image_id_problem
    from hpacli.errors import InputError

    for good in ("abc", "10580_1610_C1_1", "5a7e1c8e-bbbb-11e8-b2ba-ac1f6b6435d0", "a.b", "..a", "é" * 50):
        assert check_image_id(good) == good
    for bad, why in (("../../x", "path separator"), ("/abs/x", "path separator"), ("a\\b", "path separator"),
                     ("", "empty"), ("   ", "empty"), ("a\x00b", "control"), ("a\nb", "control"),
                     (".", "relative folder"), ("..", "relative folder"), ("x" * 256, "bytes long"),
                     ("é" * 101, "bytes long"), (" a", "white space"), (3, "not text")):
        assert why in image_id_problem(bad), bad
        with pytest.raises(InputError):
            check_image_id(bad)
