"""The evaluation of a suite, benchmark by benchmark, and what it writes to the run directory:
``cache/`` (samples and scores), ``predictions/``, ``plots/``, ``results.md``/``results.csv``,
``grid.csv``, and with a PRM ``diagnostics.md``, ``abstention.csv`` and ``calibration.csv``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsss.data.records import Problem
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
    decode_n,
    header,
    macro_average,
    summarise,
)
from medsss.evaluation.sampling import sample_and_score
from medsss.generation.base import Backend
from medsss.io import write_jsonl

OUTPUT_FOLDERS = ("cache", "predictions", "plots")


@dataclass(frozen=True)
class EvaluationSettings:
    """How candidates are sampled (``n`` per item, plus one greedy sample with ``greedy``) and
    evaluated: the ``selections`` that run, each PRM selection under every one of
    ``aggregations``; ``aggregation`` is the one the results table and plots use."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int
    greedy: bool
    last_line_fallback: bool
    items_per_call: int
    system_prompt: str | None
    selections: tuple[str, ...]
    aggregations: tuple[str, ...]
    aggregation: str
    subsample_rounds: int
    bootstrap: int
    seed: int


@dataclass
class BenchmarkEvaluation:
    """One benchmark's cached items, its grid rows (with a ``benchmark`` column) and its results row."""

    name: str
    items: list[dict[str, Any]]
    grid: list[dict[str, Any]]
    result: BenchmarkResult


def prepare_run_dir(run_dir: Path) -> None:
    for folder in OUTPUT_FOLDERS:
        (run_dir / folder).mkdir(parents=True, exist_ok=True)


def evaluate_benchmark(name: str, problems: Sequence[Problem], backend: Backend,
                       score_chains: Callable[[list[tuple[str, list[str]]]], list[list[float]]] | None,
                       settings: EvaluationSettings, decode: DecodeChoice, run_dir: Path,
                       on_item: Callable[[dict[str, Any]], None] | None = None) -> BenchmarkEvaluation:
    """Sample and score ``problems`` once (``cache/<name>.jsonl``; a rerun samples only what is
    missing), then every strategy offline: its grid, its results row, ``predictions/<name>.jsonl``
    and ``plots/<name>.png``."""
    items = sample_and_score(
        problems, backend, score_chains, run_dir / "cache" / f"{name}.jsonl",
        n=settings.n, temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_tokens,
        system_prompt=settings.system_prompt, greedy=settings.greedy, fallback=settings.last_line_fallback,
        items_per_call=settings.items_per_call, seed=settings.seed, on_item=on_item,
    )
    grid = accuracy_grid(items, list(settings.selections), list(settings.aggregations),
                         rounds=settings.subsample_rounds, bootstrap=settings.bootstrap, seed=settings.seed)
    result = summarise(name, items, strategies=list(settings.selections), aggregation=settings.aggregation,
                       decode=decode, bootstrap=settings.bootstrap, seed=settings.seed)
    write_predictions(run_dir / "predictions" / f"{name}.jsonl", items, decode)
    plot_accuracy_vs_n(grid, name, run_dir / "plots" / f"{name}.png",
                       [("sc", "-")] + [(s, settings.aggregation) for s in settings.selections if s != "sc"])
    return BenchmarkEvaluation(name, items, [{"benchmark": name, **row} for row in grid], result)


def write_predictions(path: Path, items: list[dict], decode: DecodeChoice) -> None:
    """Per item, the answer of the decode strategy: the same decisions as the ``decode`` column."""
    n = decode_n(decode, candidate_count(items))
    predictions = []
    for item in items:
        picked = decoded(item, decode.selection, decode.aggregation, n) or {}
        answer = picked.get("answer")
        predictions.append({"id": item["id"], "gold": item["gold"], "answer": answer,
                            "correct": answer_correct(item, answer), "text": picked.get("text")})
    write_jsonl(path, predictions)


