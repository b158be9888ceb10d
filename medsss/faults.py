"""Deliberate faults, for the tests that prove a killed run resumes where it stopped.

``MEDSSS_KILL_AT=<run-dir suffix>@<step>`` SIGKILLs the process when a training run whose
directory ends with that suffix finishes that optimizer step (before that step's checkpoint is
written: Lightning runs checkpoint callbacks last). Nothing happens when the variable is unset.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

KILL_AT_ENV = "MEDSSS_KILL_AT"


def kill_step(run_dir: str | Path, environ: dict[str, str] | None = None) -> int | None:
    """The optimizer step at which a run in ``run_dir`` is to be killed, or None."""
    spec = (os.environ if environ is None else environ).get(KILL_AT_ENV, "")
    if not spec:
        return None
    suffix, _, step = spec.rpartition("@")
    if not suffix or not step.isdigit():
        raise ValueError(f"{KILL_AT_ENV}={spec!r}: expected <run-dir suffix>@<optimizer step>")
    return int(step) if Path(run_dir).resolve().as_posix().endswith(suffix.rstrip("/")) else None


def kill_callbacks(run_dir: str | Path) -> list:
    """A Lightning callback that SIGKILLs this process at the configured step (none when unset)."""
    step = kill_step(run_dir)
    if step is None:
        return []
    from lightning.pytorch.callbacks import Callback

    class KillAtStep(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if trainer.global_step >= step:
                os.kill(os.getpid(), signal.SIGKILL)

    return [KillAtStep()]
