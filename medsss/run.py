"""The one entry point: ``python -m medsss.run [+experiment=NAME] [overrides]``.

Dispatches on ``stage.name``. The ``__main__`` guard matters: vLLM starts its engine processes with
spawn, which re-imports this module.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from medsss.config_schema import ConfigKeyAddedError, check_config, register_configs
from medsss.hardware import configure_threads, parallel_jobs
from medsss.preflight import ConfigError, preflight
from medsss.runlock import is_distributed_worker, run_lock
from medsss.tracking import RUN_GROUP_ENV, sweep_group

log = logging.getLogger("medsss")


def _stages() -> dict[str, Callable[[DictConfig, Path], dict[str, Any]]]:
    from medsss.stages import curriculum, evaluate, evolve, merge, summarize, synthesize, train, view

    return {"synthesize": synthesize.run, "sft": train.run_sft, "prm": train.run_prm, "dpo": train.run_dpo,
            "evaluate": evaluate.run, "curriculum": curriculum.run, "evolve": evolve.run,
            "view": view.run, "merge": merge.run,
            "summarize": summarize.run}


def run_stage(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    stages = _stages()
    name = cfg.stage.name
    if name not in stages:
        raise ValueError(f"unknown stage '{name}'; available: {', '.join(sorted(stages))}")
    # A config that cannot run here fails now, naming the key: before the run directory, its lock
    # or any model (after configure_threads, which must see torch unloaded).
    preflight(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_distributed_worker():  # rank 0 holds the directory for the whole data-parallel run
        return stages[name](cfg, run_dir)
    with run_lock(run_dir):
        return stages[name](cfg, run_dir)


# The group schemas (conf/*/*.yaml name them in their defaults lists) must be in Hydra's
# ConfigStore before @hydra.main composes.
register_configs()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        return _main(cfg)
    except (ConfigKeyAddedError, ConfigError) as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # the launcher reports the failed job
            raise
        # One line on stderr, not a traceback: the message names the key to change.
        raise SystemExit(f"config error: {error}") from None


def _main(cfg: DictConfig) -> float | None:
    check_config(cfg)  # keys that +key=value added past a settings node's schema
    # paths.cache_dir is where the model loaders cache (they read $MEDSSS_CACHE, as do vLLM's workers).
    os.environ["MEDSSS_CACHE"] = str(Path(cfg.paths.cache_dir).expanduser())
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    # Before any model work: torch's pools are sized once, and a joblib multirun's jobs share the cores.
    jobs = parallel_jobs(hydra_cfg.launcher, multirun=hydra_cfg.mode == RunMode.MULTIRUN)
    configure_threads(cfg.get("threads"), jobs=jobs)
    if hydra_cfg.mode == RunMode.MULTIRUN:  # the sweep's jobs log into one W&B group (logger.wandb.group)
        os.environ.setdefault(RUN_GROUP_ENV, sweep_group(hydra_cfg.sweep.dir))
    metrics = run_stage(cfg, run_dir)
    log.info("%s finished; outputs in %s", cfg.stage.name, run_dir)
    # A scalar return lets sweepers (e.g. Optuna) optimise the stage's objective.
    objective = cfg.stage.get("objective")
    return float(metrics[objective]) if objective and objective in metrics else None


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
