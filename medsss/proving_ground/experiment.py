"""The proving ground experiment over seeds, with its ablations, table and plot.

    python -m medsss.proving_ground.experiment --out experiments/proving_ground/run --seeds 0 1 2

Per seed, into ``<out>/seed<k>/``:

1. ``python -m medsss.run +experiment=proving_ground seed=<k>``: one self-evolution round (synthesis
   on the train split, SFT, PRM with soft labels, evaluation of the evolved policy in
   ``rounds/1/evaluate`` and of the starting policy in ``rounds/1/evaluate_before``, both with the
   round's PRM on the same held-out items);
2. ablations on the same trees: PRMs with the ``hard`` and ``value_dynamics`` label rules, and
   (``--backprop``) a second synthesis with ``search.backprop=mean`` and its soft-label PRM;
3. every ablation PRM re-scores the candidates both evaluations cached (one sampling pass each).

Then ``<out>/<results>.json``, ``<out>/<results>.md`` (each figure: the mean over seeds with its
95% interval over seeds, and the paired differences with an item-bootstrap 95% interval of the
per-item difference averaged over seeds) and ``<out>/<results>_accuracy_vs_n.png`` (``--results``,
default ``results``). A rerun into the same ``--out`` skips every finished step.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsss.proving_ground.measure import (
    interval,
    paired_difference,
    pass_at_n,
    questions_by_id,
    read_items,
    rescore,
    step_auroc,
    strategy_outcomes,
    task_knowledge,
)

log = logging.getLogger(__name__)

NS = (1, 4, 16)
STRATEGIES = ("sc", "bon", "pvs")
BENCHMARK = "proving_ground"
# Two-sided 97.5% Student t quantiles by degrees of freedom (intervals over seeds).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def run_medsss(overrides: Sequence[str], run_dir: Path) -> None:
    """``python -m medsss.run <overrides>`` into ``run_dir`` (a rerun resumes or skips finished work)."""
    command = [sys.executable, "-m", "medsss.run", *overrides, f"hydra.run.dir={run_dir}"]
    log.info("running %s", " ".join(command))
    started = time.perf_counter()
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` exited with {done.returncode}; see {run_dir}")
    log.info("done in %.0f s: %s", time.perf_counter() - started, run_dir)


def experiment_overrides(experiment: str, extra: Sequence[str]) -> dict[str, list[str]]:
    """The per-step overrides of ``+experiment=<experiment>`` (with ``extra``), as the evolve stage
    composes them: the ablation steps use the same ones."""
    from medsss.config_schema import compose

    cfg = compose([f"+experiment={experiment}", *extra])
    return {str(k): [str(o) for o in v] for k, v in cfg.stage.overrides.items()}


def run_seed(seed: int, out: Path, experiment: str, extra: Sequence[str], rules: Sequence[str],
             backprop: bool) -> Path:
    directory = (out / f"seed{seed}").resolve()
    run_medsss([f"+experiment={experiment}", f"seed={seed}", *extra], directory)
    steps = experiment_overrides(experiment, extra)
    common = [*steps.get("all", []), f"seed={seed}"]  # (the seed after "all"'s seed=${seed}: it wins)
    trees = directory / "rounds" / "1" / "synthesize"
    for rule in rules:
        target = directory / "ablations" / f"prm_{rule}"
        if not (target / "final").exists():
            run_medsss(["stage=prm", *common, f"data.trees=[{trees}]", *steps.get("prm", []),
                        f"stage.labels.rule={rule}"], target)
    if backprop:
        mean_trees = directory / "ablations" / "synthesize_mean"
        if not (mean_trees / "metrics.json").exists():
            run_medsss(["stage=synthesize", *common, *steps.get("synthesize", []), "search.backprop=mean"],
                       mean_trees)
        target = directory / "ablations" / "prm_mean"
        if not (target / "final").exists():
            run_medsss(["stage=prm", *common, f"data.trees=[{mean_trees}]", *steps.get("prm", [])], target)
    return directory


def prm_variants(directory: Path) -> dict[str, Path]:
    """The PRMs of one seed: the round's (soft labels, comp back-propagation) and the ablations."""
    variants = {"soft / comp": directory / "rounds" / "1" / "prm" / "final"}
    for name, folder in (("hard / comp", "prm_hard"), ("value_dynamics / comp", "prm_value_dynamics"),
                         ("soft / mean", "prm_mean")):
        if (directory / "ablations" / folder / "final").exists():
            variants[name] = directory / "ablations" / folder / "final"
    return variants


