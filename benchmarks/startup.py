"""Start-up cost of `hpa`: wall time and peak memory of short commands, against `python -c
pass` and against an earlier revision of hpacli, all measured in the same run.

    python benchmarks/startup.py [--before 6320cbe] [--repeat 5]

Each command runs ``--repeat`` times in a fresh process; the table shows the median wall
time and the peak RSS of the child (``os.wait4``). ``--before REV`` exports that revision
(`git archive`) to a temporary folder and runs the same commands with it first on
``PYTHONPATH``. Two plugin set-ups: the installed ones (e.g. the example plugin), and the
same plus a "heavy" plugin whose module imports torch at the top and adds a command (the
case of issue 18: every call, Tab completion included, paid for torch).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HEAVY = '''
import torch  # noqa: F401  (the mistake the README warns about: a heavy import at the top)
from hpacli import hookimpl


def heavy_hello():
    """A command of a plugin that imports torch at the top."""
    print("hello")


@hookimpl
def register_commands(app):
    app.command(name="heavy-hello")(heavy_hello)
'''


def heavy_site(folder: Path) -> Path:
    site = folder / "heavy-site"
    (site / "heavy_pkg").mkdir(parents=True)
    (site / "heavy_pkg" / "__init__.py").write_text(HEAVY)
    info = site / "heavy_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: heavy-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hpa]\nheavy = heavy_pkg\n")
    (info / "RECORD").write_text("heavy_pkg/__init__.py,,\n")
    return site


def run_once(argv: list[str], env: dict, ok=(0,)) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process; it must exit with a status in ``ok``.
    It runs in an empty folder: `python -m` puts the current folder first on sys.path."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=env["HPA_BENCH_CWD"])
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{err.decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux: KiB


def measure(argv: list[str], env: dict, repeat: int, ok=(0,)) -> tuple[float, float]:
    runs = [run_once(argv, env, ok) for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs)


def export_revision(rev: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "hpacli"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="6320cbe", help="An earlier revision to compare with ('' to skip).")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="hpa-startup-"))
    try:
        trees = {"now": ROOT}
        if args.before:
            trees[f"before ({args.before})"] = export_revision(args.before, tmp / "before")
        heavy = heavy_site(tmp)
        base_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HPA_LOAD_PLUGINS")}
        (tmp / "cwd").mkdir()
        base_env.update(OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", HPA_CACHE_DIR=str(tmp / "cache"),
                        HPA_BENCH_CWD=str(tmp / "cwd"))
        hpa = [sys.executable, "-m", "hpacli.cli.app"]
        complete = {"_HPA_COMPLETE": "complete_bash", "COMP_WORDS": "hpa i", "COMP_CWORD": "1"}
        commands = [  # label, argv, extra env, accepted exit statuses (a missing store: 2 before, 3 now)
            ("hpa --help", [*hpa, "--help"], {}, (0,)),
            ("hpa plugins", [*hpa, "plugins"], {}, (0,)),
            ("hpa info --store missing", [*hpa, "info", "--store", str(tmp / "none.zarr")], {}, (2, 3)),
            ("Tab: hpa i<TAB>", hpa, complete, (0,)),
        ]
        baseline = measure([sys.executable, "-c", "pass"], base_env, args.repeat)
        print(f"baseline `python -c pass`: {baseline[0] * 1000:.0f} ms, {baseline[1]:.0f} MiB peak RSS "
              f"(median of {args.repeat}; {os.cpu_count()} CPUs, shared)\n")
        results: dict[tuple[str, str, str], tuple[float, float]] = {}
        for plugins in ("installed plugins", "+ a plugin importing torch"):
            for tree_name, tree in trees.items():
                path = [str(tree)] + ([str(heavy)] if plugins.startswith("+") else [])
                env = {**base_env, "PYTHONPATH": os.pathsep.join(path)}
                if plugins.startswith("+"):  # the cache is filled by the first listing, as for a user
                    run_once([*hpa, "--help"], env)
                for label, argv, extra, ok in commands:
                    results[(plugins, label, tree_name)] = measure(argv, {**env, **extra}, args.repeat, ok)
        names = list(trees)
        head = f"{'plugins':<28}{'command':<27}" + "".join(f"{n[:24]:>26}" for n in names)
        if len(names) == 2:
            head += f"{'before/now':>12}"
        print(head)
        for plugins in ("installed plugins", "+ a plugin importing torch"):
            for label, *_ in commands:
                row = f"{plugins:<28}{label:<27}"
                for n in names:
                    wall, rss = results[(plugins, label, n)]
                    row += f"{f'{wall:.2f} s ({wall / baseline[0]:.0f}x) {rss:.0f} MiB':>26}"
                if len(names) == 2:
                    row += f"{results[(plugins, label, names[1])][0] / results[(plugins, label, names[0])][0]:>11.1f}x"
                print(row)
        print("\n(Nx) = wall time / `python -c pass`; before/now = wall time of the earlier revision / now.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
