"""Start-up cost: built-in commands import no plugin, `hpa plugins` imports neither torch nor
timm, `hpa --help` and Tab completion list plugin commands from a cache keyed by the
plugin's installed files, and running a plugin command imports it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hpacli.errors import EXIT_USAGE

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
import os
with open(os.environ["SLOW_MARK"], "a") as f:
    f.write("imported\\n")
from hpacli import hookimpl


def hello(name: str = "you"):
    """Say hello (a plugin command)."""
    print(f"hello {name}")


def bye():
    """Say goodbye (no help panel given)."""
    print("bye")


@hookimpl
def register_commands(app):
    app.command(name="slow-hello", rich_help_panel="Tools")(hello)
    app.command(name="slow-bye")(bye)


@hookimpl
def register_denoisers(register):
    register("slow-denoiser", lambda **kw: None, description="from the slow plugin")
'''


def _site(tmp_path: Path, record: str = "slow_pkg/__init__.py,,\n") -> Path:
    """An installed-looking plugin distribution whose import is recorded in a file."""
    site = tmp_path / "site"
    (site / "slow_pkg").mkdir(parents=True, exist_ok=True)
    (site / "slow_pkg" / "__init__.py").write_text(PLUGIN)
    info = site / "slow_pkg-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slow-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hpa]\nslow = slow_pkg\n")
    (info / "RECORD").write_text(record)
    return site


def _hpa(tmp_path: Path, *args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{ROOT}", "SLOW_MARK": str(tmp_path / "mark"),
           "HPA_CACHE_DIR": str(tmp_path / "cache"), "HPA_LOAD_PLUGINS": "slow", **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "hpacli.cli.app", *args], capture_output=True, text=True, env=env)


def _imports(tmp_path: Path) -> int:
    mark = tmp_path / "mark"
    return len(mark.read_text().splitlines()) if mark.exists() else 0


def test_builtin_commands_do_not_import_plugins(tmp_path):
    _site(tmp_path)
    res = _hpa(tmp_path, "info", "--store", str(tmp_path / "nope.zarr"))
    assert res.returncode == EXIT_USAGE and "no store" in res.stderr
    assert _imports(tmp_path) == 0


def test_help_lists_plugin_commands_from_a_cache_and_running_one_imports_it(tmp_path):
    _site(tmp_path)
    res = _hpa(tmp_path, "--help")
    assert res.returncode == 0 and "slow-hello" in res.stdout and "a plugin command" in res.stdout
    assert _imports(tmp_path) == 1  # nothing cached yet: imported once, then remembered
    cached = list((tmp_path / "cache").glob("plugin-commands-*.json"))
    assert len(cached) == 1
    entry = json.loads(cached[0].read_text())["plugins"]["slow"]
    assert [c["name"] for c in entry["commands"]] == ["slow-hello", "slow-bye"]
    assert [c["panel"] for c in entry["commands"]] == ["Tools", None]
    first = res.stdout
    res = _hpa(tmp_path, "--help")
    assert res.returncode == 0 and res.stdout == first  # the same help, panels included
    assert _imports(tmp_path) == 1  # listed from the cache
    # Tab completion of a command name: from the cache too
    res = _hpa(tmp_path, extra_env={"_HPA_COMPLETE": "complete_bash", "COMP_WORDS": "hpa slow", "COMP_CWORD": "1"})
    assert res.returncode == 0 and res.stdout.split() == ["slow-hello", "slow-bye"], res.stdout + res.stderr
    assert _imports(tmp_path) == 1
    # running it (or its --help) imports the plugin
    res = _hpa(tmp_path, "slow-hello", "--name", "x")
    assert res.returncode == 0 and res.stdout.strip() == "hello x", res.stderr
    assert _imports(tmp_path) == 2
    res = _hpa(tmp_path, "slow-hello", "--help")
    assert res.returncode == 0 and "--name" in res.stdout
    assert _imports(tmp_path) == 3


def test_an_updated_plugin_is_listed_afresh(tmp_path):
    _site(tmp_path)
    assert _hpa(tmp_path, "--help").returncode == 0 and _imports(tmp_path) == 1
    # an update rewrites RECORD (other files, other hashes): the cache entry no longer fits
    _site(tmp_path, record="slow_pkg/__init__.py,sha256=abc,123\n")
    (tmp_path / "site" / "slow_pkg" / "__init__.py").write_text(PLUGIN.replace("slow-hello", "slow-hi"))
    res = _hpa(tmp_path, "--help")
    assert "slow-hi" in res.stdout and "slow-hello" not in res.stdout
    assert _imports(tmp_path) == 2


def test_cache_off_and_broken_cache(tmp_path):
    _site(tmp_path)
    for _ in range(2):
        assert "slow-hello" in _hpa(tmp_path, "--help", extra_env={"HPA_CACHE_DIR": ""}).stdout
    assert _imports(tmp_path) == 2 and not (tmp_path / "cache").exists()
    (tmp_path / "cache").mkdir()
    assert _hpa(tmp_path, "--help").returncode == 0
    for f in (tmp_path / "cache").glob("*.json"):
        f.write_text("{not json")
    res = _hpa(tmp_path, "--help")
    assert res.returncode == 0 and "slow-hello" in res.stdout and "Traceback" not in res.stderr
    # valid JSON with odd values (a hand-edited file): still a listing, never a traceback
    for f in (tmp_path / "cache").glob("*.json"):
        data = json.loads(f.read_text())
        data["plugins"]["slow"]["commands"][0].update(help=5, panel=["x"], hidden="yes")
        f.write_text(json.dumps(data))
    res = _hpa(tmp_path, "--help")
    assert res.returncode == 0 and "slow-hello" in res.stdout and "Traceback" not in res.stderr


def test_plugin_command_clashing_with_a_builtin_is_reported(tmp_path):
    _site(tmp_path)
    code = (tmp_path / "site" / "slow_pkg" / "__init__.py").read_text().replace('"slow-hello"', '"info"')
    (tmp_path / "site" / "slow_pkg" / "__init__.py").write_text(code)
    res = _hpa(tmp_path, "--help")
    assert res.returncode == 0 and "clashes with hpa's own 'info'" in res.stderr
    assert "Show a store's images" in res.stdout  # the built-in stays


def test_plugins_command_imports_neither_torch_nor_timm(tmp_path):
    """`hpa plugins` used to import torch to count timm's names (8-11 s, 830 MB)."""
    _site(tmp_path)
    code = (
        "import sys\n"
        "from typer.main import get_command\n"
        "from hpacli.cli.app import build_app\n"
        "get_command(build_app()).main(['plugins', '--json'], prog_name='hpa', standalone_mode=False)\n"
        "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules), file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{ROOT}", "SLOW_MARK": str(tmp_path / "mark"),
           "HPA_CACHE_DIR": str(tmp_path / "cache"), "HPA_LOAD_PLUGINS": "slow"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip().splitlines()[-1] == "[]", res.stderr
    data = json.loads(res.stdout)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["hpacli.builtin.backbones"]["registers"]["backbone_families"] == ["timm: every timm model name"]
    assert by_name["slow"]["registers"]["commands"] == ["slow-hello", "slow-bye"]
    assert by_name["slow"]["registers"]["denoisers"] == ["slow-denoiser"]
    assert by_name["slow"]["import_seconds"] >= 0 and by_name["slow"]["package"] == "slow-pkg"
