"""A multirun sweep read back and summarised: one row per job, as tables and plots.

A sweep directory (``hydra.sweep.dir``) holds one run directory per job (``<number>_<overrides>``),
each with Hydra's ``.hydra/config.yaml`` and ``.hydra/overrides.yaml`` and its stage's outputs. The
stage of every job is read from its config, and its figures from what that stage writes:

- ``synthesize``: the tree store (``trees.jsonl``: chains, outcomes, nodes) and ``metrics.json``
  (generated tokens, throughput, wall time);
- ``sft``, ``dpo``, ``prm``: ``metrics.json`` (last train/validation loss, the PRM's step AUROC,
  DPO's reward accuracy, steps, tokens per second);
- ``evaluate``: the macro-average row of ``results.csv`` (accuracy per strategy) and ``metrics.json``.

The swept keys are the overrides whose values differ between jobs; the others are common to the
sweep. :func:`write_summary` writes ``summary.md``, ``summary.csv`` and the plots: yield vs compute
for synthesis (correct chains per problem against generated tokens per problem, one labelled point
per job) and, for every stage with two swept keys, a heat map of its headline figure over two of
them, averaged over the rest.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medsss.evaluation.report import markdown_table, write_csv
from medsss.io import JSONLError, read_json, read_jsonl
from medsss.labels.chains import chains_of
from medsss.search.store import TREES_FILE

CONFIG_FILE = Path(".hydra") / "config.yaml"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.csv"
SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"
PLOTS_DIR = "plots"
DONE = "done"


class SweepError(ValueError):
    """A sweep directory or job that cannot be summarised; the message names the file."""


@dataclass(frozen=True)
class SweepJob:
    """One job of a sweep: its run directory, stage, overrides (command-line order) and metrics
    (None when it wrote no ``metrics.json``: it failed or is still running)."""

    directory: Path
    stage: str
    overrides: dict[str, str]
    metrics: dict[str, Any] | None

    @property
    def number(self) -> int | None:
        """The job number Hydra puts first in the directory name (``3_search.width=2``)."""
        head = self.directory.name.split("_", 1)[0]
        return int(head) if head.isdigit() else None


@dataclass(frozen=True)
class Column:
    """A figure of a summary row: its key, its header in ``summary.md`` and what it means."""

    key: str
    label: str
    meaning: str


# ---------------------------------------------------------------------------------------------
# reading jobs


def parse_overrides(overrides: Any, where: str) -> dict[str, str]:
    """``["search.width=2", "+experiment=x"]`` as ``{"search.width": "2", "experiment": "x"}``
    (leading ``+``/``++`` dropped; a ``~key`` deletion has the value ``~``)."""
    if not isinstance(overrides, list):
        raise SweepError(f"{where}: expected a YAML list of overrides, got {type(overrides).__name__}")
    parsed: dict[str, str] = {}
    for override in overrides:
        text = str(override)
        if text.startswith("~"):
            parsed[text[1:].split("=", 1)[0]] = "~"
            continue
        key, sep, value = text.partition("=")
        if not sep or not key.lstrip("+"):
            raise SweepError(f"{where}: '{text}' is not an override of the form key=value")
        parsed[key.lstrip("+")] = value
    return parsed


def read_job(directory: str | Path) -> SweepJob:
    """One job directory: its stage (``stage.name`` of ``.hydra/config.yaml``), its overrides and
    its ``metrics.json`` (None when absent)."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    overrides_path = directory / OVERRIDES_FILE
    config = _read_yaml(config_path)
    stage = config.get("stage", {}).get("name") if isinstance(config, dict) else None
    if not isinstance(stage, str):
        raise SweepError(f"{config_path}: no stage.name (is this a medsss run directory?)")
    overrides = parse_overrides(_read_yaml(overrides_path) if overrides_path.exists() else [],
                                str(overrides_path))
    metrics_path = directory / METRICS_FILE
    metrics = None
    if metrics_path.exists():
        try:
            metrics = read_json(metrics_path)
        except ValueError as error:
            raise SweepError(f"{metrics_path}: not valid JSON ({error})") from None
        if not isinstance(metrics, dict):
            raise SweepError(f"{metrics_path}: expected a JSON object")
    return SweepJob(directory=directory, stage=stage, overrides=overrides, metrics=metrics)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepError(f"{path}: missing") from None
    except yaml.YAMLError as error:
        raise SweepError(f"{path}: not valid YAML ({error})") from None


