"""Stage ``evaluate``: sample and score once per benchmark, then every strategy offline."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from medsss.data.loaders import DataSpec, load_problems
from medsss.evaluation.grid import accuracy_grid, candidate_count
from medsss.evaluation.items import answer_correct, decoded
from medsss.evaluation.report import markdown_table, plot_accuracy_vs_n, write_csv
from medsss.evaluation.results import (
    COLUMNS,
    NOT_RUN,
    PRM_STRATEGIES,
    BenchmarkResult,
    DecodeChoice,
    column_labels,
    decode_choice,
    decode_n,
    header,
    macro_average,
    summarise,
)
from medsss.evaluation.sampling import sample_and_score
from medsss.metrics import peak_memory_mb, write_json

log = logging.getLogger(__name__)


def load_scorer(prm: DictConfig, system_prompt: str | None, device: str):
    """The PRM scorer of ``stage.prm`` (None without a PRM: score-free strategies only)."""
    if not prm.path:
        return None
    from transformers import AutoTokenizer

    from medsss.training.prm_model import PRMScorer, ProcessRewardModel

    from medsss.generation.hf import resolve_dtype

    tokenizer = AutoTokenizer.from_pretrained(prm.get("tokenizer") or prm.path)
    if prm.layout == "scalar":
        model = ProcessRewardModel.from_causal_lm(prm.path, resolve_dtype(prm.dtype, device))
    else:
        model = load_token_classifier(prm.path, prm.get("base"))
    return PRMScorer(model, tokenizer, system_prompt, layout=prm.layout, device=device, batch_size=prm.batch_size)


def load_token_classifier(path: str, base: str | None):
    """The released MedSSS PRM layout: a two-class token classifier, as a LoRA adapter on ``base``
    (or a full model at ``path``)."""
    from transformers import AutoModelForTokenClassification

    if base:
        from peft import PeftModel

        return PeftModel.from_pretrained(AutoModelForTokenClassification.from_pretrained(base, num_labels=2), path)
    return AutoModelForTokenClassification.from_pretrained(path, num_labels=2)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    stage = cfg.stage
    policy_prompt, prm_prompt = system_prompts(cfg)
    decode = decode_choice(cfg.decode.selection, cfg.decode.aggregation, int(cfg.decode.n),
                           has_prm=bool(stage.prm.path), greedy_sampled=bool(stage.greedy))
    model = instantiate(cfg.model)
    backend = instantiate(cfg.backend)(model=model)
    scorer = load_scorer(stage.prm, prm_prompt, getattr(backend, "device", "cpu"))
    selections = list(stage.selections) if scorer else ["sc"]
    tracker = instantiate(cfg.logger)
    tracker.start(OmegaConf.to_container(cfg, resolve=True), run_dir)
    for folder in ("cache", "predictions", "plots"):
        (run_dir / folder).mkdir(exist_ok=True)

    results: list[BenchmarkResult] = []
    grid_rows: list[dict[str, Any]] = []
    all_items: list[dict[str, Any]] = []
    for entry in cfg.suite.benchmarks:
        spec = DataSpec(name=entry.name, format=entry.format, path=str(entry.path),
                        limit=stage.limit, skip_invalid=stage.skip_invalid)
        if not Path(spec.path).exists():
            log.warning("benchmark %s: %s not found, skipped", entry.name, spec.path)
            continue
        problems = load_problems(spec).problems
        if not problems:
            log.warning("benchmark %s: no items (stage.limit=%s), skipped", entry.name, stage.limit)
            continue
        progress = tqdm(total=len(problems), desc=entry.name, unit="item", dynamic_ncols=True)
        items = sample_and_score(
            problems, backend, scorer.score_chains if scorer else None, run_dir / "cache" / f"{entry.name}.jsonl",
            n=stage.n, temperature=stage.temperature, top_p=stage.top_p, max_tokens=stage.max_tokens,
            system_prompt=policy_prompt, greedy=stage.greedy, fallback=stage.last_line_fallback,
            items_per_call=stage.items_per_call, seed=cfg.seed, on_item=lambda _: progress.update(1),
        )
        progress.close()
        all_items += items
        grid = accuracy_grid(items, selections, list(stage.aggregations), rounds=stage.subsample_rounds,
                             bootstrap=stage.bootstrap, seed=cfg.seed)
        grid_rows += [{"benchmark": entry.name, **row} for row in grid]
        results.append(summarise(entry.name, items, strategies=selections, aggregation=cfg.decode.aggregation,
                                 decode=decode, bootstrap=stage.bootstrap, seed=cfg.seed))
        write_predictions(run_dir / "predictions" / f"{entry.name}.jsonl", items, decode)
        plot_accuracy_vs_n(grid, entry.name, run_dir / "plots" / f"{entry.name}.png",
                           [("sc", "-")] + [(s, cfg.decode.aggregation) for s in selections if s != "sc"])

    if not results:
        raise ValueError("no benchmark of the suite was found; check suite.benchmarks paths")
    diagnostics = _diagnostics(cfg, run_dir, scorer, all_items) if scorer else {}
    rows = [r.row for r in results] + [macro_average(results, bootstrap=stage.bootstrap, seed=cfg.seed)]
    not_run = {column: NOT_RUN for column in PRM_STRATEGIES if column not in selections}
    (run_dir / "results.md").write_text(
        header(rows, decode=decode, bootstrap=stage.bootstrap, seed=cfg.seed, has_prm=scorer is not None) + "\n"
        + markdown_table(rows, COLUMNS, labels=column_labels(rows), missing=not_run)
    )
    write_csv(rows, run_dir / "results.csv")
    write_csv(grid_rows, run_dir / "grid.csv")

    sampled = sum(len(item["candidates"]) + (1 if item.get("greedy") else 0) for item in all_items)
    # Without the cache, every grid cell would sample (and score) its own n candidates per item.
    without_cache = sum(r.row["items"] * sum(g["n"] for g in grid_rows if g["benchmark"] == r.row["benchmark"])
                        for r in results)
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
        "generations_sampled": sampled,
        "generations_without_cache": without_cache,
        "grid_cells": len(grid_rows),
        **diagnostics,
        **backend.stats.as_dict(),
        **peak_memory_mb(),
    }
    write_json(run_dir / "metrics.json", metrics)
    tracker.log_table("results", list(COLUMNS), [[r.get(c) for c in COLUMNS] for r in rows])
    if grid_rows:
        tracker.log_table("grid", list(grid_rows[0]), [list(r.values()) for r in grid_rows])
    tracker.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    tracker.finish()
    backend.close()
    return metrics


def system_prompts(cfg: DictConfig) -> tuple[str | None, str | None]:
    """The policy's and the PRM's system prompts: ``stage.policy_system_prompt`` and
    ``stage.prm.system_prompt`` (both default to the project's ``prompt.system``; the released
    MedSSS models use their own, see ``+experiment=eval_medsss_8b``)."""
    stage = cfg.stage
    policy = stage.policy_system_prompt if "policy_system_prompt" in stage else cfg.prompt.system
    prm = stage.prm.system_prompt if "system_prompt" in stage.prm else cfg.prompt.system
    return policy or None, prm or None


def _diagnostics(cfg: DictConfig, run_dir: Path, scorer, items: list[dict]) -> dict[str, Any]:
    """Abstention by P-VS margin over every evaluated item; with ``stage.diagnostics.trees``, the
    PRM's calibration against rollout values and its first-error F1 on those (held-out) trees."""
    from medsss.evaluation.diagnostics import abstention_curve, calibration, first_error_f1
    from medsss.evaluation.report import plot_abstention, plot_reliability
    from medsss.labels.views import prm_rows, read_trees

    out: dict[str, Any] = {}
    curve = abstention_curve(items, cfg.decode.aggregation)
    write_csv(curve, run_dir / "abstention.csv")
    plot_abstention(curve, run_dir / "plots" / "abstention.png")
    lines = ["All numbers in %.\n\n## Abstention (P-VS vote margin)\n", markdown_table(curve, ["coverage", "answered", "accuracy"])]
    trees = cfg.stage.diagnostics.trees
    if trees:
        rows = prm_rows(read_trees([trees] if isinstance(trees, str) else list(trees)), rule="soft",
                        require_both=False)
        scores = scorer.score_chains([(r["question"], r["steps"]) for r in rows])
        flat_scores = [s for chain in scores for s in chain]
        flat_values = [v for r in rows for v in r["values"][1:]]
        table, ece = calibration(flat_scores, flat_values, bins=cfg.stage.diagnostics.bins)
        first = first_error_f1([(r["values"], s) for r, s in zip(rows, scores)])
        write_csv(table, run_dir / "calibration.csv")
        plot_reliability(table, ece, run_dir / "plots" / "reliability.png")
        out.update({"prm_ece": ece, "prm_first_error_f1": first["f1"], "prm_diagnostic_steps": len(flat_scores)})
        lines += [f"\n## Calibration against rollout values (ECE {ece:.3f}, {len(flat_scores)} steps)\n",
                  markdown_table(table, ["bin", "count", "mean_score", "mean_value"]),
                  f"\n## First-error detection\n\nF1 {first['f1']:.3f} (error chains {first['chains_with_error']}, "
                  f"exact {first['error_accuracy']:.3f}; clean chains {first['chains_without']}, "
                  f"unflagged {first['correct_accuracy']:.3f})\n"]
    (run_dir / "diagnostics.md").write_text("\n".join(lines))
    return out


def write_predictions(path: Path, items: list[dict], decode: DecodeChoice) -> None:
    """Per item, the answer of the decode strategy: the same decisions as the ``decode`` column."""
    n = decode_n(decode, candidate_count(items))
    with open(path, "w", encoding="utf-8") as handle:
        for item in items:
            picked = decoded(item, decode.selection, decode.aggregation, n) or {}
            answer = picked.get("answer")
            handle.write(json.dumps({"id": item["id"], "gold": item["gold"], "answer": answer,
                                     "correct": answer_correct(item, answer), "text": picked.get("text")},
                                    ensure_ascii=False) + "\n")
