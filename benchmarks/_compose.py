"""Compose the project's Hydra config from a script (benchmarks are not Hydra apps themselves),
measure a synthesis run with it, and run a measurement in a fresh process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from medsss.config_schema import compose

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: list[str]) -> DictConfig:
    """The config ``python -m medsss.run`` would compose (schemas registered, added keys checked)."""
    return compose(overrides, config_dir=str(CONF))


def synthesis_metrics(overrides: list[str]) -> dict:
    """Run synthesis with ``overrides`` into a scratch directory; its metrics plus the wall time
    of the whole call (model load and engine start-up included) as ``bench_wall_seconds``."""
    import tempfile
    import time

    from medsss.stages.synthesize import run as synthesize

    cfg = compose_config(overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        metrics = synthesize(cfg, Path(run_dir))
        metrics["bench_wall_seconds"] = time.perf_counter() - started
    return metrics


def in_fresh_process(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a new spawned process: each arm of a memory benchmark starts from the
    same empty heap, and its peak RSS is its own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()