def find_jobs(sweep_dir: str | Path, skip_stages: Sequence[str] = ("summarize",)) -> list[SweepJob]:
    """The jobs of a sweep directory in job-number order: its subdirectories with a
    ``.hydra/config.yaml`` whose stage is not one of ``skip_stages`` (a summary written into the
    sweep directory is not a job)."""
    sweep_dir = Path(sweep_dir).expanduser()
    if not sweep_dir.is_dir():
        raise SweepError(f"{sweep_dir}: not a directory (stage.dir takes a multirun directory, "
                         "the hydra.sweep.dir of a --multirun)")
    jobs = [read_job(path) for path in sorted(sweep_dir.iterdir()) if (path / CONFIG_FILE).is_file()]
    jobs = [job for job in jobs if job.stage not in skip_stages]
    if not jobs:
        raise SweepError(f"{sweep_dir}: no job directories (subdirectories with {CONFIG_FILE}); "
                         "stage.dir takes the multirun directory itself, not one of its jobs")
    return sorted(jobs, key=lambda job: (job.number is None, job.number or 0, job.directory.name))


def swept_keys(jobs: Sequence[SweepJob]) -> list[str]:
    """The override keys whose value is not the same in every job (a key some jobs lack counts as
    swept), in order of first appearance."""
    order: list[str] = []
    for job in jobs:
        order.extend(key for key in job.overrides if key not in order)
    return [key for key in order if len({job.overrides.get(key) for job in jobs}) > 1]


def common_overrides(jobs: Sequence[SweepJob]) -> dict[str, str]:
    """The overrides every job has with the same value."""
    swept = set(swept_keys(jobs))
    first = jobs[0].overrides if jobs else {}
    return {key: value for key, value in first.items() if key not in swept}


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each key's last dotted part (``search.width`` -> ``width``), or the whole key where two
    keys would share one."""
    last = Counter(key.rsplit(".", 1)[-1] for key in keys)
    return {key: key.rsplit(".", 1)[-1] if last[key.rsplit(".", 1)[-1]] == 1 else key for key in keys}


def job_label(job: SweepJob, keys: Sequence[str]) -> str:
    """The job's swept values, ``width=2 max_nodes=8``: what a plot point is labelled with."""
    names = short_names(keys)
    return " ".join(f"{names[key]}={job.overrides.get(key, '')}" for key in keys)


# ---------------------------------------------------------------------------------------------
# figures per stage

