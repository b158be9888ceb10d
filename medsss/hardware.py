"""How many CPU threads this process should use, and how they wait, on a machine it may share.

torch gives itself one thread per core this process may run on, so two processes on one machine
(two runs side by side, or the jobs of a joblib multirun) each take every core and oversubscribe
it. ``configure_threads`` sizes torch's thread pools to the usable cores (CPU affinity) divided
among the jobs of a joblib multirun that run side by side, or to an explicit count.

What oversubscription costs is mostly OpenMP's waiting: by default a thread spins at each barrier
for its partners, and when a partner was descheduled by another process each of the hundreds of
parallel regions of a decode step waits out a time slice. So when other processes already keep
the machine busy at start, ``configure_threads`` also asks OpenMP to wait passively (sleep), see
``wait_policy``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

JOBLIB_LAUNCHER = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
_interop_threads_set = False  # torch allows setting its inter-op pool once per process
# OMP_NUM_THREADS as this process found it: configure_threads overwrites it for child processes,
# and a later call (the next job of a sequential multirun) must not read its own earlier value.
_STARTUP_OMP_NUM_THREADS = os.environ.get("OMP_NUM_THREADS")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), or all cores where the OS has no
    affinity call (macOS, Windows)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def parallel_jobs(launcher: Mapping[str, Any] | None, multirun: bool, cores: int | None = None) -> int:
    """How many jobs of this run share the machine: ``hydra.launcher.n_jobs`` in a joblib
    multirun (-1: one per core, -2: all but one core, as joblib counts), else 1. Other
    launchers (basic, submitit) run one job per process or per allocation."""
    if not multirun or not launcher or launcher.get("_target_") != JOBLIB_LAUNCHER:
        return 1
    n_jobs = launcher.get("n_jobs")
    if n_jobs is None:
        return 1
    n_jobs = int(n_jobs)
    if n_jobs == 0:
        raise ValueError("hydra.launcher.n_jobs must not be 0 "
                         "(joblib: a positive count, or -1 for one job per core)")
    if n_jobs < 0:
        n_jobs = max(1, (cores or usable_cores()) + 1 + n_jobs)
    return n_jobs


def thread_count(threads: int | None = None, jobs: int = 1, cores: int | None = None,
                 environ: Mapping[str, str] | None = None) -> int:
    """The intra-op thread count: ``threads`` when given; else this job's share of the usable
    cores (``cores // jobs``, at least 1), lowered to ``OMP_NUM_THREADS`` when the environment
    sets it (the user's wish, or joblib's own limit in its worker processes)."""
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads={threads}: must be a positive count, or null for the usable cores")
        return int(threads)
    share = max(1, (cores or usable_cores()) // max(1, jobs))
    omp = (environ.get("OMP_NUM_THREADS") if environ is not None else _STARTUP_OMP_NUM_THREADS) or ""
    return min(share, int(omp)) if omp.strip().isdigit() and int(omp) > 0 else share


def load_average() -> float | None:
    """The machine's 1-minute load average (runnable processes), or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def wait_policy(count: int, load: float | None, environ: Mapping[str, str]) -> str | None:
    """``PASSIVE`` when ``count`` threads would start while other processes already keep a core
    busy (load average 1 or more) and the environment does not choose; else None.

    OpenMP's default lets a thread spin at each barrier waiting for the others; when those were
    descheduled by another process, every one of the hundreds of parallel regions of a decode
    step waits out a time slice. Measured on a 2-core machine under a load of about 10 (SmolLM2,
    16 rows x 48 tokens, 2 threads): 381 s with spinning threads, 43 s with PASSIVE.
    """
    if "OMP_WAIT_POLICY" in environ or count < 2 or load is None or load < 1.0:
        return None
    return "PASSIVE"


def configure_threads(threads: int | None = None, jobs: int = 1) -> int:
    """Size torch's intra-op pool (and, once per process, its inter-op pool) and export
    ``OMP_NUM_THREADS`` for child processes; returns the thread count. Call it before any model
    work starts, and before torch is imported for the OpenMP wait policy (see ``wait_policy``) to
    take effect."""
    import sys

    torch_loaded = "torch" in sys.modules  # OpenMP reads its wait policy when torch loads it
    cores = usable_cores()
    count = thread_count(threads, jobs, cores)
    load = load_average()
    policy = wait_policy(count, load, os.environ)
    if policy and not torch_loaded:
        os.environ["OMP_WAIT_POLICY"] = policy
    else:
        policy = None

    import torch

    global _interop_threads_set
    torch.set_num_threads(count)
    if not _interop_threads_set:
        try:
            torch.set_num_interop_threads(count)
        except RuntimeError:  # inter-op work already ran in this process; its pool stays as it is
            pass
        _interop_threads_set = True
    os.environ["OMP_NUM_THREADS"] = str(count)
    if threads is not None:
        how = "as configured"
    else:
        how = f"{cores} usable cores" + (f" / {jobs} parallel jobs" if jobs > 1 else "")
    if policy:
        how += f"; OMP_WAIT_POLICY={policy}: other processes keep the machine busy (load {load:.1f})"
    log.info("torch threads: %d (%s)", count, how)
    return count
