"""Around ``Trainer.fit``: where a resumed run starts, which checkpoint it resumes, what it reports."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

log = logging.getLogger(__name__)


class StartStep(Callback):
    """Remembers the global step training started from (non-zero after a resume)."""

    def __init__(self) -> None:
        self.step = 0

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.step = trainer.global_step


def checkpoint_directory(callbacks: Sequence[Callback], default: Path) -> Path:
    """Where the run's ModelCheckpoint writes (``default`` without one)."""
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath)
    return default


def is_complete_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a whole checkpoint: a ``torch.save`` zip archive whose central directory
    (written last) is there. Lightning writes a checkpoint to a temporary file and moves it into
    place, but across file systems (``/tmp`` to the run directory) the move is a copy, and a kill
    in the middle of it leaves a file cut short. A folder (a deepspeed or sharded FSDP
    checkpoint) is taken as it is."""
    if path.is_dir():
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def resolve_ckpt_path(ckpt_path: str | None, directory: Path) -> str | None:
    """``latest`` is the newest complete checkpoint in ``directory`` (None, a fresh start, when
    there is none); any other value is passed through."""
    if ckpt_path != "latest":
        return ckpt_path
    for path in sorted(directory.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True):
        if is_complete_checkpoint(path):
            return str(path)
        log.warning("ckpt_path=latest: %s is cut short (a run killed while writing it), skipped", path)
    log.info("ckpt_path=latest: no complete checkpoint in %s, starting fresh", directory)
    return None


def fit_summary(trainer: L.Trainer, module: Any, start: StartStep) -> dict[str, Any]:
    """What a fit reports in ``metrics.json``: steps, throughput, dtype, and the last logged
    metrics (``train/loss`` as ``train_loss``)."""
    mean = module.mean_tokens_per_second()
    summary: dict[str, Any] = {
        "global_steps": trainer.global_step,
        "start_step": start.step,
        "train_tokens_per_second_mean": None if mean is None else round(mean, 1),
        "dtype": str(next(module.parameters()).dtype).removeprefix("torch."),
    }
    if module.checkpoint_above_tokens is not None:
        summary["checkpointed_batches"] = module.checkpointed_batches
    summary.update({k.replace("/", "_"): float(v) for k, v in trainer.callback_metrics.items()})
    return summary


def is_main_process(module: L.LightningModule) -> bool:
    """True in the process that saves outputs (rank zero, or any process without a trainer)."""
    return module.trainer is None or module.trainer.is_global_zero