SYNTHESIS_COLUMNS = (
    Column("problems", "problems", "trees in the job's store"),
    Column("correct_per_problem", "correct / problem",
           "correct trajectories (root-to-leaf chains ending in a correct answer) per stored tree"),
    Column("distinct_correct_per_problem", "distinct correct / problem",
           "correct chains with distinct step texts per stored tree (what SFT trains on)"),
    Column("problems_with_both", "problems with both",
           "trees with at least one correct and one incorrect chain (what the PRM view keeps)"),
    Column("generated_tokens_per_problem", "tokens / problem",
           "generated tokens of the job (steps, rollouts, completions, forced answers) per searched problem"),
    Column("generated_tokens_per_correct", "tokens / correct chain",
           "generated tokens per correct chain (empty with no correct chain, or when the store holds "
           "trees of an earlier run whose tokens metrics.json does not count)"),
    Column("nodes_per_tree", "nodes / tree", "nodes of the stored trees per tree"),
    Column("problems_per_hour", "problems / hour", "searched problems per hour of search (metrics.json)"),
    Column("wall_seconds", "wall s", "the job's wall time (metrics.json)"),
)
TRAINING_COLUMNS = (
    Column("train_loss", "train loss", "the last logged training loss"),
    Column("val_loss", "val loss", "the last validation loss"),
    Column("val_step_auroc", "val step AUROC", "prm: AUROC of step scores against hard step labels"),
    Column("val_reward_accuracy", "val reward accuracy",
           "dpo: share of validation pairs won by the chosen side"),
    Column("global_steps", "steps", "optimizer steps"),
    Column("train_tokens_per_second_mean", "tokens / s", "training tokens per second"),
    Column("wall_seconds", "wall s", "the job's wall time"),
)
EVALUATION_STRATEGIES = ("greedy", "sc", "bon", "pvs", "vote_mean", "decode", "pass@1", "pass@N")
EVALUATION_COLUMNS = (
    Column("items", "items", "evaluated items over all benchmarks"),
    Column("N", "N", "candidates per item"),
    *(Column(f"macro_{name}", name, f"macro-average accuracy of {name} (results.csv)")
      for name in EVALUATION_STRATEGIES),
    Column("wall_seconds", "wall s", "the job's wall time"),
)
STAGE_COLUMNS: dict[str, tuple[Column, ...]] = {
    "synthesize": SYNTHESIS_COLUMNS, "sft": TRAINING_COLUMNS, "dpo": TRAINING_COLUMNS,
    "prm": TRAINING_COLUMNS, "evaluate": EVALUATION_COLUMNS,
}
#: The figure a heat map shows by default, per stage.
HEADLINE = {"synthesize": "correct_per_problem", "sft": "val_loss", "dpo": "val_reward_accuracy",
            "prm": "val_step_auroc", "evaluate": "macro_decode"}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def synthesis_figures(job: SweepJob) -> tuple[dict[str, Any], str]:
    """The synthesis figures of a job (see :data:`SYNTHESIS_COLUMNS`) and its status."""
    store = job.directory / TREES_FILE
    if not store.exists():  # a job that failed or is still running says so first
        return {}, f"no {METRICS_FILE}" if job.metrics is None else f"no {TREES_FILE}"
    trees = correct = distinct = both = nodes = 0
    try:
        for number, record in enumerate(read_jsonl(store), start=1):
            if not isinstance(record, dict) or not isinstance(record.get("nodes"), list):
                raise SweepError(f"{store}: record {number}: not a stored tree (no 'nodes' list)")
            try:
                chains = chains_of(record)
            except (TypeError, KeyError, ValueError) as error:  # a node that is not a tree node
                raise SweepError(f"{store}: record {number}: not a stored tree ({error})") from None
            right = [chain for chain in chains if chain.correct]
            trees += 1
            correct += len(right)
            distinct += len({tuple(chain.steps) for chain in right})
            both += bool(right) and len(right) < len(chains)
            nodes += len(record["nodes"])
    except JSONLError as error:
        raise SweepError(str(error)) from None
    metrics = job.metrics or {}
    tokens, searched = metrics.get("generated_tokens"), metrics.get("searched_this_run")
    # metrics.json counts this run's tokens: per correct chain only when the run searched every tree.
    whole_store = searched == trees
    figures = {
        "problems": trees,
        "correct_per_problem": _ratio(correct, trees),
        "distinct_correct_per_problem": _ratio(distinct, trees),
        "problems_with_both": both,
        "generated_tokens_per_problem": _ratio(tokens, searched),
        "generated_tokens_per_correct": _ratio(tokens, correct) if whole_store else None,
        "nodes_per_tree": _ratio(nodes, trees),
        "problems_per_hour": metrics.get("problems_per_hour"),
        "wall_seconds": metrics.get("wall_seconds"),
        "correct_chains": correct,
        "nodes": nodes,
        "generated_tokens": tokens,
    }
    if job.metrics is None:
        return figures, f"no {METRICS_FILE}"
    if whole_store:
        return figures, DONE
    if isinstance(searched, int) and searched < trees:
        return figures, f"resumed: this run searched {searched} of {trees} trees"
    return figures, f"{METRICS_FILE} counts {searched} searched trees, {TREES_FILE} holds {trees}"


