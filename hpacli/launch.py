"""What the launcher says about this process: torchrun, a SLURM job array, srun.

hpacli has no launcher of its own. A stage split across processes (``--shard``) learns
its part from the engine that started it:

* ``torchrun`` sets ``RANK`` / ``WORLD_SIZE`` (and ``LOCAL_RANK``, the process's GPU on its
  machine);
* a SLURM job array (``sbatch --array=0-7``) sets ``SLURM_ARRAY_TASK_ID`` and
  ``SLURM_ARRAY_TASK_COUNT`` (with ``SLURM_ARRAY_TASK_MIN`` / ``_MAX`` / ``_STEP``: an array
  ``1-8`` or ``0-14:2`` is numbered from 0 here);
* ``srun`` sets ``SLURM_PROCID`` / ``SLURM_STEP_NUM_TASKS`` (``SLURM_NTASKS``) for each task.

An array task that itself runs torchrun or srun tasks splits its part again: the parts
multiply (array task a of A with rank r of R is part ``a·R + r`` of ``A·R``).

``--shard auto`` reads all of these. Without ``--shard``, torchrun and job arrays are read
too (the default "when the environment says so"); srun tasks only with ``--shard auto``,
because a batch script itself runs as SLURM process 0 of all its tasks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import InputError


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or str(value).strip() == "":
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        raise InputError(f"the environment variable {name}={value!r} is not a number; "
                         f"pass --shard i/n explicitly") from None


def _array_part(env: Mapping[str, str]) -> tuple[int, int] | None:
    """(index, count) of a SLURM job array task, numbered from 0; None outside an array."""
    task = _int(env, "SLURM_ARRAY_TASK_ID")
    count = _int(env, "SLURM_ARRAY_TASK_COUNT")
    if task is None or count is None or count <= 1:
        return None
    lo = _int(env, "SLURM_ARRAY_TASK_MIN")
    hi = _int(env, "SLURM_ARRAY_TASK_MAX")
    step = _int(env, "SLURM_ARRAY_TASK_STEP") or 1
    lo = 0 if lo is None else lo
    if hi is None:
        hi = lo + (count - 1) * step
    if step < 1 or (hi - lo) != (count - 1) * step or (task - lo) % step or not lo <= task <= hi:
        raise InputError(
            f"SLURM job array task {task} of {count} (min {lo}, max {hi}, step {step}) is not a regular range "
            f"(e.g. --array=0-7 or 1-15:2); pass --shard i/n explicitly"
        )
    return (task - lo) // step, count


def _torchrun_part(env: Mapping[str, str]) -> tuple[int, int] | None:
    world = _int(env, "WORLD_SIZE")
    rank = _int(env, "RANK")
    if world is None or world <= 1 or rank is None:
        return None
    return rank, world


def _srun_part(env: Mapping[str, str]) -> tuple[int, int] | None:
    proc = _int(env, "SLURM_PROCID")
    count = _int(env, "SLURM_STEP_NUM_TASKS")
    if count is None:
        count = _int(env, "SLURM_NTASKS")
    if proc is None or count is None or count <= 1:
        return None
    return proc, count


def parts_from_env(env: Mapping[str, str] | None = None, *, srun: bool = True) -> tuple[int, int, str] | None:
    """(index, count, where from) of this process, or None when the environment names no
    split. ``srun`` False leaves srun's task variables out (the default without --shard)."""
    env = os.environ if env is None else env
    layers: list[tuple[int, int, str]] = []
    array = _array_part(env)
    if array is not None:
        layers.append((*array, "SLURM job array"))
    inner = _torchrun_part(env)
    if inner is not None:
        layers.append((*inner, "torchrun"))
    elif srun:
        inner = _srun_part(env)
        if inner is not None:
            layers.append((*inner, "srun"))
    if not layers:
        return None
    index, count = 0, 1
    for i, n, _ in layers:
        if not 0 <= i < n:
            raise InputError(f"the {layers[0][2]} environment says process {i} of {n}; pass --shard i/n explicitly")
        index, count = index * n + i, count * n
    return index, count, " × ".join(name for _, _, name in layers)


def local_rank(env: Mapping[str, str] | None = None) -> int | None:
    """The process's index on its machine (torchrun's ``LOCAL_RANK``, srun's ``SLURM_LOCALID``)."""
    env = os.environ if env is None else env
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = _int(env, name)
        if value is not None:
            return value
    return None


def device_for_process(device: str) -> str:
    """``auto`` on a machine with several GPUs and a launcher's local rank: that rank's GPU
    (``cuda:LOCAL_RANK`` modulo the GPU count), so n processes on one machine use n GPUs.
    Any other ``device`` is returned as given."""
    if device != "auto":
        return device
    rank = local_rank()
    if rank is None:
        return device
    try:
        import torch
    except ImportError:  # pragma: no cover
        return device
    if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
        return device
    return f"cuda:{rank % torch.cuda.device_count()}"