def measure_seed(directory: Path, questions: dict[str, str], task_seed: int) -> dict[str, Any]:
    """Per-item outcomes and PRM figures of one seed's run."""
    from medsss.evaluation.scorer import load_prm_scorer

    kb = task_knowledge(task_seed)
    evaluations = {"evolved": directory / "rounds" / "1" / "evaluate",
                   "start": directory / "rounds" / "1" / "evaluate_before"}
    soft_items = {policy: read_items(path / "cache" / f"{BENCHMARK}.jsonl")
                  for policy, path in evaluations.items()}
    ids = [item["id"] for item in soft_items["start"]]
    if ids != [item["id"] for item in soft_items["evolved"]]:
        raise ValueError(f"{directory}: the two evaluations cached different items")
    outcomes: dict[str, list[float]] = {}
    prm: dict[str, dict[str, Any]] = {}
    for name, path in prm_variants(directory).items():
        if name == "soft / comp":
            items = soft_items
        else:
            scorer = load_prm_scorer(str(path), system_prompt=None)
            items = {policy: rescore(rows, questions, scorer.score_chains)
                     for policy, rows in soft_items.items()}
        figures: dict[str, Any] = {}
        for policy, rows in items.items():
            figures[f"{policy} auroc"] = step_auroc(kb, rows, questions)
            figures[f"{policy} auroc process"] = step_auroc(kb, rows, questions, process_only=True)
            for n in NS:
                for rule in ("bon", "pvs"):
                    outcomes[f"{name}|{policy}|{rule}@{n}"] = strategy_outcomes(rows, rule, n).tolist()
        prm[name] = figures
    for policy, rows in soft_items.items():
        outcomes[f"{policy}|greedy"] = strategy_outcomes(rows, "greedy", 1).tolist()
        outcomes[f"{policy}|pass@16"] = pass_at_n(rows, 16).tolist()
        for n in NS:
            outcomes[f"{policy}|sc@{n}"] = strategy_outcomes(rows, "sc", n).tolist()
    return {"ids": ids, "outcomes": outcomes, "prm": prm}


def _over_seeds(values: Sequence[float]) -> tuple[float, float, float]:
    data = np.asarray([v for v in values if v is not None], dtype=float)
    mean = float(data.mean())
    if data.size < 2:
        return mean, mean, mean
    half = _T975.get(data.size - 1, 1.96) * float(data.std(ddof=1)) / float(np.sqrt(data.size))
    return mean, mean - half, mean + half