def training_figures(job: SweepJob) -> tuple[dict[str, Any], str]:
    """The last logged losses and step metrics of a training job (``metrics.json``)."""
    if job.metrics is None:
        return {}, f"no {METRICS_FILE}"
    keys = [column.key for column in TRAINING_COLUMNS]
    return {key: job.metrics.get(key) for key in keys}, DONE


def evaluation_figures(job: SweepJob) -> tuple[dict[str, Any], str]:
    """The macro-average accuracy of every strategy (``results.csv``'s macro row)."""
    path = job.directory / RESULTS_FILE
    wall = (job.metrics or {}).get("wall_seconds")
    if not path.exists():
        return {"wall_seconds": wall}, f"no {RESULTS_FILE}"
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    macro = next((row for row in rows if row.get("benchmark") == "macro average"), None)
    if macro is None:
        raise SweepError(f"{path}: no 'macro average' row")
    figures: dict[str, Any] = {"items": _number(macro.get("items"), path, "items"),
                               "N": _number(macro.get("N"), path, "N")}
    for name in EVALUATION_STRATEGIES:
        figures[f"macro_{name}"] = _number(macro.get(name), path, name)
    figures["wall_seconds"] = wall
    return figures, DONE if job.metrics is not None else f"no {METRICS_FILE}"


def _number(text: str | None, path: Path, column: str) -> float | int | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise SweepError(f"{path}: column '{column}' of the macro row is not a number: {text!r}") from None
    return int(value) if value.is_integer() and column in ("items", "N") else value


FIGURES: dict[str, Callable[[SweepJob], tuple[dict[str, Any], str]]] = {
    "synthesize": synthesis_figures, "sft": training_figures, "dpo": training_figures,
    "prm": training_figures, "evaluate": evaluation_figures,
}


def summary_rows(jobs: Sequence[SweepJob]) -> list[dict[str, Any]]:
    """One row per job: ``job`` (its number), ``stage``, the swept values (by key), the stage's
    figures, ``status`` (``done``, or what is missing) and ``directory``."""
    keys = swept_keys(jobs)
    rows = []
    for job in jobs:
        if job.stage not in FIGURES:
            raise SweepError(f"{job.directory}: a {job.stage} job; the summary reads "
                             f"{', '.join(FIGURES)} jobs")
        figures, status = FIGURES[job.stage](job)
        rows.append({
            "job": job.number if job.number is not None else job.directory.name,
            "stage": job.stage,
            **{key: job.overrides.get(key) for key in keys},
            **figures,
            "status": status,
            "directory": job.directory.name,
        })
    return rows


# ---------------------------------------------------------------------------------------------
# heat map


def _axis_order(values: Sequence[str]) -> list[str]:
    """Distinct values, numerically sorted when all are numbers (``8`` before ``16``)."""
    distinct = list(dict.fromkeys(values))
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return sorted(distinct)


def heatmap(rows: Sequence[dict[str, Any]], x: str, y: str, value: str
            ) -> tuple[list[str], list[str], list[list[float | None]]]:
    """The mean of ``value`` per (``y``, ``x``) cell over the rows with a value (None: no such
    row): the x values, the y values and the matrix, one list per y value."""
    xs = _axis_order([str(row.get(x)) for row in rows])
    ys = _axis_order([str(row.get(y)) for row in rows])
    cells: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        figure = row.get(value)
        if isinstance(figure, (int, float)) and not math.isnan(figure):
            cells.setdefault((str(row.get(y)), str(row.get(x))), []).append(float(figure))
    matrix = [[sum(cells[(yv, xv)]) / len(cells[(yv, xv)]) if (yv, xv) in cells else None for xv in xs]
              for yv in ys]
    return xs, ys, matrix


