"""Compose the project's Hydra config from a script (benchmarks are not Hydra apps themselves), and
measure a synthesis run with it."""

from __future__ import annotations

from pathlib import Path

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
