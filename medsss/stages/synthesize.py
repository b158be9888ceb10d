"""Stage ``synthesize``: MCTS over the configured problems, into a resumable tree store."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.auto import tqdm

from medsss.data.loaders import load_problems
from medsss.data.prompts import build_messages
from medsss.data.records import Problem
from medsss.generation.base import Backend
from medsss.io import write_json
from medsss.labels.chains import sample_chain_table
from medsss.resources import peak_memory_mb
from medsss.search.export import write_trajectories
from medsss.search.mcts import SearchConfig, SearchResult, TreeSearch
from medsss.search.scheduler import run_searches
from medsss.search.store import TreeStore, config_hash
from medsss.stages.common import build_backend, tracked_stage
from medsss.tracking import RunLoggers
from medsss.viewer.table import tree_table

log = logging.getLogger(__name__)


def synthesis_hash(search: SearchConfig, model_id: str, system_prompt: str | None) -> str:
    # Scheduling does not change what a tree is, so a resumed run may use other concurrency.
    settings = {k: v for k, v in dataclasses.asdict(search).items() if k != "concurrent_trees"}
    return config_hash({"search": settings, "model": model_id, "system_prompt": system_prompt})


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    with tracked_stage(cfg, run_dir) as tracking:
        return _synthesize(cfg, run_dir, tracking, started)


def _synthesize(cfg: DictConfig, run_dir: Path, tracking: RunLoggers, started: float) -> dict[str, Any]:
    data = load_problems(instantiate(cfg.data))
    for message in data.skipped:
        log.warning("skipped: %s", message)
    search: SearchConfig = instantiate(cfg.search)
    model = instantiate(cfg.model)
    system_prompt = cfg.prompt.system
    store = TreeStore(
        run_dir, synthesis_hash(search, model.id, system_prompt), cfg.stage.allow_config_change
    )
    todo = [p for p in data.problems if p.id not in store]
    log.info(
        "%d problems from %s: %d already stored, %d to search (%d failed before, retried)",
        len(data.problems), data.path, len(data.problems) - len(todo), len(todo),
        sum(1 for p in todo if p.id in store.earlier_failures),
    )

    counters = {"done": 0, "failed": 0, "nodes": 0, "unanswered_after_forcing": 0}
    backend = build_backend(cfg, model) if todo else None
    search_started = time.perf_counter()

    if backend is not None:
        progress = tqdm(total=len(todo), unit="problem", desc="synthesize", dynamic_ncols=True)

        def start_search(problem: Problem):
            return TreeSearch(problem, build_messages(problem.question, system_prompt), search).run()

        def on_done(problem: Problem, result: SearchResult) -> None:
            store.append(tree_record(problem, result, model.id))
            counters["done"] += 1
            counters["nodes"] += result.stats["nodes"]
            counters["unanswered_after_forcing"] += result.stats["unanswered_after_forcing"]
            progress.update(1)
            live = _live_metrics(backend, search_started, counters)
            tracking.log_metrics({"synthesis/" + k: v for k, v in live.items()},
                                 step=counters["done"] + counters["failed"])

        def on_failed(problem: Problem, reason: str) -> None:
            store.record_failure(problem.id, reason)
            counters["failed"] += 1
            progress.update(1)

        def on_tick() -> None:
            elapsed = max(time.perf_counter() - search_started, 1e-9)
            progress.set_postfix(
                nodes=counters["nodes"], failed=counters["failed"],
                tok_s=f"{backend.stats.generated_tokens / elapsed:.0f}", refresh=False,
            )

        try:
            run_searches(todo, start_search, backend, search.concurrent_trees, on_done, on_failed, on_tick)
        finally:
            progress.close()

    counts = write_trajectories(store.records(), run_dir)
    wall = time.perf_counter() - started
    search_wall = time.perf_counter() - search_started
    metrics = {
        "stage": "synthesize",
        "model": model.id,
        "data": str(data.path),
        "problems": len(data.problems),
        "skipped_rows": len(data.skipped),
        "searched_this_run": counters["done"],
        "failed_this_run": counters["failed"],
        "stored_trees": len(store),
        "nodes_this_run": counters["nodes"],
        # forced answers that still stated none (free-text items; choice items are constrained)
        "unanswered_after_forcing": counters["unanswered_after_forcing"],
        "wall_seconds": round(wall, 3),
        "search_seconds": round(search_wall, 3),
        "problems_per_hour": round(3600 * counters["done"] / search_wall, 2) if counters["done"] else 0.0,
        "concurrent_trees": search.concurrent_trees,
        **{f"trajectories_{k}": v for k, v in counts.items()},
        **(backend.stats.as_dict() if backend is not None else {}),
        **peak_memory_mb(),
    }
    write_json(run_dir / "metrics.json", metrics)
    tracking.log_metrics({"synthesis/" + k: v for k, v in metrics.items()})
    tracking.log_table("sample_trajectories", *sample_chain_table(store.records(), cfg.stage.table_rows))
    if tracking.loggers:  # drawing the trees costs a page each: only when something logs them
        columns, rows, pages = tree_table(store.records(), cfg.stage.table_rows, str(store.path))
        tracking.log_html_table("trees", columns, rows, "tree", pages)
    if backend is not None:
        backend.close()
    log.info(
        "synthesis done: %s\n  %d trees stored: %d correct and %d incorrect chains, %d problems with both\n"
        "  %.1f problems/hour (%d searched in %.0f s of search, %.0f s wall)\n"
        "  next: train on these trees with `python -m medsss.run +experiment=sft_policy data.trees=%s` "
        "(or +experiment=prm_soft); metrics.json and trajectories.jsonl hold the details",
        run_dir, len(store), counts["pos_chains"], counts["neg_chains"], counts["problems_with_both"],
        metrics["problems_per_hour"], counters["done"], search_wall, wall, run_dir,
    )
    return metrics


def tree_record(problem: Problem, result: SearchResult, model_id: str) -> dict[str, Any]:
    return {
        "id": problem.id,
        "question": problem.question,
        "answer": problem.answer,
        "kind": problem.kind,
        "options": problem.options,
        "source": problem.source,
        "model": model_id,
        "stop_reason": result.stop_reason,
        "iterations": result.iterations,
        "stats": result.stats,
        "finished_at": time.time(),
        **result.tree.to_dict(),
    }


def _live_metrics(backend: Backend, started: float, counters: dict[str, int]) -> dict[str, float]:
    elapsed = max(time.perf_counter() - started, 1e-9)
    return {
        "problems_done": counters["done"],
        "problems_failed": counters["failed"],
        "nodes": counters["nodes"],
        "generated_tokens_per_second": backend.stats.generated_tokens / elapsed,
        "problems_per_hour": 3600 * counters["done"] / elapsed,
        "mean_batch_size": backend.stats.mean_batch_size,
        "prefix_cache_hit_rate": backend.stats.cached_prompt_tokens / max(backend.stats.prompt_tokens, 1),
    }
