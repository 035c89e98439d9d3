"""The CLI shell: version, grouped help, errors as messages."""

from __future__ import annotations

import subprocess
import sys


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
    assert res.exit_code == 2
    assert "no store at" in res.output and "Traceback" not in res.output


def test_info_shows_counts_and_stages(cli, tiny_dataset, tmp_path):
    store = tmp_path / "s.zarr"
    assert cli(["ingest", tiny_dataset, "--store", store, "-q"]).exit_code == 0
    res = cli(["info", "--store", store])
    assert res.exit_code == 0
    out = res.output
    assert "images" in out and "15" in out and "ingest" in out and "done" in out
