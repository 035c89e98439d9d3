"""Packaging: the wheel builds without setuptools deprecation warnings, carries an SPDX
licence, and pins the torch/torchvision pair the README and scripts/setup-env.sh install."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setuptools_major() -> int:
    try:
        return int(version("setuptools").split(".")[0])
    except PackageNotFoundError:
        return 0


def _pins() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[<>=!~ ]", d, maxsplit=1)[0]: d for d in deps}


@pytest.mark.skipif(_setuptools_major() < 77, reason="needs setuptools >= 77 (SPDX licence) to build without isolation")
def test_wheel_builds_without_deprecation_warnings(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "hpacli", src / "hpacli", ignore=shutil.ignore_patterns("__pycache__"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                          "--no-index", "-v", "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert not re.search(r"deprecat|BuildBackendWarning", log, re.IGNORECASE), \
        [ln for ln in log.splitlines() if re.search("deprecat|Warning", ln, re.IGNORECASE)][:10]
    (wheel,) = (tmp_path / "dist").glob("hpacli-*.whl")
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in z.namelist())
        assert any(n.endswith("hpacli/review/page.html") or n.endswith(".html") for n in z.namelist())
    assert "License-Expression: MIT" in meta
    assert "Requires-Dist: torch<2.15,>=2.14.1" in meta and "Requires-Dist: torchvision<0.30,>=0.29.1" in meta
    assert "Provides-Extra: parquet" in meta and "Requires-Dist: pyarrow" in meta


def test_documented_and_scripted_torch_is_the_pinned_one():
    """README's install commands and scripts/setup-env.sh install the pair pyproject admits,
    and the environment the tests run in has it."""
    from packaging.requirements import Requirement

    pins = {name: Requirement(spec) for name, spec in _pins().items() if name in ("torch", "torchvision")}
    readme = (ROOT / "README.md").read_text()
    setup = (ROOT / "scripts" / "setup-env.sh").read_text()
    for name, req in pins.items():
        documented = set(re.findall(rf"{name}==([0-9][0-9.]*[0-9])", readme))
        scripted = set(re.findall(rf"{name}==([0-9][0-9.]*[0-9])", setup))
        assert documented and scripted, name
        assert all(req.specifier.contains(v) for v in documented | scripted), (name, documented, scripted)
        assert req.specifier.contains(version(name).split("+")[0]), (name, version(name))