def _fmt(figure: tuple[float, float, float], percent: bool = True) -> str:
    scale = 100.0 if percent else 1.0
    mean, low, high = (scale * x for x in figure)
    digits = 1 if percent else 3
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def summarise(per_seed: dict[int, dict[str, Any]], rounds: int = 1000) -> dict[str, Any]:
    """Means over seeds with their intervals, and paired differences pooled over seeds."""
    seeds = sorted(per_seed)
    keys = sorted(set.intersection(*(set(per_seed[s]["outcomes"]) for s in seeds)))
    def pooled(key: str) -> np.ndarray:
        return np.mean([per_seed[s]["outcomes"][key] for s in seeds], axis=0)

    accuracy = {key: {"seeds": _over_seeds([float(np.mean(per_seed[s]["outcomes"][key])) for s in seeds]),
                      "items": interval(pooled(key), rounds)}
                for key in keys}

    def difference(a: str, b: str) -> dict[str, Any]:
        per = [float(np.mean(np.asarray(per_seed[s]["outcomes"][a]) - np.asarray(per_seed[s]["outcomes"][b])))
               for s in seeds]
        return {"a": a, "b": b, "items": paired_difference(pooled(a), pooled(b), rounds),
                "seeds": _over_seeds(per), "per_seed": per}

    differences = {
        "evolved - start, greedy": difference("evolved|greedy", "start|greedy"),
        **{f"evolved - start, sc@{n}": difference(f"evolved|sc@{n}", f"start|sc@{n}") for n in NS},
        **{f"evolved - start, pvs@{n}": difference(f"soft / comp|evolved|pvs@{n}",
                                                   f"soft / comp|start|pvs@{n}") for n in NS[1:]},
    }
    for policy in ("start", "evolved"):
        for n in NS[1:]:
            differences[f"{policy}: pvs@{n} - sc@{n}"] = difference(f"soft / comp|{policy}|pvs@{n}",
                                                                     f"{policy}|sc@{n}")
    variants = sorted(set.intersection(*(set(per_seed[s]["prm"]) for s in seeds)))
    prm = {}
    for name in variants:
        figures = {}
        for figure in per_seed[seeds[0]]["prm"][name]:
            figures[figure] = _over_seeds([per_seed[s]["prm"][name][figure] for s in seeds])
        for policy in ("start", "evolved"):
            diff = difference(f"{name}|{policy}|pvs@16", f"{policy}|sc@16")
            figures[f"{policy} pvs@16 - sc@16"] = diff["items"]
            figures[f"{policy} pvs@16"] = accuracy[f"{name}|{policy}|pvs@16"]["seeds"]
        prm[name] = figures
    return {"seeds": seeds, "items": len(per_seed[seeds[0]]["ids"]), "accuracy": accuracy,
            "differences": differences, "prm": prm}


