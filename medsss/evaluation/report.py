"""Results tables (Markdown, CSV) and accuracy-vs-N plots."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *,
                   labels: Mapping[str, str] | None = None, missing: Mapping[str, str] | None = None) -> str:
    """A Markdown table; floats are shown as percentages, followed by ``[low, high]`` when the row
    has ``<column>_ci_low``/``_ci_high``. ``labels`` rename headers; ``missing`` gives the text of an
    empty cell per column (e.g. "not run")."""
    labels, missing = labels or {}, missing or {}

    def percent(value: float) -> str:
        return f"{100 * value:.1f}"

    def cell(row: dict[str, Any], column: str) -> str:
        value = row.get(column)
        if value is None:
            return missing.get(column, "")
        if not isinstance(value, float):
            return str(value)
        low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
        interval = f" [{percent(low)}, {percent(high)}]" if low is not None and high is not None else ""
        return percent(value) + interval

    lines = ["| " + " | ".join(labels.get(c, c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row, c) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_n(grid: Sequence[dict[str, Any]], title: str, path: Path,
                       series: Sequence[tuple[str, str]]) -> None:
    """One line (with its 95% item-bootstrap band) per (selection, aggregation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 3.8))
    for selection, aggregation in series:
        cells = sorted((r for r in grid if r["selection"] == selection and r["aggregation"] == aggregation),
                       key=lambda r: r["n"])
        if not cells:
            continue
        ns = [c["n"] for c in cells]
        label = selection if aggregation == "-" else f"{selection} ({aggregation})"
        axes.plot(ns, [100 * c["accuracy"] for c in cells], marker="o", label=label)
        axes.fill_between(ns, [100 * c["ci_low"] for c in cells], [100 * c["ci_high"] for c in cells],
                          alpha=0.15)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("N (candidates)")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_reliability(table: Sequence[dict[str, Any]], ece: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4.2, 4.0))
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    axes.plot([r["mean_score"] for r in table], [r["mean_value"] for r in table], marker="o", label="PRM")
    axes.set_xlabel("PRM step score")
    axes.set_ylabel("rollout value")
    axes.set_title(f"reliability (ECE {ece:.3f})")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_abstention(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4.2, 3.6))
    axes.plot([100 * r["coverage"] for r in rows], [100 * r["accuracy"] for r in rows], marker="o")
    axes.set_xlabel("coverage (%)  (most confident P-VS margins first)")
    axes.set_ylabel("accuracy (%)")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
