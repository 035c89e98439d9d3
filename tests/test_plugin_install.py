"""Installing and updating a plugin as the template's README says, in a fresh virtual
environment that already has hpacli, with no package index (``--no-index``): what
``pipx inject`` and ``pipx inject --force`` run (``pip install`` and ``pip install
--force-reinstall``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "plugins" / "hpa-plugin-example"


def _pip_ok() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("pip")
        have = version("setuptools")
    except PackageNotFoundError as exc:
        return f"needs pip and setuptools in the test environment ({exc})"
    if int(have.split(".")[0]) < 77:
        return f"needs setuptools >= 77 to build the template (have {have})"
    return None


pytestmark = pytest.mark.skipif(_pip_ok() is not None, reason=_pip_ok() or "")


@pytest.fixture
def fresh_env(tmp_path):
    """A new venv (no pip of its own) that sees this environment's packages, hpacli
    included, through a .pth file; the repository first, so it is this hpacli."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_hpa_test_base.pth").write_text(f"{ROOT}\n{sysconfig.get_paths()['purelib']}\n")
    return python


def _copy_template(dest: Path, version: str, dependencies: str, extra_backbone: str | None = None) -> Path:
    """The template under another name (so it cannot be mistaken for the installed example)."""
    shutil.copytree(TEMPLATE, dest, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    (dest / "hpa_plugin_example").rename(dest / "hpa_plugin_updtest")
    toml = (dest / "pyproject.toml").read_text()
    toml = (toml.replace('name = "hpa-plugin-example"', 'name = "hpa-plugin-updtest"')
                .replace('version = "0.1.0"', f'version = "{version}"')
                .replace('example = "hpa_plugin_example"', 'updtest = "hpa_plugin_updtest"')
                .replace('packages = ["hpa_plugin_example"]', 'packages = ["hpa_plugin_updtest"]')
                .replace("dependencies = []", f"dependencies = {dependencies}"))
    assert f'version = "{version}"' in toml and "updtest" in toml and f"dependencies = {dependencies}" in toml
    (dest / "pyproject.toml").write_text(toml)
    init = dest / "hpa_plugin_updtest" / "__init__.py"
    code = init.read_text().replace('"example-tiny-cnn"', '"updtest-tiny-cnn"').replace(
        '"example-knn-mean"', '"updtest-knn-mean"')
    if extra_backbone:
        code += (f"\n\n@hookimpl\ndef register_losses(register):\n"
                 f"    register({extra_backbone!r}, lambda **kw: None, description='added in the update')\n")
    init.write_text(code)
    return dest


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"}
    env.pop("PIP_FIND_LINKS", None)
    env.pop("PIP_EXTRA_INDEX_URL", None)
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
                           "--no-build-isolation", *args], capture_output=True, text=True, env=env)


def _plugins(python: Path) -> dict:
    env = {**os.environ, "HPA_LOAD_PLUGINS": "updtest", "HPA_CACHE_DIR": ""}
    env.pop("PYTHONPATH", None)
    res = subprocess.run([python, "-m", "hpacli.cli.app", "plugins", "--json"], capture_output=True, text=True,
                         env=env, cwd=python.parent)
    assert res.returncode == 0, res.stderr
    return {p["name"]: p for p in json.loads(res.stdout)["plugins"]}


def test_template_installs_and_updates_offline(fresh_env, tmp_path):
    python = fresh_env
    v1 = _copy_template(tmp_path / "v1", "0.1.0", "[]")
    res = _pip(python, str(v1))
    assert res.returncode == 0, res.stdout + res.stderr
    found = _plugins(python)
    assert found["updtest"]["version"] == "0.1.0" and found["updtest"]["package"] == "hpa-plugin-updtest"
    assert "updtest-tiny-cnn" in found["updtest"]["registers"]["backbones"]
    # the update: a new version with a new loss, installed as `pipx inject --force` does
    v2 = _copy_template(tmp_path / "v2", "0.2.0", "[]", extra_backbone="updtest-new-loss")
    res = _pip(python, "--force-reinstall", str(v2))
    assert res.returncode == 0, res.stdout + res.stderr
    found = _plugins(python)
    assert found["updtest"]["version"] == "0.2.0"
    assert found["updtest"]["registers"]["losses"] == ["updtest-new-loss"]


def test_a_plugin_that_declares_hpacli_updates_only_with_no_deps(fresh_env, tmp_path):
    """Why the template declares no hpacli: --force-reinstall reinstalls hpacli too, from an
    index that does not have it. --no-deps (pipx: --pip-args=--no-deps) is the way out."""
    python = fresh_env
    v1 = _copy_template(tmp_path / "v1", "0.1.0", '["hpacli"]')
    res = _pip(python, str(v1))  # hpacli is there already: a plain install is satisfied
    assert res.returncode == 0, res.stdout + res.stderr
    v2 = _copy_template(tmp_path / "v2", "0.2.0", '["hpacli"]')
    res = _pip(python, "--force-reinstall", str(v2))
    assert res.returncode != 0 and "No matching distribution found for hpacli" in res.stdout + res.stderr
    assert _plugins(python)["updtest"]["version"] == "0.1.0"  # the failed update left v1 in place
    res = _pip(python, "--force-reinstall", "--no-deps", str(v2))
    assert res.returncode == 0, res.stdout + res.stderr
    assert _plugins(python)["updtest"]["version"] == "0.2.0"
