"""Stage ``evolve``: self-evolution rounds, each step the existing stage in its own directory.

``python -m medsss.run +experiment=evolve_cpu`` runs the rounds of :mod:`medsss.evolve.plan`. Each
step's config is composed like a command line (``stage=<step>`` plus the configured overrides),
hashed, and run in ``rounds/<k>/<step>/`` either in this process (``isolation=inline``) or as
``python -m medsss.run`` in a child process (``subprocess``: every step starts with a clean
process, which GPUs shared by vLLM and training need; the child dies with this process).
``manifest.json`` records every step. A rerun skips finished steps, resumes an interrupted one
through that stage's own resume (the tree store, ``stage.ckpt_path=latest``, the curriculum's and
evaluation's files), and refuses a finished step whose config changed unless
``stage.on_config_change`` says ``keep`` (leave it) or ``rerun`` (move it aside, run it and every
later step again).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medsss.evolve.manifest import Manifest, StepRecord
from medsss.evolve.plan import EvolveSettings, Policy, StepPlan, quoted, round_plan
from medsss.evolve.report import round_rows, write_report
from medsss.io import read_json
from medsss.search.store import config_hash
from medsss.tracking import joined_group

log = logging.getLogger(__name__)

ISOLATIONS = ("inline", "subprocess")
ON_CHANGE = ("error", "keep", "rerun")
# Not part of what a step computes: where files live, threads, loggers, how engine calls are retried,
# whether weights may be downloaded.
UNHASHED = ("paths", "threads", "logger", "retry", "allow_download")


class ConfigChangedError(RuntimeError):
    """A finished step whose config is not the one it ran with."""


class StepFailedError(RuntimeError):
    """A step's stage raised, or its process ended with an error."""


def compose_step(overrides: list[str]) -> DictConfig:
    """The config ``python -m medsss.run <overrides>`` would run with (inside a Hydra app, its
    search path; otherwise the project's conf/)."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    from medsss.config_schema import check_config
    from medsss.config_schema import compose as compose_project

    if GlobalHydra.instance().is_initialized():
        return check_config(compose(config_name="config", overrides=overrides))
    return compose_project(overrides)


def step_hash(cfg: DictConfig) -> str:
    values = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(values, dict)
    return config_hash({str(k): v for k, v in values.items() if k not in UNHASHED})


def step_outputs(directory: Path) -> list[str]:
    """The files and folders a later step or a reader uses, as far as the step wrote them."""
    names = ("trees.jsonl", "trajectories.jsonl", "seeds.jsonl", "pass_rates.md", "sft.jsonl", "dpo.jsonl",
             "prm.jsonl", "final", "final/merged", "results.md", "results.csv", "grid.csv", "metrics.json")
    return [name for name in names if (directory / name).exists()]


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    stage = cfg.stage
    if stage.isolation not in ISOLATIONS:
        raise ValueError(f"stage.isolation must be one of {ISOLATIONS}, not {stage.isolation!r}")
    if stage.on_config_change not in ON_CHANGE:
        raise ValueError(f"stage.on_config_change must be one of {ON_CHANGE}, not {stage.on_config_change!r}")
    overrides = {name: [str(o) for o in values] for name, values in stage.overrides.items()}
    # The steps compose their own configs: the evolve run's seed, prompt and threads reach them
    # only as overrides (first, so stage.overrides.all can still set them).
    overrides["all"] = [*inherited_overrides(cfg), *overrides.get("all", [])]
    started = time.perf_counter()
    run_dir = run_dir.resolve()
    # Every step's W&B run joins this evolve run's group (subprocess steps inherit the variable).
    with joined_group(f"evolve-{run_dir.name}"):
        return _run_rounds(stage, run_dir, overrides, started)


def _run_rounds(stage: DictConfig, run_dir: Path, overrides: dict[str, list[str]],
                started: float) -> dict[str, Any]:
    base = compose_step(["stage=synthesize", *overrides.get("all", []), *overrides.get("synthesize", [])])
    settings = EvolveSettings(
        rounds=int(stage.rounds), curriculum=bool(stage.curriculum), dpo=bool(stage.dpo),
        evaluate=bool(stage.evaluate), evaluate_before=bool(stage.evaluate_before),
        accumulate=bool(stage.accumulate),
        handoff=_handoff(str(stage.handoff), base), overrides=overrides,
    )
    manifest = Manifest(run_dir)
    searching: Policy | None = None
    invalidated = False  # a step ran again: every later finished step is stale
    counts = {"ran": 0, "skipped": 0}
    for round_ in range(1, settings.rounds + 1):
        plans, trained = round_plan(settings, run_dir, round_, searching, str(base.model.id))
        for plan in plans:
            invalidated = _run_step(plan, run_dir, manifest, str(stage.isolation),
                                    str(stage.on_config_change), invalidated, counts)
        write_report(round_rows(manifest, run_dir), run_dir)
        searching = trained
    metrics = {
        "stage": "evolve",
        "rounds": settings.rounds,
        "steps_run": counts["ran"],
        "steps_skipped": counts["skipped"],
        "wall_seconds": round(time.perf_counter() - started, 3),
        "report": str(run_dir / "evolve.md"),
    }
    log.info("evolve done: %d rounds, %d steps run, %d finished before; %s", settings.rounds, counts["ran"],
             counts["skipped"], run_dir / "evolve.md")
    return metrics


def inherited_overrides(cfg: DictConfig) -> list[str]:
    """The evolve run's own ``seed``, ``prompt.system`` and ``threads`` as step overrides."""
    system = cfg.prompt.system
    threads = cfg.get("threads")
    return [f"seed={int(cfg.seed)}", f"prompt.system={'null' if system is None else quoted(str(system))}",
            f"threads={'null' if threads is None else int(threads)}"]


