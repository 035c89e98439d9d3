"""What ``hpa doctor`` reports for a bug report: versions, devices, plugins.

Everything that imports a heavy or possibly broken library (torch, torchvision, timm,
the plugins) runs in a child Python process with a time limit, so a missing, broken or
crashing torch is reported instead of stopping the report. Versions of installed
distributions come from their metadata, without importing them.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

# the distributions whose versions a bug report needs (import name differs for some)
PACKAGES: tuple[str, ...] = (
    "torch", "torchvision", "timm", "numpy", "zarr", "numcodecs", "pandas", "scipy", "scikit-image",
    "pycocotools", "faiss-cpu", "imagehash", "tifffile", "iterative-stratification", "pluggy", "typer",
    "rich", "pyarrow", "pillow",
)
ENV_VARS: tuple[str, ...] = (
    "HPA_LOAD_PLUGINS", "HPA_STORE", "HPA_CACHE_DIR", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY", "HF_HUB_OFFLINE", "PYTORCH_ENABLE_MPS_FALLBACK",
)
PROBE_TIMEOUT_S = 180.0

# runs in the child: prints one JSON object on its last line
_PROBE = r'''
import json, os, sys, traceback
os.environ.setdefault("HF_HUB_OFFLINE", "1")
out = {}
def err(exc):
    return f"{type(exc).__name__}: {exc}".strip()
try:
    import torch
    t = {"ok": True, "version": torch.__version__, "cuda": torch.version.cuda,
         "hip": getattr(torch.version, "hip", None), "threads": torch.get_num_threads(),
         "interop_threads": torch.get_num_interop_threads()}
    try:
        v = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        if v:  # 92400 -> 9.24.0 (cuDNN >= 9), 8902 -> 8.9.2
            base = 10000 if v >= 90000 else 1000
            v = f"{v // base}.{(v % base) // 100}.{v % 100}"
        t["cudnn"] = v
    except Exception as exc:
        t["cudnn"] = None
    devices = []
    try:
        t["cuda_available"] = bool(torch.cuda.is_available())
        if t["cuda_available"]:
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                devices.append({"index": i, "name": p.name, "memory_bytes": int(p.total_memory),
                                "capability": f"{p.major}.{p.minor}"})
    except Exception as exc:
        t["cuda_available"] = False
        t["cuda_error"] = err(exc)
    t["cuda_devices"] = devices
    try:
        mps = getattr(torch.backends, "mps", None)
        t["mps_available"] = bool(mps is not None and mps.is_available())
    except Exception:
        t["mps_available"] = False
    out["torch"] = t
except BaseException as exc:
    out["torch"] = {"ok": False, "error": err(exc)}
for name in ("torchvision", "timm"):
    try:
        mod = __import__(name)
        out[name] = {"ok": True, "version": getattr(mod, "__version__", "?")}
    except BaseException as exc:
        out[name] = {"ok": False, "error": err(exc)}
try:
    from hpacli.pm import get_manager
    m = get_manager()
    out["plugins"] = {
        "loaded": [{"name": n, "package": i.package, "version": i.version, "import_seconds": round(i.seconds, 3)}
                   for n, i in m.info.items() if not i.builtin],
        "failed": [{"name": e.name, "package": e.package, "error": e.message} for e in m.load_errors],
    }
except BaseException as exc:
    out["plugins"] = {"error": err(exc)}
sys.stdout.flush()
print("\n" + json.dumps(out))
'''


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _probe(timeout: float) -> tuple[dict, str | None]:
    """Run the import probe in a child; (its report, why it failed or None)."""
    try:
        res = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {}, f"the import probe took over {timeout:.0f} s and was stopped"
    except OSError as exc:
        return {}, f"could not start {sys.executable}: {exc}"
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    if lines:
        try:
            return json.loads(lines[-1]), None
        except ValueError:
            pass
    if res.returncode < 0:
        import signal

        try:
            name = signal.Signals(-res.returncode).name
        except ValueError:
            name = str(-res.returncode)
        why = f"the import probe crashed (signal {name})"
    else:
        why = f"the import probe exited with status {res.returncode}"
    tail = [ln for ln in res.stderr.splitlines() if ln.strip()][-1:]
    return {}, why + (f": {tail[0]}" if tail else "")


def environment_report(timeout: float = PROBE_TIMEOUT_S) -> dict:
    """Versions of hpacli, Python and the libraries; torch's build, threads and devices;
    the plugins; the environment variables hpa reads. Never raises for a broken torch."""
    from . import __version__
    from .pm import discover, package_of

    probe, probe_error = _probe(timeout)
    torch = probe.get("torch") or {"ok": False, "error": probe_error or "not probed"}
    if not torch.get("ok") and probe_error and "crashed" in probe_error:
        torch["error"] = probe_error
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    entry_points = []
    for ep in discover():
        package, version = package_of(ep)
        entry_points.append({"name": ep.name, "package": package, "version": version, "module": ep.value})
    plugins = probe.get("plugins") or {}
    failed = {p["name"]: p["error"] for p in plugins.get("failed", []) if isinstance(p, dict)}
    loaded = {p["name"]: p for p in plugins.get("loaded", []) if isinstance(p, dict)}
    for ep in entry_points:
        if ep["name"] in loaded:
            ep["status"] = "loaded"
            ep["import_seconds"] = loaded[ep["name"]].get("import_seconds")
        elif ep["name"] in failed:
            ep["status"] = f"failed: {failed[ep['name']]}"
        else:
            ep["status"] = "not checked" if probe_error or "error" in plugins else "not loaded"
    return {
        "hpacli": {"version": __version__, "location": os.path.dirname(os.path.abspath(__file__))},
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable, "prefix": sys.prefix},
        "platform": {"system": platform.system(), "release": platform.release(), "machine": platform.machine(),
                     "libc": " ".join(platform.libc_ver()).strip() or None},
        "packages": {name: _version(name) for name in PACKAGES},
        "torch": torch,
        "torchvision": probe.get("torchvision") or {"ok": False, "error": probe_error or "not probed"},
        "timm": probe.get("timm") or {"ok": False, "error": probe_error or "not probed"},
        "cpu": {"count": os.cpu_count(), "usable": usable},
        "plugins": entry_points,
        "plugin_errors": plugins.get("error"),
        "probe_error": probe_error,
        "environment": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
    }