def markdown(summary: dict[str, Any], command: str, wall_seconds: float) -> str:
    acc = summary["accuracy"]
    lines = [f"Seeds {summary['seeds']}, {summary['items']} held-out items each. Accuracy in %: mean over "
             "seeds [95% interval over seeds (t)]; items: [95% item-bootstrap interval of the per-item "
             "accuracy averaged over seeds].", "", f"Command: `{command}` ({wall_seconds / 60:.1f} min)", "",
             "| strategy | N | starting policy | evolved policy | starting (items) | evolved (items) |",
             "|---|---|---|---|---|---|"]

    def row(label: str, n: int, start: str, evolved: str) -> None:
        lines.append(f"| {label} | {n} | {_fmt(acc[start]['seeds'])} | {_fmt(acc[evolved]['seeds'])} | "
                     f"{_fmt(acc[start]['items'])} | {_fmt(acc[evolved]['items'])} |")

    row("greedy", 1, "start|greedy", "evolved|greedy")
    for n in NS:
        row("SC", n, f"start|sc@{n}", f"evolved|sc@{n}")
        row("BoN (min)", n, f"soft / comp|start|bon@{n}", f"soft / comp|evolved|bon@{n}")
        row("P-VS (min)", n, f"soft / comp|start|pvs@{n}", f"soft / comp|evolved|pvs@{n}")
    row("pass@16", 16, "start|pass@16", "evolved|pass@16")
    lines += ["", "Paired differences (percentage points): items = item bootstrap of the per-item "
              "difference averaged over seeds; seeds = t interval over the per-seed differences.", "",
              "| difference | items | seeds | per seed |", "|---|---|---|---|"]
    for name, diff in summary["differences"].items():
        per = ", ".join(f"{100 * v:+.1f}" for v in diff["per_seed"])
        lines.append(f"| {name} | {_fmt(diff['items'])} | {_fmt(diff['seeds'])} | {per} |")
    lines += ["", "PRM ablations (label rule / back-propagation), all scoring the same cached candidates. "
              "AUROC: step scores vs steps whose prefix is sound by the knowledge base (all steps; "
              "process = steps before a candidate's last); mean over seeds [95% interval over seeds].", "",
              "| PRM | AUROC start | AUROC process start | AUROC evolved | AUROC process evolved | "
              "P-VS@16 start | P-VS@16 evolved | P-VS@16 - SC@16 start (items) | "
              "P-VS@16 - SC@16 evolved (items) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, figures in summary["prm"].items():
        lines.append(
            f"| {name} | {_fmt(figures['start auroc'], False)} | "
            f"{_fmt(figures['start auroc process'], False)} | "
            f"{_fmt(figures['evolved auroc'], False)} | {_fmt(figures['evolved auroc process'], False)} | "
            f"{_fmt(figures['start pvs@16'])} | {_fmt(figures['evolved pvs@16'])} | "
            f"{_fmt(figures['start pvs@16 - sc@16'])} | {_fmt(figures['evolved pvs@16 - sc@16'])} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = summary["accuracy"]
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    colours = {"sc": "tab:blue", "bon": "tab:orange", "pvs": "tab:green"}
    for policy, style in (("start", "--"), ("evolved", "-")):
        for rule in STRATEGIES:
            keys = [f"{policy}|sc@{n}" if rule == "sc" else f"soft / comp|{policy}|{rule}@{n}" for n in NS]
            means = [100 * acc[k]["seeds"][0] for k in keys]
            lows = [100 * acc[k]["seeds"][1] for k in keys]
            highs = [100 * acc[k]["seeds"][2] for k in keys]
            axis.plot(NS, means, style, marker="o", color=colours[rule], label=f"{rule.upper()} ({policy})")
            axis.fill_between(NS, lows, highs, color=colours[rule], alpha=0.08)
        greedy = acc[f"{policy}|greedy"]["seeds"]
        spread = [[100 * (greedy[0] - greedy[1])], [100 * (greedy[2] - greedy[0])]]
        axis.errorbar([1], [100 * greedy[0]], yerr=spread,
                      fmt="s" if policy == "evolved" else "D", color="black", capsize=3,
                      label=f"greedy ({policy})", mfc="black" if policy == "evolved" else "white")
    axis.set_xscale("log", base=2)
    axis.set_xticks(list(NS), [str(n) for n in NS])
    axis.set_xlabel("N (candidates)")
    axis.set_ylabel("held-out accuracy (%)")
    axis.set_title("Proving ground: starting vs evolved policy (PRM: soft / comp)")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("experiments/proving_ground/run"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--experiment", default="proving_ground")
    parser.add_argument("--no-backprop", dest="backprop", action="store_false",
                        help="skip the mean back-propagation ablation (a second synthesis per seed)")
    parser.add_argument("--no-rules", dest="rules", action="store_false",
                        help="skip the label-rule ablations (hard, value_dynamics PRMs on the same trees)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--results", default="results", help="name of the table, JSON and plot files")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides of +experiment=<experiment>")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()
    from medsss.proving_ground.task import split_path

    task_seed = 0
    questions = questions_by_id(split_path("heldout", task_seed))
    per_seed = {}
    for seed in args.seeds:
        directory = run_seed(seed, args.out, args.experiment, args.overrides,
                             ("hard", "value_dynamics") if args.rules else (), args.backprop)
        per_seed[seed] = measure_seed(directory, questions, task_seed)
    wall = time.perf_counter() - started
    summary = summarise(per_seed, args.bootstrap)
    summary["wall_seconds"] = round(wall, 1)
    given = list(argv) if argv is not None else sys.argv[1:]
    command = "python -m medsss.proving_ground.experiment " + " ".join(given)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.results}.json").write_text(json.dumps({"summary": summary, "per_seed": per_seed},
                                                                indent=1))
    (args.out / f"{args.results}.md").write_text(markdown(summary, command.strip(), wall))
    plot(summary, args.out / f"{args.results}_accuracy_vs_n.png")
    log.info("proving ground: %s", args.out / f"{args.results}.md")
    return summary


if __name__ == "__main__":
    main()
