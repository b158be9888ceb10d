"""Thread counts on shared machines: the usable cores, divided among a joblib multirun's jobs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from medsss import hardware
from medsss.hardware import (
    JOBLIB_LAUNCHER,
    configure_threads,
    parallel_jobs,
    thread_count,
    usable_cores,
    wait_policy,
)

JOBLIB = {"_target_": JOBLIB_LAUNCHER, "n_jobs": 2}
BASIC = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}


def test_usable_cores_are_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert usable_cores() == 3


def test_usable_cores_without_affinity_call(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert usable_cores() == 8


@pytest.mark.parametrize(("launcher", "multirun", "expected"), [
    (JOBLIB, True, 2),
    ({**JOBLIB, "n_jobs": -1}, True, 8),  # joblib: one job per core
    ({**JOBLIB, "n_jobs": -2}, True, 7),  # all cores but one
    ({**JOBLIB, "n_jobs": -20}, True, 1),
    ({**JOBLIB, "n_jobs": None}, True, 1),
    (JOBLIB, False, 1),  # a single run: the launcher is not used
    (BASIC, True, 1),  # the basic launcher runs jobs one after another
    (None, False, 1),
])
def test_parallel_jobs(launcher, multirun, expected):
    assert parallel_jobs(launcher, multirun=multirun, cores=8) == expected


def test_zero_jobs_is_refused():
    with pytest.raises(ValueError, match="hydra.launcher.n_jobs must not be 0"):
        parallel_jobs({**JOBLIB, "n_jobs": 0}, multirun=True, cores=8)


@pytest.mark.parametrize(("threads", "jobs", "cores", "environ", "expected"), [
    (None, 1, 8, {}, 8),  # every usable core
    (None, 2, 8, {}, 4),  # two jobs side by side: half each
    (None, 3, 8, {}, 2),
    (None, 3, 2, {}, 1),  # more jobs than cores: one thread each, never zero
    (None, 1, 8, {"OMP_NUM_THREADS": "3"}, 3),  # the environment asks for fewer
    (None, 2, 8, {"OMP_NUM_THREADS": "16"}, 4),  # ... never more than the share
    (None, 1, 8, {"OMP_NUM_THREADS": "lots"}, 8),
    (5, 2, 8, {"OMP_NUM_THREADS": "1"}, 5),  # an explicit count wins over everything
])
def test_thread_count(threads, jobs, cores, environ, expected):
    assert thread_count(threads, jobs, cores, environ) == expected


def test_non_positive_thread_count_is_refused():
    with pytest.raises(ValueError, match="threads=0: must be a positive count"):
        thread_count(0, environ={})


@pytest.fixture
def restore_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", ""))
    monkeypatch.setattr(hardware, "_interop_threads_set", True)  # the test process's pool stays as it is
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_configure_threads_sets_torch_and_children(restore_threads, monkeypatch):
    monkeypatch.setattr(hardware, "usable_cores", lambda: 4)
    monkeypatch.setattr(hardware, "_STARTUP_OMP_NUM_THREADS", None)
    assert configure_threads(jobs=4) == 1
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    # The next job of a sequential multirun is not capped by the previous job's export.
    assert configure_threads(jobs=2) == 2 and torch.get_num_threads() == 2


@pytest.mark.parametrize(("count", "load", "environ", "expected"), [
    (2, 9.8, {}, "PASSIVE"),  # other processes hold the cores: spinning threads would wait out their slices
    (2, 0.3, {}, None),  # a quiet machine keeps OpenMP's fast spinning default
    (1, 9.8, {}, None),  # one thread never waits for another
    (2, 9.8, {"OMP_WAIT_POLICY": "ACTIVE"}, None),  # the user's choice stands
    (2, None, {}, None),  # no load average on this OS
])
def test_wait_policy(count, load, environ, expected):
    assert wait_policy(count, load, environ) == expected


def test_wait_policy_is_exported_before_torch_loads():
    script = ("import os, sys\n"
              "import medsss.hardware as hardware\n"
              "hardware.load_average = lambda: 9.8\n"
              "hardware.usable_cores = lambda: 2\n"
              "assert 'torch' not in sys.modules\n"
              "hardware.configure_threads()\n"
              "print(os.environ['OMP_WAIT_POLICY'], os.environ['OMP_NUM_THREADS'])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.split() == ["PASSIVE", "2"], done.stderr


def test_wait_policy_is_left_alone_once_torch_is_loaded(restore_threads, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(hardware, "load_average", lambda: 9.8)
    configure_threads(threads=2)  # torch is loaded in this test process: setting it would mislead
    assert "OMP_WAIT_POLICY" not in os.environ


@pytest.mark.slow
def test_joblib_multirun_divides_the_cores_among_its_jobs(tmp_path):
    """run.py reads the launcher from Hydra's config: two joblib jobs get half the cores each.
    (stage.name=none stops each job right after the thread set-up with a clear error.)"""
    command = [sys.executable, "-m", "medsss.run", "--multirun", "hydra/launcher=joblib",
               "hydra.launcher.n_jobs=2", "seed=1,2", "stage.name=none", f"hydra.sweep.dir={tmp_path}"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert "unknown stage 'none'" in done.stderr
    expected = max(1, usable_cores() // 2)
    logs = [p.read_text() for p in tmp_path.glob("*/*.log")]
    assert len(logs) == 2
    line = f"torch threads: {expected} ({usable_cores()} usable cores / 2 parallel jobs)"
    assert all(line in log for log in logs)