def heatmap_axes(rows: Sequence[dict[str, Any]], keys: Sequence[str], axes: Sequence[str] | None
                 ) -> tuple[str, str] | None:
    """The heat map's (x, y): ``axes`` when given (two swept keys), else the first two swept keys
    with at least two values among ``rows``; None when there are not two."""
    if axes is not None:
        axes = list(axes)
        unknown = [axis for axis in axes if axis not in keys]
        if len(axes) != 2 or unknown:
            raise SweepError(f"stage.axes must name two swept keys (swept: {', '.join(keys) or 'none'}), "
                             f"got {axes}")
        return axes[0], axes[1]
    varying = [key for key in keys if len({str(row.get(key)) for row in rows}) > 1]
    return (varying[0], varying[1]) if len(varying) >= 2 else None


# ---------------------------------------------------------------------------------------------
# writing


@dataclass
class SweepSummary:
    """What :func:`write_summary` wrote, and the rows behind it."""

    sweep_dir: Path
    rows: list[dict[str, Any]]
    swept: list[str]
    common: dict[str, str]
    markdown: Path
    csv: Path
    plots: list[Path] = field(default_factory=list)


def format_cell(value: Any) -> str:
    """A figure as ``summary.md`` shows it: ints as they are, floats with three significant digits
    (``0.693``, ``4.00``, ``36.0``; no decimals from 100, thousands separated), None empty."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return "nan"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if size >= 10 else f"{value:.2f}" if size >= 1 else f"{value:.3f}"


def write_summary(sweep_dir: str | Path, out_dir: str | Path, axes: Sequence[str] | None = None,
                  value: str | None = None, plots: bool = True) -> SweepSummary:
    """Read the sweep's jobs and write ``summary.md``, ``summary.csv`` and (``plots``) the plots
    under ``out_dir/plots``. ``axes``: the heat map's two swept keys (default: the first two);
    ``value``: the figure it shows (default: the stage's headline, :data:`HEADLINE`)."""
    sweep_dir, out_dir = Path(sweep_dir).expanduser(), Path(out_dir)
    jobs = find_jobs(sweep_dir)
    rows = summary_rows(jobs)
    swept, common = swept_keys(jobs), common_overrides(jobs)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = SweepSummary(sweep_dir=sweep_dir, rows=rows, swept=swept, common=common,
                           markdown=out_dir / SUMMARY_MD, csv=out_dir / SUMMARY_CSV)
    write_csv(rows, summary.csv)
    stages = list(dict.fromkeys(row["stage"] for row in rows))
    stage_counts = Counter(row["stage"] for row in rows)
    lines = [
        f"# Sweep summary: {sweep_dir}\n",
        f"{len(rows)} jobs ({', '.join(f'{stage_counts[s]} {s}' for s in stages)}). "
        f"Swept: {', '.join(f'`{key}`' for key in swept) or 'nothing'}. "
        f"Common overrides: {' '.join(f'`{k}={v}`' for k, v in common.items()) or 'none'}.\n",
    ]
    for stage in stages:
        stage_rows = [row for row in rows if row["stage"] == stage]
        columns = STAGE_COLUMNS[stage]
        table_columns = ["job", *swept, *(c.key for c in columns), "status"]
        labels = {c.key: c.label for c in columns}
        shown = [{key: format_cell(row.get(key)) for key in table_columns} for row in stage_rows]
        lines += [f"## {stage}\n", markdown_table(shown, table_columns, labels=labels), ""]
        lines += [f"- **{c.label}**: {c.meaning}" for c in columns] + [""]
        if plots:
            lines += _stage_plots(summary, stage, stage_rows, axes, value, out_dir)
    summary.markdown.write_text("\n".join(lines), encoding="utf-8")
    return summary


def _stage_plots(summary: SweepSummary, stage: str, rows: list[dict[str, Any]], axes: Sequence[str] | None,
                 value: str | None, out_dir: Path) -> list[str]:
    """Draw one stage's plots; the Markdown lines that show them."""
    lines: list[str] = []
    (out_dir / PLOTS_DIR).mkdir(exist_ok=True)
    if stage == "synthesize":
        path = out_dir / PLOTS_DIR / "synthesize_yield.png"
        names = short_names(summary.swept)
        points = [(row["generated_tokens_per_problem"], row["correct_per_problem"], str(row["job"]),
                   " ".join(f"{name}={row.get(key)}" for key, name in names.items()))
                  for row in rows
                  if row.get("generated_tokens_per_problem") is not None
                  and row.get("correct_per_problem") is not None]
        if points:
            plot_yield(points, path, title=f"{summary.sweep_dir.name}: yield vs compute")
            summary.plots.append(path)
            lines += [f"![yield vs compute]({PLOTS_DIR}/{path.name})\n"]
    figure = value or HEADLINE[stage]
    known = {c.key for c in STAGE_COLUMNS[stage]}
    if figure not in known:
        raise SweepError(f"stage.value '{figure}' is not a {stage} figure; one of {', '.join(sorted(known))}")
    chosen = heatmap_axes(rows, summary.swept, axes)
    if chosen is None:
        return lines + ["(No heat map: fewer than two swept keys vary.)\n"]
    x, y = chosen
    xs, ys, matrix = heatmap(rows, x, y, figure)
    if all(cell is None for line in matrix for cell in line):
        return lines + [f"(No heat map: no job has a value for {figure}.)\n"]
    path = out_dir / PLOTS_DIR / f"{stage}_heatmap.png"
    rest = [key for key in summary.swept if key not in (x, y)]
    averaged = f"; mean over {', '.join(rest)}" if rest else ""
    plot_heatmap(xs, ys, matrix, x, y, path, title=f"{figure}{averaged}")
    summary.plots.append(path)
    return lines + [f"![{figure} over {x} and {y}]({PLOTS_DIR}/{path.name})\n",
                    f"Heat map: {figure} over `{x}` x `{y}`{averaged}.\n"]


def plot_yield(points: Sequence[tuple[float, float, str, str]], path: Path, title: str) -> None:
    """Correct chains per problem against generated tokens per problem: each point ``(x, y, job,
    label)`` marked with its job number (jobs on the same spot share one mark, ``1,5``), and a key
    beside the plot from job number to its swept values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8.6, 4.6))
    axes.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue", zorder=3)
    spots: dict[tuple[float, float], list[str]] = {}
    for x, y, job, _ in points:
        spots.setdefault((x, y), []).append(job)
    for (x, y), jobs in spots.items():
        axes.annotate(",".join(jobs), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=9)
    key = "\n".join(f"{job}: {label}" for _, _, job, label in points)
    axes.text(1.03, 1.0, key, transform=axes.transAxes, va="top", fontsize=8, family="monospace")
    axes.margins(x=0.12, y=0.15)
    axes.set_xlabel("generated tokens per problem")
    axes.set_ylabel("correct chains per problem")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def plot_heatmap(xs: Sequence[str], ys: Sequence[str], matrix: Sequence[Sequence[float | None]],
                 x: str, y: str, path: Path, title: str) -> None:
    """A heat map with each cell's value written in it (empty cells: no job)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array([[np.nan if cell is None else cell for cell in line] for line in matrix], dtype=float)
    figure, axes = plt.subplots(figsize=(1.2 * len(xs) + 2.6, 0.9 * len(ys) + 1.8))
    image = axes.imshow(values, cmap="viridis", origin="lower", aspect="auto")
    axes.set_xticks(range(len(xs)), list(xs))
    axes.set_yticks(range(len(ys)), list(ys))
    axes.set_xlabel(x)
    axes.set_ylabel(y)
    low, high = np.nanmin(values), np.nanmax(values)
    for row, line in enumerate(matrix):
        for column, cell in enumerate(line):
            if cell is not None:
                bright = high > low and (cell - low) / (high - low) > 0.6
                axes.text(column, row, format_cell(float(cell)), ha="center", va="center", fontsize=9,
                          color="black" if bright else "white")
    figure.colorbar(image, ax=axes)
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
