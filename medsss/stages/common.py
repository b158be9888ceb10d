"""Glue every stage shares: loggers and callbacks from their config groups, the tracked run, the
generation backend."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from medsss.faults import inject_generation_faults
from medsss.generation.base import Backend
from medsss.generation.resilient import ResilientBackend
from medsss.tracking import RunLoggers, tracked_run


def _specs(group: DictConfig | None) -> list[DictConfig]:
    """The instantiable entries of a multi-select group (``logger=[csv,wandb]``); ``none`` is empty."""
    if not group:
        return []
    return [spec for spec in group.values() if isinstance(spec, DictConfig) and "_target_" in spec]


def instantiate_loggers(group: DictConfig | None, run_dir: Path) -> list[Any]:
    """The Lightning loggers of ``logger=``, saving under the run directory unless one sets its own
    ``save_dir``."""
    specs = _specs(group)
    if specs and importlib.util.find_spec("lightning") is None:
        raise RuntimeError("logger= uses Lightning's loggers: pip install 'medsss[train]' (or logger=none)")
    return [instantiate(spec, save_dir=spec.get("save_dir") or str(run_dir)) for spec in specs]


def instantiate_callbacks(group: DictConfig | None, run_dir: Path) -> list[Any]:
    """The Lightning callbacks of ``stage.callbacks``; a relative ``dirpath`` is inside the run
    directory (resuming with ``stage.ckpt_path=latest`` looks there)."""
    callbacks = []
    for spec in _specs(group):
        dirpath = spec.get("dirpath")
        overrides = {"dirpath": str(run_dir / dirpath)} if dirpath and not Path(dirpath).is_absolute() else {}
        callbacks.append(instantiate(spec, **overrides))
    return callbacks


@contextmanager
def tracked_stage(cfg: DictConfig, run_dir: Path) -> Iterator[RunLoggers]:
    """The stage's loggers with its resolved config logged; finalized when the stage ends, as
    failed when it raised."""
    # A DictConfig converts to a dict (OmegaConf's return type covers lists and values too).
    config = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    with tracked_run(instantiate_loggers(cfg.get("logger"), run_dir), config) as run:
        yield run


def build_backend(cfg: DictConfig, model: Any) -> Backend:
    """The generation backend of ``backend=`` for ``model``, its engine calls retried and its batches
    halved on out-of-memory as ``retry`` says (:mod:`medsss.generation.resilient`), with the faults
    of ``MEDSSS_FAULT_GENERATE`` injected inside the retries when that is set (:mod:`medsss.faults`)."""
    backend = inject_generation_faults(instantiate(cfg.backend)(model=model))
    retry = cfg.retry
    return ResilientBackend(backend, attempts=int(retry.attempts), backoff_s=float(retry.backoff_s),
                            max_backoff_s=float(retry.max_backoff_s))
