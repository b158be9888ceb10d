"""``evolve.md`` / ``evolve.csv`` and plots: one row per round from the steps' metrics and results."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medsss.evaluation.report import markdown_table, write_csv
from medsss.evaluation.results import ACCURACY_COLUMNS
from medsss.evolve.manifest import Manifest

STRATEGY_COLUMNS = tuple(c for c in ACCURACY_COLUMNS if c not in ("decode", "pass@N"))


def _ratio(numerator: Any, denominator: Any) -> float | None:
    return round(numerator / denominator, 3) if numerator is not None and denominator else None


def _macro_row(evaluate_dir: Path) -> dict[str, Any]:
    """The macro-average row of an evaluate run's ``results.csv`` (empty when there is none)."""
    path = evaluate_dir / "results.csv"
    if not path.exists():
        return {}
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return rows[-1] if rows else {}


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def round_rows(manifest: Manifest, run_dir: Path) -> list[dict[str, Any]]:
    """Per round: yield of the search, training losses, PRM AUROC and accuracy by strategy."""
    rounds = sorted({r.round for r in manifest.steps.values() if r.status == "done"})
    rows = []
    for k in rounds:
        def metrics(name: str, k: int = k) -> dict[str, Any]:
            record = manifest.get(f"rounds/{k}/{name}")
            return record.metrics if record is not None and record.status == "done" else {}

        synthesis, sft, dpo, prm = metrics("synthesize"), metrics("sft"), metrics("dpo"), metrics("prm")
        trees = synthesis.get("stored_trees")
        row: dict[str, Any] = {
            "round": k,
            "problems": trees,
            "correct_chains_per_problem": _ratio(synthesis.get("trajectories_pos_chains"), trees),
            "incorrect_chains_per_problem": _ratio(synthesis.get("trajectories_neg_chains"), trees),
            "problems_with_both": synthesis.get("trajectories_problems_with_both"),
            "sft_train_loss": sft.get("train_loss"),
            "sft_val_loss": sft.get("val_loss"),
            "dpo_train_loss": dpo.get("train_loss"),
            "dpo_reward_accuracy": dpo.get("val_reward_accuracy", dpo.get("train_reward_accuracy")),
            "prm_train_loss": prm.get("train_loss"),
            "prm_val_loss": prm.get("val_loss"),
            "prm_step_auroc": prm.get("val_step_auroc"),
        }
        # evaluate: the round's trained policy; evaluate_before: the policy that searched it, with
        # the same PRM (its columns are prefixed "before_").
        for step, prefix in (("evaluate", ""), ("evaluate_before", "before_")):
            if not metrics(step):
                continue
            macro = _macro_row(run_dir / "rounds" / str(k) / step)
            for column in STRATEGY_COLUMNS:
                row[prefix + column] = _number(macro.get(column))
                low, high = _number(macro.get(f"{column}_ci_low")), _number(macro.get(f"{column}_ci_high"))
                if low is not None and high is not None:
                    row[f"{prefix}{column}_ci_low"], row[f"{prefix}{column}_ci_high"] = low, high
        rows.append({key: (round(v, 4) if isinstance(v, float) else v) for key, v in row.items()})
    return rows


YIELD_COLUMNS = ("round", "problems", "correct_chains_per_problem", "incorrect_chains_per_problem",
                 "problems_with_both")
TRAINING_COLUMNS = ("round", "sft_train_loss", "sft_val_loss", "dpo_train_loss", "dpo_reward_accuracy",
                    "prm_train_loss", "prm_val_loss", "prm_step_auroc")


def write_report(rows: Sequence[dict[str, Any]], run_dir: Path) -> Path:
    """``evolve.md`` (three tables: search yield, training, benchmark accuracy by strategy, with
    95% item-bootstrap intervals), ``evolve.csv`` and ``plots/evolve.png``."""
    path = run_dir / "evolve.md"
    if not rows:
        path.write_text("# Self-evolution\n\nNo round has finished a step yet.\n", encoding="utf-8")
        return path
    write_csv(list(rows), run_dir / "evolve.csv")
    as_text = [{k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()
                if not k.endswith(("_ci_low", "_ci_high"))} for r in rows]
    accuracy = [prefix + c for prefix in ("before_", "") for c in STRATEGY_COLUMNS
                if any(r.get(prefix + c) is not None for r in rows)]
    parts = [
        "# Self-evolution\n",
        "Per round: the search's yield on its own trees, the training losses, the PRM's held-out step "
        "AUROC, and benchmark accuracy (%, macro over the suite, 95% item-bootstrap interval) of the "
        "round's policy by decoding strategy (`before_*`: the policy that searched the round, scored "
        "with the same PRM). Each step's files are under `rounds/<k>/<step>/`; "
        "`manifest.json` has every step's inputs, config hash and metrics.\n",
        "## Search\n", markdown_table(as_text, YIELD_COLUMNS, missing={c: "-" for c in YIELD_COLUMNS}),
        "\n## Training\n",
        markdown_table(as_text, TRAINING_COLUMNS, missing={c: "-" for c in TRAINING_COLUMNS}),
    ]
    if accuracy:
        parts += ["\n## Benchmark accuracy by strategy\n",
                  markdown_table(list(rows), ("round", *accuracy), missing={c: "not run" for c in accuracy})]
        _plot(rows, accuracy, run_dir / "plots" / "evolve.png")
        parts.append("\n![accuracy by round](plots/evolve.png)\n")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _plot(rows: Sequence[dict[str, Any]], columns: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    rounds = [r["round"] for r in rows]
    for column in columns:
        values = [r.get(column) for r in rows]
        if any(v is not None for v in values):
            left.plot(rounds, [100 * v if v is not None else float("nan") for v in values], marker="o",
                      label=column)
    left.set(xlabel="round", ylabel="accuracy (%)", title="benchmark accuracy")
    left.legend(fontsize=7)
    right.plot(rounds, [r.get("correct_chains_per_problem") or 0 for r in rows], marker="o",
               label="correct chains / problem")
    right.plot(rounds, [r.get("prm_step_auroc") or float("nan") for r in rows], marker="s",
               label="PRM step AUROC")
    right.set(xlabel="round", title="search yield and PRM")
    right.legend(fontsize=7)
    for axes in (left, right):
        axes.set_xticks(rounds)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