def write_results(run_dir: Path, evaluations: Sequence[BenchmarkEvaluation], decode: DecodeChoice,
                  settings: EvaluationSettings, has_prm: bool) -> list[dict[str, Any]]:
    """``results.md``, ``results.csv`` (per benchmark and the macro average) and ``grid.csv``;
    returns the results rows, the macro average last."""
    results = [e.result for e in evaluations]
    rows = [r.row for r in results]
    rows.append(macro_average(results, bootstrap=settings.bootstrap, seed=settings.seed))
    not_run = {column: NOT_RUN for column in PRM_STRATEGIES if column not in settings.selections}
    (run_dir / "results.md").write_text(
        header(rows, decode=decode, bootstrap=settings.bootstrap, seed=settings.seed, has_prm=has_prm) + "\n"
        + markdown_table(rows, COLUMNS, labels=column_labels(rows), missing=not_run)
    )
    write_csv(rows, run_dir / "results.csv")
    write_csv([row for e in evaluations for row in e.grid], run_dir / "grid.csv")
    return rows


def generation_counts(evaluations: Sequence[BenchmarkEvaluation]) -> dict[str, int]:
    """Generations sampled, and how many the grid would have sampled without the cache (every
    cell its own n candidates per item)."""
    sampled = sum(len(item["candidates"]) + (1 if item.get("greedy") else 0)
                  for e in evaluations for item in e.items)
    without_cache = sum(e.result.row["items"] * sum(g["n"] for g in e.grid) for e in evaluations)
    return {"generations_sampled": sampled, "generations_without_cache": without_cache,
            "grid_cells": sum(len(e.grid) for e in evaluations)}


def write_diagnostics(run_dir: Path, items: list[dict], aggregation: str, scorer: Any,
                      held_out_trees: Sequence[str] = (), bins: int = 10) -> dict[str, Any]:
    """Abstention by P-VS margin over every evaluated item; with ``held_out_trees``, the PRM's
    calibration against rollout values and its first-error F1 on those trees. Writes
    ``abstention.csv``, ``calibration.csv``, their plots and ``diagnostics.md``."""
    from medsss.evaluation.diagnostics import abstention_curve, calibration, first_error_f1
    from medsss.evaluation.report import plot_abstention, plot_reliability
    from medsss.labels.chains import read_trees
    from medsss.labels.views import prm_rows

    out: dict[str, Any] = {}
    curve = abstention_curve(items, aggregation)
    write_csv(curve, run_dir / "abstention.csv")
    plot_abstention(curve, run_dir / "plots" / "abstention.png")
    lines = ["All numbers in %.\n\n## Abstention (P-VS vote margin)\n",
             markdown_table(curve, ["coverage", "answered", "accuracy"])]
    if held_out_trees:
        rows = prm_rows(read_trees(held_out_trees), rule="soft", require_both=False)
        scores = scorer.score_chains([(r["question"], r["steps"]) for r in rows])
        flat_scores = [s for chain in scores for s in chain]
        flat_values = [v for r in rows for v in r["values"][1:]]
        table, ece = calibration(flat_scores, flat_values, bins=bins)
        first = first_error_f1([(r["values"], s) for r, s in zip(rows, scores, strict=True)])
        write_csv(table, run_dir / "calibration.csv")
        plot_reliability(table, ece, run_dir / "plots" / "reliability.png")
        out.update({"prm_ece": ece, "prm_first_error_f1": first["f1"],
                    "prm_diagnostic_steps": len(flat_scores)})
        lines += [f"\n## Calibration against rollout values (ECE {ece:.3f}, {len(flat_scores)} steps)\n",
                  markdown_table(table, ["bin", "count", "mean_score", "mean_value"]),
                  f"\n## First-error detection\n\nF1 {first['f1']:.3f} "
                  f"(error chains {first['chains_with_error']}, "
                  f"exact {first['error_accuracy']:.3f}; clean chains {first['chains_without']}, "
                  f"unflagged {first['correct_accuracy']:.3f})\n"]
    (run_dir / "diagnostics.md").write_text("\n".join(lines))
    return out
