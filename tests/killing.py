"""Kill a stage with SIGKILL at a chosen moment, in a real process.

A moment is the n-th *event* of the run: a write of array data, an attribute update, an
array created or deleted, a file saved with ``torch.save`` (checkpoints) or an optimizer
step. :func:`counting` counts the events of an uninterrupted run in this process; the
child process started by :func:`run_killed` counts the same events and kills itself with
``SIGKILL`` just before the n-th one (no ``finally``, no ``atexit``: a real kill -9).
The stage is the same Python code in both, given as a string run with ``STORE`` (the
store's path) and ``OUT`` (a folder) defined.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys
sys.path.insert(0, {root!r})
from tests.killing import install
install({kill_at}, {threads}, {with_torch})
STORE, OUT = {store!r}, {out!r}
exec(compile({code!r}, "<stage>", "exec"), {{"STORE": STORE, "OUT": OUT, "__name__": "__stage__"}})
"""


class Counter:
    def __init__(self, kill_at: int = 0) -> None:
        self.kill_at = int(kill_at)
        self.n = 0

    def tick(self) -> None:
        self.n += 1
        if self.kill_at and self.n >= self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def _patches(counter: Counter, with_torch: bool = True):
    """(owner, name, replacement) for every counted event (torch's only ``with_torch``:
    importing torch takes seconds, and stages without it have no such events)."""
    from zarr.core.array import AsyncArray

    from hpacli.store.core import Store

    out = []
    orig_set = AsyncArray._set_selection

    async def set_selection(self, *a, **k):
        counter.tick()
        return await orig_set(self, *a, **k)

    out.append((AsyncArray, "_set_selection", set_selection))
    for name in ("update_attrs", "delete", "_create_array_locked"):
        orig = getattr(Store, name)

        def wrapped(self, *a, _orig=orig, **k):
            counter.tick()
            return _orig(self, *a, **k)

        out.append((Store, name, wrapped))
    if not with_torch:
        return out
    try:
        import torch
    except ImportError:  # pragma: no cover
        return out
    orig_save = torch.save

    def save(*a, **k):
        counter.tick()
        return orig_save(*a, **k)

    out.append((torch, "save", save))
    return out


_step_hooks: list = []


def _hook_steps(counter: Counter):
    try:
        from torch.optim.optimizer import register_optimizer_step_post_hook
    except ImportError:  # pragma: no cover
        return None
    return register_optimizer_step_post_hook(lambda *a, **k: counter.tick())


def install(kill_at: int, threads: int = 0, with_torch: bool = True) -> Counter:
    """In the child: count events from now on and SIGKILL this process at ``kill_at``
    (torch with ``threads`` threads, as the parent: the same float sums)."""
    counter = Counter(kill_at)
    for owner, name, fn in _patches(counter, with_torch):
        setattr(owner, name, fn)
    if not with_torch:
        return counter
    _hook_steps(counter)
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover
        pass
    return counter


@contextmanager
def counting():
    """Count the events of code run inside the block (in this process; nothing is killed)."""
    counter = Counter(0)
    saved = []
    for owner, name, fn in _patches(counter):
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, fn)
    handle = _hook_steps(counter)
    try:
        yield counter
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
        if handle is not None:
            handle.remove()


def run_stage(code: str, store: Path, out: Path) -> None:
    """Run the stage's code in this process."""
    exec(compile(code, "<stage>", "exec"), {"STORE": str(store), "OUT": str(out), "__name__": "__stage__"})


def run_killed(code: str, store: Path, out: Path, kill_at: int, with_torch: bool = True,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the stage in a new process that SIGKILLs itself before its ``kill_at``-th event."""
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else 0
    script = CHILD.format(root=str(ROOT), kill_at=int(kill_at), threads=threads, with_torch=bool(with_torch),
                          store=str(store), out=str(out), code=code)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
