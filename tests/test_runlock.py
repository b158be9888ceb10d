"""One writer per run directory: a second run is refused naming the holder; a killed run's lock
is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from medsss.runlock import LOCK_FILE, RunDirectoryLockedError, is_distributed_worker, run_lock

HOLD = """
import sys, time
from medsss.runlock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(run_dir):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_run_is_refused_with_the_holders_pid_and_the_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(RunDirectoryLockedError, match=f"in use by pid {holder.pid} on host"):
            with run_lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_lock(tmp_path):  # the kernel released the dead holder's lock
        record = (tmp_path / LOCK_FILE).read_text()
        assert f'"pid": {os.getpid()}' in record
    assert "taking over the lock of an ended run" in caplog.text


def test_a_lock_released_normally_leaves_nothing_to_take_over(tmp_path, caplog):
    with run_lock(tmp_path):
        with pytest.raises(RunDirectoryLockedError):  # also within one process: a second open is refused
            with run_lock(tmp_path):
                pass
    assert (tmp_path / LOCK_FILE).read_text() == ""
    with run_lock(tmp_path):
        pass
    assert "taking over" not in caplog.text


def test_stages_hold_their_directory(tmp_path):
    from conftest import compose

    from medsss.run import run_stage

    with run_lock(tmp_path):
        with pytest.raises(RunDirectoryLockedError):
            run_stage(compose(["model=tiny", "search=tiny", "backend=hf", "data.limit=1"]), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]  # refused before writing anything


def test_data_parallel_workers_leave_the_lock_to_rank_zero():
    assert is_distributed_worker({"LOCAL_RANK": "1"}) and not is_distributed_worker({"LOCAL_RANK": "0"})
    assert not is_distributed_worker({})
