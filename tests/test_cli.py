"""The CLI shell: version, grouped help, errors as messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hpacli.errors import EXIT_USAGE


def test_version(cli):
    res = cli(["--version"])
    assert res.exit_code == 0 and res.output.startswith("hpa (hpacli) ")


def test_help_has_panels(cli):
    res = cli(["--help"])
    assert res.exit_code == 0
    for panel in ("Data", "Tools"):
        assert panel in res.output
    assert "ingest" in res.output and "plugins" in res.output


def test_help_does_not_import_torch():
    code = "import sys; from hpacli.cli.app import build_app; build_app(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_store_is_a_message(cli, tmp_path):
    res = cli(["info", "--store", tmp_path / "nope.zarr"])
    assert res.exit_code == EXIT_USAGE
    assert "no store at" in res.output and "Traceback" not in res.output


def test_info_shows_counts_and_stages(cli, tiny_dataset, tmp_path):
    store = tmp_path / "s.zarr"
    assert cli(["ingest", tiny_dataset, "--store", store, "-q"]).exit_code == 0
    res = cli(["info", "--store", store])
    assert res.exit_code == 0
    out = res.output
    assert "images" in out and "15" in out and "ingest" in out and "done" in out


def test_info_goes_to_stdout_and_as_json(cli, tiny_dataset, tmp_path):
    """`hpa info > f` holds the tables; `--json` the same content as data."""
    import json

    store = tmp_path / "s.zarr"
    assert cli(["ingest", tiny_dataset, "--store", store, "-q"]).exit_code == 0
    res = cli(["info", "--store", store])
    assert res.exit_code == 0 and "ingest" in res.stdout and "on disk" in res.stdout and res.stderr == ""
    res = cli(["info", "--store", store, "--json"])
    assert res.exit_code == 0 and res.stderr == ""
    data = json.loads(res.stdout)
    assert data["store"] == str(store.resolve()) or data["store"] == str(store)
    assert data["counts"]["images"] == 15 and data["counts"]["images_by_split"] == {"test": 3, "train": 12}
    assert data["stages"]["ingest"]["status"] == "done" and data["bytes"] > 0 and data["files"] > 0


def test_exit_statuses_refused_2_failed_while_working_3_and_documented(cli, tmp_path):
    """Usage errors and refusals of bad input exit 2 (nothing changed); an error that ends a
    stage's work exits 3 and the stage is recorded as failed."""
    from hpacli.errors import EXIT_RUNTIME, EXIT_USAGE, HpaError
    from hpacli.store import begin_stage, open_store
    from hpacli.store.stages import stage_records

    assert (EXIT_USAGE, EXIT_RUNTIME) == (2, 3)
    res = cli(["info", "--no-such-option"])
    assert res.exit_code == EXIT_USAGE and "No such option" in res.output
    res = cli(["info", "--store", tmp_path / "nope.zarr"])
    assert res.exit_code == EXIT_USAGE and res.output.startswith("error: ")
    # an HpaError inside a running stage: recorded failed, and marked as a runtime failure
    st = open_store(tmp_path / "s.zarr", "a")
    err = HpaError("fold 1 has too few cells")
    try:
        with begin_stage(st, "work", "demo-stage", {}):
            raise err
    except HpaError:
        pass
    assert err.exit_code == EXIT_RUNTIME
    assert stage_records(st)["work"]["status"] == "failed"
    from hpacli.cli.errors import exit_code_for

    assert exit_code_for(err) == EXIT_RUNTIME and exit_code_for(HpaError("bad value")) == EXIT_USAGE
    assert exit_code_for(OSError(28, "No space left on device")) == EXIT_RUNTIME
    assert exit_code_for(IsADirectoryError(21, "Is a directory", "x")) == EXIT_USAGE
    help_text = " ".join(cli(["--help"]).stdout.split())
    assert "Exit status: 0 done; 1 a check found problems" in help_text
    assert "2 refused before anything changed" in help_text and "3 a stage failed while working" in help_text


def test_doctor_reports_versions_devices_and_plugins(cli, monkeypatch):
    import importlib.metadata as md
    import json

    res = cli(["doctor", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    import torch

    assert r["hpacli"]["version"] and r["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert r["torch"]["ok"] and r["torch"]["version"] == torch.__version__
    assert r["torch"]["cuda"] == torch.version.cuda and r["torch"]["threads"] >= 1
    assert len(r["torch"]["cuda_devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    for name in ("torch", "timm", "zarr", "numpy"):
        assert r["packages"][name] == md.version(name)
    assert r["timm"]["ok"] and r["cpu"]["usable"] >= 1
    eps = {ep.name for ep in md.entry_points(group="hpa")}
    assert {p["name"] for p in r["plugins"]} == eps
    assert all(p["status"] == "loaded" for p in r["plugins"] if p["package"] == "hpa-plugin-example")
    monkeypatch.setattr("hpacli.doctor.environment_report", lambda **kw: r)  # the same report, as tables
    text = cli(["doctor"])
    assert text.exit_code == 0 and "devices" in text.stdout and "installed packages" in text.stdout
    assert torch.__version__ in text.stdout and r["packages"]["zarr"] in text.stdout


def test_doctor_survives_a_missing_or_broken_torch(tmp_path):
    """The report is for bug reports: a torch that does not import is reported, not fatal."""
    import json
    import os

    root = Path(__file__).resolve().parents[1]
    for name, init in (("broken", "raise OSError('libtorch_cpu.so: cannot open shared object file')\n"),
                       ("crash", "import os\nos.abort()\n")):
        fake = tmp_path / name / "torch"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text(init)
        env = {**os.environ, "PYTHONPATH": f"{fake.parent}{os.pathsep}{root}", "HPA_LOAD_PLUGINS": ""}
        res = subprocess.run([sys.executable, "-m", "hpacli.cli.app", "doctor", "--json"], capture_output=True,
                             text=True, env=env)
        assert res.returncode == 0, res.stderr
        r = json.loads(res.stdout)
        assert r["torch"]["ok"] is False
        if name == "broken":
            assert "cannot open shared object file" in r["torch"]["error"]
            assert r["timm"]["ok"] is False  # timm needs torch
        else:
            assert "crashed (signal SIGABRT)" in r["torch"]["error"]
        assert r["packages"]["numpy"]  # the rest of the report is there
        text = subprocess.run([sys.executable, "-m", "hpacli.cli.app", "doctor"], capture_output=True, text=True,
                              env=env)
        assert text.returncode == 0 and "import failed" in text.stdout and "Traceback" not in text.stderr
