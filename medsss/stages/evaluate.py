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
from medsss.data.verify import is_correct
from medsss.decoding import select
from medsss.evaluation.grid import accuracy_grid, greedy_accuracy, pass_at_k, powers_of_two
from medsss.evaluation.report import markdown_table, plot_accuracy_vs_n, write_csv
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
    model = instantiate(cfg.model)
    backend = instantiate(cfg.backend)(model=model)
    scorer = load_scorer(stage.prm, cfg.prompt.system, getattr(backend, "device", "cpu"))
    selections = list(stage.selections) if scorer else ["sc"]
    tracker = instantiate(cfg.logger)
    tracker.start(OmegaConf.to_container(cfg, resolve=True), run_dir)
    for folder in ("cache", "predictions", "plots"):
        (run_dir / folder).mkdir(exist_ok=True)

    results, grid_rows, all_items = [], [], []
    for entry in cfg.suite.benchmarks:
        spec = DataSpec(name=entry.name, format=entry.format, path=str(entry.path),
                        limit=stage.limit, skip_invalid=stage.skip_invalid)
        if not Path(spec.path).exists():
            log.warning("benchmark %s: %s not found, skipped", entry.name, spec.path)
            continue
        problems = load_problems(spec).problems
        progress = tqdm(total=len(problems), desc=entry.name, unit="item", dynamic_ncols=True)
        items = sample_and_score(
            problems, backend, scorer.score_chains if scorer else None, run_dir / "cache" / f"{entry.name}.jsonl",
            n=stage.n, temperature=stage.temperature, top_p=stage.top_p, max_tokens=stage.max_tokens,
            system_prompt=cfg.prompt.system, greedy=stage.greedy, fallback=stage.last_line_fallback,
            items_per_call=stage.items_per_call, seed=cfg.seed, on_item=lambda _: progress.update(1),
        )
        progress.close()
        all_items += items
        grid = accuracy_grid(items, selections, list(stage.aggregations), rounds=stage.bootstrap, seed=cfg.seed)
        grid_rows += [{"benchmark": entry.name, **row} for row in grid]
        results.append(_summary(entry.name, items, grid, cfg.decode, stage.n))
        _write_predictions(run_dir / "predictions" / f"{entry.name}.jsonl", items, cfg.decode)
        plot_accuracy_vs_n(grid, entry.name, run_dir / "plots" / f"{entry.name}.png",
                           [("sc", "-")] + [(s, cfg.decode.aggregation) for s in selections if s != "sc"])

    if not results:
        raise ValueError("no benchmark of the suite was found; check suite.benchmarks paths")
    diagnostics = _diagnostics(cfg, run_dir, scorer, all_items) if scorer else {}
    results.append(_macro(results))
    columns = ["benchmark", "items", "greedy", "sc", "bon", "pvs", "vote_mean", "decode", "pass@1", f"pass@{stage.n}"]
    (run_dir / "results.md").write_text(
        f"Accuracy (%) at N={stage.n}; PRM strategies aggregate steps by `{cfg.decode.aggregation}`; "
        f"`decode` is `{cfg.decode.selection}`.\n\n" + markdown_table(results, columns)
    )
    write_csv(results, run_dir / "results.csv")
    write_csv(grid_rows, run_dir / "grid.csv")

    sampled = sum(r["items"] for r in results[:-1]) * (stage.n + (1 if stage.greedy else 0))
    # Without the cache, every grid cell would sample (and score) its own n candidates per item.
    without_cache = sum(r["items"] * sum(g["n"] for g in grid_rows if g["benchmark"] == r["benchmark"])
                        for r in results[:-1])
    metrics = {
        "stage": "evaluate",
        "model": model.id,
        "prm": stage.prm.path,
        "wall_seconds": round(time.perf_counter() - started, 3),
        "macro_" + cfg.decode.selection: results[-1]["decode"],
        "generations_sampled": sampled,
        "generations_without_cache": without_cache,
        "grid_cells": len(grid_rows),
        **diagnostics,
        **backend.stats.as_dict(),
        **peak_memory_mb(),
    }
    write_json(run_dir / "metrics.json", metrics)
    tracker.log_table("results", columns, [[r.get(c) for c in columns] for r in results])
    tracker.log_table("grid", list(grid_rows[0]), [list(r.values()) for r in grid_rows])
    tracker.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    tracker.finish()
    backend.close()
    return metrics


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


def _at(grid: list[dict], selection: str, aggregation: str, n: int) -> float | None:
    for row in grid:
        if row["selection"] == selection and row["aggregation"] in (aggregation, "-") and row["n"] == n:
            return row["accuracy"]
    return None


def _summary(name: str, items: list[dict], grid: list[dict], decode: DictConfig, n: int) -> dict[str, Any]:
    top = max(powers_of_two(n)) if n else 1
    return {
        "benchmark": name,
        "items": len(items),
        "greedy": greedy_accuracy(items),
        **{s: _at(grid, s, decode.aggregation, top) for s in ("sc", "bon", "pvs", "vote_mean")},
        "decode": _at(grid, decode.selection, decode.aggregation, min(decode.n, top)),
        "pass@1": pass_at_k(items, 1),
        f"pass@{n}": pass_at_k(items, n),
    }


def _macro(results: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"benchmark": "macro average", "items": sum(r["items"] for r in results)}
    for key in results[0]:
        values = [r[key] for r in results if isinstance(r.get(key), float)]
        if key not in ("benchmark", "items") and values:
            row[key] = sum(values) / len(values)
    return row


def _decoded(item: dict, decode: DictConfig) -> dict | None:
    """The candidate the ``decode=`` strategy picks for a cached item (the greedy sample for
    ``greedy``), or None."""
    if decode.selection == "greedy":
        return item.get("greedy")
    pool = item["candidates"][: decode.n]
    chosen = select([(c["answer"], c["step_scores"] or [0.0]) for c in pool], decode.selection, decode.aggregation)
    return pool[chosen] if chosen is not None else None


def _write_predictions(path: Path, items: list[dict], decode: DictConfig) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for item in items:
            picked = _decoded(item, decode) or {}
            answer = picked.get("answer")
            handle.write(json.dumps({"id": item["id"], "gold": item["gold"], "answer": answer,
                                     "correct": is_correct(answer, item["gold"]), "text": picked.get("text")},
                                    ensure_ascii=False) + "\n")
