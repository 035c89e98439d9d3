"""The store: round trip, schema checks, concurrent shard writers, resumable work."""

from __future__ import annotations

import json
import multiprocessing as mp

import numpy as np
import pytest

from hpacli.errors import HpaError, StoreError, StoreVersionError
from hpacli.store import BlockWork, Shard, begin_stage, open_store, parse_shard, stage_records


def test_round_trip_and_encoding_stamp(tmp_path):
    st = open_store(tmp_path / "s.zarr", "a")
    arr = st.create_array("grp/x", (10, 3), "float32", (4, 3), encoding="test-x")
    data = np.arange(30, dtype=np.float32).reshape(10, 3)
    arr[:] = data
    st2 = open_store(tmp_path / "s.zarr", "r")
    np.testing.assert_array_equal(st2.array("grp/x")[:], data)
    attrs = st2.attrs("grp/x")
    assert attrs["encoding"] == "test-x" and attrs["encoding_version"] == 1
    assert st2.schema_version == 1
    with pytest.raises(StoreError, match="read-only"):
        st2.create_array("grp/y", (1,), "int8", (1,), encoding="e")


def test_string_arrays(tmp_path):
    st = open_store(tmp_path / "s.zarr", "a")
    arr = st.create_array("names", (3,), str, (2,), encoding="utf8-string")
    arr[:] = np.array(["a", "bé", "c"], dtype=object)
    assert list(np.asarray(st.array("names")[:])) == ["a", "bé", "c"]


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    open_store(path, "a")
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["hpacli"]["schema_version"] = 99
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreVersionError, match="schema 99.*Upgrade hpacli"):
        open_store(path, "r")


def test_not_a_store(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "file.txt").write_text("x")
    with pytest.raises(StoreError, match="not an hpacli store"):
        open_store(tmp_path / "folder", "r")
    with pytest.raises(StoreError, match="not empty"):
        open_store(tmp_path / "folder", "a")
    with pytest.raises(StoreError, match="no store"):
        open_store(tmp_path / "missing", "r")


def test_ensure_array_grows_and_checks(tmp_path):
    st = open_store(tmp_path / "s.zarr", "a")
    st.ensure_array("a", (5, 2), "int32", (4, 2), encoding="e")
    arr = st.ensure_array("a", (9, 2), "int32", (4, 2), encoding="e")
    assert arr.shape == (9, 2)
    with pytest.raises(StoreError, match="exists with dtype"):
        st.ensure_array("a", (9, 2), "float32", (4, 2), encoding="e")


def test_parse_shard():
    assert parse_shard("1/4") == Shard(1, 4)
    assert parse_shard(None) == Shard(0, 1)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(HpaError):
            parse_shard(bad)


def _shard_writer(path: str, index: int, count: int) -> None:
    st = open_store(path, "a")
    n = 1000
    arr = st.ensure_array("out/values", (n,), "int64", (50,), encoding="test", fill_value=-1)
    work = BlockWork(st, "out", n, 100)
    for block in work.todo(Shard(index, count)):
        arr[block.start : block.stop] = np.arange(block.start, block.stop) * 3
        work.mark_done(block)


def test_two_processes_write_disjoint_shards(tmp_path):
    path = str(tmp_path / "s.zarr")
    open_store(path, "a")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_shard_writer, args=(path, i, 2)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    st = open_store(path, "r")
    np.testing.assert_array_equal(st.array("out/values")[:], np.arange(1000) * 3)
    work = BlockWork(st, "out", 1000, 100)
    assert work.all_done() and work.n_done == 10


def test_block_work_resumes_only_missing_blocks(tmp_path):
    st = open_store(tmp_path / "s.zarr", "a")
    work = BlockWork(st, "job", 25, 10)
    assert [b.index for b in work.todo()] == [0, 1, 2]
    assert len(work.block(2)) == 5
    work.mark_done(1)
    again = BlockWork(st, "job", 25, 10)
    assert [b.index for b in again.todo()] == [0, 2]
    assert [b.index for b in again.todo(Shard(1, 2))] == []
    with pytest.raises(HpaError, match="blocks of 10"):
        BlockWork(st, "job", 25, 5)


def test_stage_provenance(tmp_path):
    st = open_store(tmp_path / "s.zarr", "a")
    run = begin_stage(st, "stage_a", "stage-a", {"alpha": 1, "path": tmp_path})
    assert stage_records(st)["stage_a"]["status"] == "running"
    run.finish(n=3)
    rec = stage_records(st)["stage_a"]
    assert rec["status"] == "done" and rec["params"]["alpha"] == 1 and rec["summary"] == {"n": 3}
    assert rec["started"] and rec["finished"] and rec["hpacli_version"]


def test_a_result_set_started_with_other_blocks_reports_its_own(tmp_path):
    """While a run is under way its done markers exist before the group's attributes name
    the block size; the set's status must read the markers' block size, not the default
    (seen: `hpa pseudolabel --block-size 8` refused as "started with blocks of 8")."""
    from hpacli.store.cellresults import Column, Kind

    kind = Kind("results", (Column("p", "float32", "test-probs", (3,), float("nan")),), "test-results", 1024,
                "results", "sets", "make it")
    st = open_store(tmp_path / "s.zarr", "a")
    kind.results(st, "r", block=8).ensure_columns(25)  # a run started with blocks of 8, no attributes yet
    status = kind.status(st, "r")
    assert status["blocks"] == 4 and status["blocks_done"] == 0 and not status["complete"]
    kind.results(st, "r", block=8).ensure(25, {})
    assert kind.status(st, "r")["blocks"] == 4
