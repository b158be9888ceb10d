"""One writer per run directory: an advisory lock held for as long as a stage runs there.

Two runs pointed at one directory would interleave their writes (two tree stores appending, two
trainers checkpointing). The lock is ``flock`` on ``<run dir>/.medsss.lock``, which records the
holder's pid, host and start time so the refusal can say who holds it. The kernel releases a
``flock`` when its process dies, however it dies, so the lock of a killed run is simply taken
over by the next one (which says so).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = ".medsss.lock"


class RunDirectoryLockedError(RuntimeError):
    """Another live process holds the run directory."""


def _holder(text: str) -> dict:
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``run_dir`` for the block; raise :class:`RunDirectoryLockedError` naming the holder when
    a live process has it."""
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path.read_text(encoding="utf-8", errors="replace"))
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"])) \
                if isinstance(holder.get("started"), (int, float)) else "an unknown time"
            who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
            raise RunDirectoryLockedError(
                f"{Path(run_dir)} is in use by {who} since {since} ({path}): wait for that run, or "
                "choose another hydra.run.dir") from None
        earlier = _holder(path.read_text(encoding="utf-8", errors="replace"))
        if earlier:
            log.warning("%s: taking over the lock of an ended run (pid %s on %s)", run_dir,
                        earlier.get("pid"), earlier.get("host"))
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, record.encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(descriptor, 0)  # an ended run leaves an empty lock file: nothing to take over
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def is_distributed_worker(environ: dict[str, str] | None = None) -> bool:
    """True in a data-parallel worker other than rank 0 (Lightning's ddp launcher re-runs the entry
    point with these set): the lock is rank 0's."""
    env = os.environ if environ is None else environ
    return any(int(env.get(name, "0") or 0) > 0 for name in ("LOCAL_RANK", "RANK", "NODE_RANK"))