def _handoff(handoff: str, synthesize_cfg: DictConfig) -> str:
    if handoff != "auto":
        return handoff
    # vLLM serves a LoRA adapter unmerged; transformers merges it at load anyway, so it reads the
    # merged folder (backend=auto chooses at run time: merged works for both).
    target = str(synthesize_cfg.backend.get("_target_", ""))
    return "adapter" if target.endswith("VLLMBackend") else "merged"


def _run_step(plan: StepPlan, run_dir: Path, manifest: Manifest, isolation: str, on_change: str,
              invalidated: bool, counts: dict[str, int]) -> bool:
    """Run (or skip, or resume) one step; returns whether later finished steps are stale."""
    cfg = compose_step(plan.overrides)
    digest = step_hash(cfg)
    directory = run_dir / plan.directory
    earlier = manifest.get(plan.directory)
    if earlier is not None and earlier.status == "done":
        if earlier.config_hash == digest and not invalidated:
            log.info("%s: finished before, skipped", plan.directory)
            counts["skipped"] += 1
            return invalidated
        if earlier.config_hash != digest and on_change == "keep" and not invalidated:
            log.warning("%s: config changed since it finished; kept as it is (stage.on_config_change=keep)",
                        plan.directory)
            counts["skipped"] += 1
            return invalidated
        if earlier.config_hash != digest and on_change == "error":
            raise ConfigChangedError(
                f"{plan.directory} finished with config {earlier.config_hash} but its config is now "
                f"{digest}; set stage.on_config_change=rerun to run it (and every later step) again, "
                "or keep to leave it")
        moved = f"{plan.directory}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(str(directory), str(run_dir / moved))
        manifest.replace(plan.directory, moved)
        log.warning("%s: runs again (%s); the earlier run moved to %s", plan.directory,
                    "an earlier step ran again" if invalidated else "its config changed", moved)
        invalidated = True
    elif earlier is not None and earlier.config_hash != digest and on_change == "error":
        raise ConfigChangedError(
            f"{plan.directory} was interrupted with config {earlier.config_hash} and its config is now "
            f"{digest}: resuming would mix the two; set stage.on_config_change=rerun or remove {directory}")
    record = manifest.start(StepRecord(step=plan.directory, stage=plan.name, round=plan.round,
                                       overrides=plan.overrides, config_hash=digest, inputs=plan.inputs))
    log.info("%s: %s (attempt %d)", plan.directory, "resuming" if record.attempts > 1 else "starting",
             record.attempts)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        metrics = _execute(cfg, plan, directory, isolation)
    except BaseException as error:
        manifest.fail(plan.directory, f"{type(error).__name__}: {error}"[:2000])
        raise
    manifest.finish(plan.directory, step_outputs(directory), metrics)
    counts["ran"] += 1
    return invalidated


def _execute(cfg: DictConfig, plan: StepPlan, directory: Path, isolation: str) -> dict[str, Any]:
    if isolation == "inline":
        from medsss.run import run_stage

        hydra_dir = directory / ".hydra"
        hydra_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, hydra_dir / "config.yaml")
        OmegaConf.save(OmegaConf.create(plan.overrides), hydra_dir / "overrides.yaml")
        return run_stage(cfg, directory)
    command = [sys.executable, "-m", "medsss.run", *plan.overrides, f"hydra.run.dir={quoted(str(directory))}"]
    done = subprocess.run(command, preexec_fn=_die_with_parent, check=False)
    if done.returncode != 0:
        raise StepFailedError(f"{plan.directory}: `python -m medsss.run {' '.join(plan.overrides)}` "
                              f"exited with {done.returncode}; its log is {directory / 'run.log'}")
    metrics_file = directory / "metrics.json"
    return read_json(metrics_file) if metrics_file.exists() else {}


def _die_with_parent() -> None:
    """In the child: the kernel SIGKILLs it when the evolve process dies (Linux), so a killed run
    leaves no step running on without it."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
