"""Stage ``curriculum``: the current policy's pass rate on every candidate seed question, and the
seed file of the questions to search next (:mod:`medsss.curriculum`).

Outputs: ``pass_rates.jsonl`` (one line per question, appended as each finishes: a killed run
resumes with the questions already answered), ``seeds.jsonl`` (the kept questions as plain medsss
records: ``data=jsonl data.path=<run>/seeds.jsonl``), ``pass_rates.md``/``.csv`` (by source) and
``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.auto import tqdm

from medsss.curriculum import Band, PassRate, attempt_process, pass_rate_table, seed_record, select_curriculum
from medsss.data.loaders import load_problems
from medsss.data.prompts import build_messages
from medsss.data.records import Problem
from medsss.evaluation.report import markdown_table, write_csv
from medsss.io import read_jsonl, write_json, write_jsonl
from medsss.resources import peak_memory_mb
from medsss.search.mcts import SearchConfig, TreeSearch
from medsss.search.scheduler import run_searches
from medsss.stages.common import build_backend, tracked_stage

log = logging.getLogger(__name__)

PASS_RATES_FILE = "pass_rates.jsonl"
SEEDS_FILE = "seeds.jsonl"


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    with tracked_stage(cfg, run_dir) as tracking:
        stage = cfg.stage
        band = Band(low=stage.band.low, high=stage.band.high, floor_per_source=stage.floor_per_source,
                    max_per_source=stage.max_per_source)
        data = load_problems(instantiate(cfg.data))
        search: SearchConfig = instantiate(cfg.search)
        model = instantiate(cfg.model)
        k = int(stage.k)
        done = _answered(run_dir / PASS_RATES_FILE, k)
        todo = [p for p in data.problems if p.id not in done]
        log.info("curriculum: %d candidate questions, %d answered before, %d to answer %d times",
                 len(data.problems), len(data.problems) - len(todo), len(todo), k)
        backend = build_backend(cfg, model) if todo else None
        failed: dict[str, str] = {}
        if backend is not None:
            progress = tqdm(total=len(todo), unit="question", desc="curriculum", dynamic_ncols=True)
            system_prompt = cfg.prompt.system

            def start(problem: Problem):
                return attempt_process(TreeSearch(problem, build_messages(problem.question, system_prompt),
                                                  search), k)

            def on_done(problem: Problem, rate: PassRate) -> None:
                with open(run_dir / PASS_RATES_FILE, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(rate.to_dict(), ensure_ascii=False) + "\n")
                    handle.flush()
                done[problem.id] = rate
                progress.update(1)

            def on_failed(problem: Problem, reason: str) -> None:
                failed[problem.id] = reason  # not written: the next run tries it again
                progress.update(1)

            try:
                run_searches(todo, start, backend, search.concurrent_trees, on_done, on_failed)
            finally:
                progress.close()
                backend.close()

        rates = [done[p.id] for p in data.problems if p.id in done]
        kept = select_curriculum(rates, band)
        problems = {p.id: p for p in data.problems}
        write_jsonl(run_dir / SEEDS_FILE, [seed_record(problems[r.id], r) for r in kept])
        table = pass_rate_table(rates, kept, k)
        write_csv(table, run_dir / "pass_rates.csv")
        (run_dir / "pass_rates.md").write_text(
            f"Pass rate of the policy over {k} attempts per question; kept: pass rate in "
            f"[{band.low}, {band.high}], at least {band.floor_per_source} per source"
            + (f", at most {band.max_per_source} per source" if band.max_per_source else "") + ".\n\n"
            + markdown_table(table, list(table[0]) if table else []), encoding="utf-8")
        overall = table[-1] if table else {}
        metrics = {
            "stage": "curriculum",
            "model": model.id,
            "data": str(data.path),
            "questions": len(data.problems),
            "answered": len(rates),
            "failed_this_run": len(failed),
            "kept": len(kept),
            "attempts_per_question": k,
            "mean_pass_rate": overall.get("mean_pass_rate"),
            "kept_mean_pass_rate": overall.get("kept_mean_pass_rate"),
            "wall_seconds": round(time.perf_counter() - started, 3),
            **(backend.stats.as_dict() if backend is not None else {}),
            **peak_memory_mb(),
        }
        write_json(run_dir / "metrics.json", metrics)
        tracking.log_metrics({"curriculum/" + k_: v for k_, v in metrics.items()})
        if table:
            tracking.log_table("pass_rates", list(table[0]), [list(r.values()) for r in table])
        if failed:
            log.warning("curriculum: %d questions failed (retried on the next run): %s", len(failed),
                        "; ".join(f"{i}: {r}" for i, r in list(failed.items())[:5]))
        log.info("curriculum done: %d of %d questions kept -> %s", len(kept), len(rates),
                 run_dir / SEEDS_FILE)
        return metrics


def _answered(path: Path, k: int) -> dict[str, PassRate]:
    """Pass rates already written (a torn last line from a killed run is dropped and rewritten);
    rows from another ``k`` are answered again."""
    if not path.exists():
        return {}
    rows = [PassRate.from_dict(row) for row in read_jsonl(path, repair_tail=True)]
    return {r.id: r for r in rows if r.attempts == k}
