"""Stage ``evaluate``: sample and score once per benchmark, then every strategy offline
(:mod:`medsss.evaluation.pipeline`)."""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.auto import tqdm

from medsss.data.loaders import DataSpec, load_problems
from medsss.evaluation.pipeline import (
    BenchmarkEvaluation,
    EvaluationSettings,
    evaluate_benchmark,
    generation_counts,
    prepare_run_dir,
    write_diagnostics,
    write_results,
)
from medsss.evaluation.results import COLUMNS, decode_choice
from medsss.evaluation.scorer import load_prm_scorer
from medsss.io import write_json
from medsss.resources import peak_memory_mb
from medsss.stages.common import build_backend, tracked_stage
from medsss.tracking import RunLoggers

log = logging.getLogger(__name__)


def system_prompts(cfg: DictConfig) -> tuple[str | None, str | None]:
    """The policy's and the PRM's system prompts: ``stage.policy_system_prompt`` and
    ``stage.prm.system_prompt`` (both default to the project's ``prompt.system``; the released
    MedSSS models use their own, see ``+experiment=eval_medsss_8b``)."""
    stage = cfg.stage
    policy = stage.policy_system_prompt if "policy_system_prompt" in stage else cfg.prompt.system
    prm = stage.prm.system_prompt if "system_prompt" in stage.prm else cfg.prompt.system
    return policy or None, prm or None


def load_scorer(prm: DictConfig, system_prompt: str | None, device: str):
    """The PRM scorer of ``stage.prm`` (None without a PRM: score-free strategies only); a
    dual-head PRM scores with ``stage.prm.penalty_scale`` (null: the lambda saved with it)."""
    if not prm.path:
        return None
    return load_prm_scorer(prm.path, layout=prm.layout, base=prm.get("base"), tokenizer=prm.get("tokenizer"),
                           dtype=str(prm.dtype), batch_size=prm.batch_size, system_prompt=system_prompt,
                           device=device, penalty_scale=prm.get("penalty_scale"))


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    with tracked_stage(cfg, run_dir) as tracking:
        return _evaluate(cfg, run_dir, tracking, started)


def _advance(progress: tqdm, item: dict[str, Any]) -> None:
    progress.update(1)


def _evaluate(cfg: DictConfig, run_dir: Path, tracking: RunLoggers, started: float) -> dict[str, Any]:
    stage = cfg.stage
    policy_prompt, prm_prompt = system_prompts(cfg)
    decode = decode_choice(cfg.decode.selection, cfg.decode.aggregation, int(cfg.decode.n),
                           has_prm=bool(stage.prm.path), greedy_sampled=bool(stage.greedy))
    model = instantiate(cfg.model)
    backend = build_backend(cfg, model)
    scorer = load_scorer(stage.prm, prm_prompt, getattr(backend, "device", "cpu"))
    settings = EvaluationSettings(
        n=stage.n, temperature=stage.temperature, top_p=stage.top_p, max_tokens=stage.max_tokens,
        greedy=stage.greedy, last_line_fallback=stage.last_line_fallback, items_per_call=stage.items_per_call,
        system_prompt=policy_prompt, selections=tuple(stage.selections) if scorer else ("sc",),
        aggregations=tuple(stage.aggregations), aggregation=cfg.decode.aggregation,
        subsample_rounds=stage.subsample_rounds, bootstrap=stage.bootstrap, seed=cfg.seed,
    )
    prepare_run_dir(run_dir)

    evaluations: list[BenchmarkEvaluation] = []
    for entry in cfg.suite.benchmarks:
        path = str(entry.path)
        spec = DataSpec(name=entry.name, format=entry.format, path=path,
                        limit=stage.limit, skip_invalid=stage.skip_invalid, dedupe=stage.dedupe)
        if not Path(path).exists():  # an optional entry: preflight refused the run for any other
            log.warning("benchmark %s: %s not found, skipped (optional: true)", entry.name, path)
            continue
        problems = load_problems(spec).problems
        if not problems:
            log.warning("benchmark %s: no items (stage.limit=%s), skipped", entry.name, stage.limit)
            continue
        progress = tqdm(total=len(problems), desc=entry.name, unit="item", dynamic_ncols=True)
        evaluations.append(evaluate_benchmark(entry.name, problems, backend,
                                              scorer.score_chains if scorer else None, settings, decode,
                                              run_dir, on_item=partial(_advance, progress)))
        progress.close()

    if not evaluations:
        raise ValueError("no benchmark of the suite was found; check suite.benchmarks paths")
    diagnostics = {}
    if scorer is not None:
        trees = stage.diagnostics.trees
        diagnostics = write_diagnostics(run_dir, [item for e in evaluations for item in e.items],
                                        cfg.decode.aggregation, scorer,
                                        [trees] if isinstance(trees, str) else list(trees or []),
                                        bins=stage.diagnostics.bins)
    rows = write_results(run_dir, evaluations, decode, settings, has_prm=scorer is not None)
    macro = rows[-1]
    metrics = {
        "stage": "evaluate",
        "model": model.id,
        "prm": stage.prm.path,
        "wall_seconds": round(time.perf_counter() - started, 3),
        "decode": decode.selection,
        "decode_fallback_from": decode.fallback_from,
        "macro_" + decode.selection: macro["decode"],
        "macro_decode_ci": [macro["decode_ci_low"], macro["decode_ci_high"]],
        "macro_unparseable": macro["unparseable"],
        **generation_counts(evaluations),
        **diagnostics,
        **backend.stats.as_dict(),
        **peak_memory_mb(),
    }
    write_json(run_dir / "metrics.json", metrics)
    tracking.log_table("results", list(COLUMNS), [[r.get(c) for c in COLUMNS] for r in rows])
    grid_rows = [row for e in evaluations for row in e.grid]
    if grid_rows:
        tracking.log_table("grid", list(grid_rows[0]), [list(r.values()) for r in grid_rows])
    for evaluation in evaluations:  # the accuracy-vs-N plots the pipeline drew
        plot = run_dir / "plots" / f"{evaluation.name}.png"
        if plot.exists():
            tracking.log_image(f"accuracy_vs_n/{evaluation.name}", plot)
    tracking.log_metrics(metrics)
    backend.close()
    return metrics
