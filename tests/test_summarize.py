"""Sweep summaries (medsss/sweep.py, stage=summarize): hand-written job directories with exact
figures, then a real 2x2x2 +experiment=sweep_mcts multirun on the tiny model, summarised."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, compose
from wandb_records import read_offline_run

from medsss.run import run_stage
from medsss.sweep import (
    SweepError,
    common_overrides,
    find_jobs,
    heatmap,
    heatmap_axes,
    job_label,
    parse_overrides,
    summary_rows,
    swept_keys,
    write_summary,
)

# --- hand-written jobs --------------------------------------------------------------------------


def node(index, parent, text, kind, depth, children=(), correct=None):
    return {"index": index, "parent": parent, "text": text, "kind": kind, "depth": depth,
            "children": list(children), "correct": correct}


# Two correct chains with the same step texts (one distinct), one wrong chain: 6 nodes.
TREE_BOTH = {"id": "p1", "question": "Q1?", "answer": "A", "nodes": [
    node(0, None, "Let's break down this problem step by step.", "root", 0, [1, 3, 5]),
    node(1, 0, "Think.", "reason", 1, [2]),
    node(2, 1, "The answer is A.", "finish", 2, correct=True),
    node(3, 0, "Think.", "reason", 1, [4]),
    node(4, 3, "The answer is A.", "finish", 2, correct=True),
    node(5, 0, "The answer is B.", "finish", 1, correct=False),
]}
# Only a wrong chain: 2 nodes.
TREE_WRONG = {"id": "p2", "question": "Q2?", "answer": "C", "nodes": [
    node(0, None, "Let's break down this problem step by step.", "root", 0, [1]),
    node(1, 0, "The answer is D.", "finish", 1, correct=False),
]}


def write_job(sweep: Path, name: str, stage: str, overrides: list[str], metrics: dict | None = None,
              trees: list[dict] | None = None, results: list[dict] | None = None) -> Path:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "stage": {"name": stage}}))
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if trees is not None:
        (job / "trees.jsonl").write_text("".join(json.dumps(t) + "\n" for t in trees))
    if results is not None:
        with open(job / "results.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(results[0]))
            writer.writeheader()
            writer.writerows(results)
    return job


SYNTHESIS_METRICS = {"stage": "synthesize", "generated_tokens": 1000, "searched_this_run": 2,
                     "problems_per_hour": 36.0, "wall_seconds": 200.0}


def test_overrides_are_read_as_keys_and_values():
    assert parse_overrides(["search.width=2", "+experiment=sweep_mcts", "++seed=3", "~logger", "stage.dir=a=b"],
                           "x") == {"search.width": "2", "experiment": "sweep_mcts", "seed": "3", "logger": "~",
                                    "stage.dir": "a=b"}
    with pytest.raises(SweepError, match=r"job/.hydra/overrides.yaml: 'width' is not an override"):
        parse_overrides(["width"], "job/.hydra/overrides.yaml")


def test_swept_keys_are_the_overrides_whose_values_differ(tmp_path):
    write_job(tmp_path, "0_a", "synthesize", ["+experiment=s", "search.width=2", "search.simulations=4"])
    write_job(tmp_path, "1_b", "synthesize", ["+experiment=s", "search.width=3", "search.simulations=4"])
    write_job(tmp_path, "2_c", "synthesize", ["+experiment=s", "search.width=3", "search.simulations=4",
                                              "seed=1"])
    jobs = find_jobs(tmp_path)
    assert swept_keys(jobs) == ["search.width", "seed"]  # a key only some jobs have is swept
    assert common_overrides(jobs) == {"experiment": "s", "search.simulations": "4"}
    assert job_label(jobs[2], swept_keys(jobs)) == "width=3 seed=1"


def test_jobs_are_in_job_number_order_and_a_summary_directory_is_not_a_job(tmp_path):
    for name in ("10_x", "2_y", "summary"):
        write_job(tmp_path, name, "summarize" if name == "summary" else "synthesize", [f"seed={name}"])
    (tmp_path / "multirun.yaml").write_text("{}")
    (tmp_path / "notes").mkdir()
    assert [job.directory.name for job in find_jobs(tmp_path)] == ["2_y", "10_x"]


def test_a_directory_without_jobs_is_an_error_naming_it(tmp_path):
    with pytest.raises(SweepError, match=f"{tmp_path}: no job directories"):
        find_jobs(tmp_path)
    with pytest.raises(SweepError, match="not a directory"):
        find_jobs(tmp_path / "missing")


def test_synthesis_figures_come_from_the_store_and_metrics(tmp_path):
    write_job(tmp_path, "0_w", "synthesize", ["search.width=2"], SYNTHESIS_METRICS, [TREE_BOTH, TREE_WRONG])
    [row] = summary_rows(find_jobs(tmp_path))
    assert row == {
        "job": 0, "stage": "synthesize",
        "problems": 2,
        "correct_per_problem": 1.0,  # 2 correct chains / 2 trees
        "distinct_correct_per_problem": 0.5,  # the two correct chains have the same texts
        "problems_with_both": 1,
        "generated_tokens_per_problem": 500.0,
        "generated_tokens_per_correct": 500.0,
        "nodes_per_tree": 4.0,  # (6 + 2) / 2
        "problems_per_hour": 36.0, "wall_seconds": 200.0,
        "correct_chains": 2, "nodes": 8, "generated_tokens": 1000,
        "status": "done", "directory": "0_w",
    }


def test_a_resumed_job_has_no_tokens_per_correct_chain_and_says_so(tmp_path):
    metrics = {**SYNTHESIS_METRICS, "searched_this_run": 1}
    write_job(tmp_path, "0_w", "synthesize", [], metrics, [TREE_BOTH, TREE_WRONG])
    [row] = summary_rows(find_jobs(tmp_path))
    assert row["generated_tokens_per_problem"] == 1000.0 and row["generated_tokens_per_correct"] is None
    assert row["status"] == "resumed: this run searched 1 of 2 trees"


def test_a_job_that_wrote_no_metrics_is_a_row_with_its_status(tmp_path):
    write_job(tmp_path, "0_a", "synthesize", ["search.width=2"], SYNTHESIS_METRICS, [TREE_WRONG, TREE_BOTH])
    write_job(tmp_path, "1_b", "synthesize", ["search.width=3"], None, [TREE_WRONG])
    write_job(tmp_path, "2_c", "synthesize", ["search.width=4"], SYNTHESIS_METRICS)
    write_job(tmp_path, "3_d", "synthesize", ["search.width=5"], SYNTHESIS_METRICS, [TREE_WRONG])
    write_job(tmp_path, "4_e", "synthesize", ["search.width=6"])  # still running: nothing written yet
    rows = summary_rows(find_jobs(tmp_path))
    assert [row["status"] for row in rows] == ["done", "no metrics.json", "no trees.jsonl",
                                               "metrics.json counts 2 searched trees, trees.jsonl holds 1",
                                               "no metrics.json"]
    assert rows[1]["nodes_per_tree"] == 2.0 and rows[1]["generated_tokens_per_problem"] is None
    assert [row["search.width"] for row in rows] == ["2", "3", "4", "5", "6"]


def test_a_bad_store_line_is_an_error_naming_the_file_and_line(tmp_path):
    job = write_job(tmp_path, "0_a", "synthesize", [], SYNTHESIS_METRICS)
    (job / "trees.jsonl").write_text(json.dumps(TREE_WRONG) + "\n{not json\n")
    with pytest.raises(SweepError, match=r"0_a/trees.jsonl: line 2: not valid JSON"):
        summary_rows(find_jobs(tmp_path))
    (job / "trees.jsonl").write_text(json.dumps({"id": "x", "nodes": [{"index": 0}]}) + "\n")
    with pytest.raises(SweepError, match=r"0_a/trees.jsonl: record 1: not a stored tree"):
        summary_rows(find_jobs(tmp_path))


def test_training_jobs_give_losses_and_auroc(tmp_path):
    write_job(tmp_path, "0_a", "prm", ["stage.optim.optimizer.lr=1e-4"],
              {"train_loss": 0.61, "val_loss": 0.65, "val_step_auroc": 0.8, "global_steps": 12,
               "train_tokens_per_second_mean": 90.5, "wall_seconds": 40.0, "view_chains": 7})
    write_job(tmp_path, "1_b", "prm", ["stage.optim.optimizer.lr=5e-5"], {"train_loss": 0.7, "val_loss": 0.69})
    rows = summary_rows(find_jobs(tmp_path))
    assert {k: rows[0][k] for k in ("stage.optim.optimizer.lr", "train_loss", "val_loss", "val_step_auroc",
                                    "val_reward_accuracy", "global_steps", "status")} == {
        "stage.optim.optimizer.lr": "1e-4", "train_loss": 0.61, "val_loss": 0.65, "val_step_auroc": 0.8,
        "val_reward_accuracy": None, "global_steps": 12, "status": "done"}
    assert rows[1]["val_step_auroc"] is None and rows[1]["val_loss"] == 0.69


def test_evaluation_jobs_give_the_macro_accuracy_of_every_strategy(tmp_path):
    macro = {"benchmark": "macro average", "items": "8", "N": "4", "greedy": "0.25", "sc": "0.5", "bon": "",
             "pvs": "", "vote_mean": "", "decode": "0.5", "pass@1": "0.375", "pass@N": "0.75",
             "sc_ci_low": "0.2"}
    first = {**macro, "benchmark": "medqa", "sc": "0.0"}
    write_job(tmp_path, "0_a", "evaluate", ["stage.n=4"], {"wall_seconds": 12.5}, results=[first, macro])
    [row] = summary_rows(find_jobs(tmp_path))
    assert {k: v for k, v in row.items() if k.startswith("macro_") or k in ("items", "N", "wall_seconds")} == {
        "items": 8, "N": 4, "macro_greedy": 0.25, "macro_sc": 0.5, "macro_bon": None, "macro_pvs": None,
        "macro_vote_mean": None, "macro_decode": 0.5, "macro_pass@1": 0.375, "macro_pass@N": 0.75,
        "wall_seconds": 12.5}
    job = tmp_path / "0_a"
    (job / "results.csv").write_text("benchmark,sc\nmedqa,0.5\n")
    with pytest.raises(SweepError, match=r"0_a/results.csv: no 'macro average' row"):
        summary_rows(find_jobs(tmp_path))


def test_the_heat_map_averages_over_the_other_axes_in_numeric_order():
    rows = [
        {"w": "2", "n": "16", "s": "4", "v": 1.0}, {"w": "2", "n": "16", "s": "8", "v": 3.0},
        {"w": "3", "n": "16", "s": "4", "v": 5.0},
        {"w": "2", "n": "8", "s": "4", "v": 0.5}, {"w": "2", "n": "8", "s": "8", "v": None},
        {"w": "3", "n": "8", "s": "4", "v": 4.0}, {"w": "3", "n": "8", "s": "8", "v": 6.0},
    ]
    xs, ys, matrix = heatmap(rows, "w", "n", "v")
    assert (xs, ys) == (["2", "3"], ["8", "16"])  # 8 before 16: numbers sort as numbers
    assert matrix == [[0.5, 5.0], [2.0, 5.0]]  # the job without a value is left out of its cell's mean
    assert heatmap(rows[:1], "w", "n", "v")[2] == [[1.0]]
    assert heatmap_axes(rows, ["w", "n", "s"], None) == ("w", "n")
    assert heatmap_axes(rows, ["w", "n", "s"], ["s", "w"]) == ("s", "w")
    with pytest.raises(SweepError, match="must name two swept keys"):
        heatmap_axes(rows, ["w", "n"], ["w", "depth"])


def test_write_summary_writes_the_table_csv_and_plots(tmp_path):
    sweep = tmp_path / "sweep"
    for number, (width, nodes) in enumerate([(2, 8), (2, 16), (3, 8), (3, 16)]):
        metrics = {**SYNTHESIS_METRICS, "generated_tokens": 1000 * (number + 1)}
        write_job(sweep, f"{number}_w{width}", "synthesize",
                  ["+experiment=sweep_mcts", f"search.width={width}", f"search.max_nodes={nodes}"],
                  metrics, [TREE_BOTH, TREE_WRONG])
    summary = write_summary(sweep, tmp_path / "out")
    text = summary.markdown.read_text()
    assert "Swept: `search.width`, `search.max_nodes`. Common overrides: `experiment=sweep_mcts`." in text
    assert "| job | search.width | search.max_nodes | problems | correct / problem |" in text
    assert "| 3 | 3 | 16 | 2 | 1.00 | 0.500 | 1 | 2,000 | 2,000 | 4.00 | 36.0 | 200 | done |" in text
    with open(summary.csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["generated_tokens_per_problem"] for row in rows] == ["500.0", "1000.0", "1500.0", "2000.0"]
    assert [p.name for p in summary.plots] == ["synthesize_yield.png", "synthesize_heatmap.png"]
    assert all(p.stat().st_size > 1000 for p in summary.plots)
    assert "![yield vs compute](plots/synthesize_yield.png)" in text
    with pytest.raises(SweepError, match="stage.value 'val_loss' is not a synthesize figure"):
        write_summary(sweep, tmp_path / "again", value="val_loss")


def test_stage_summarize_writes_into_its_run_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDSSS_RUN_GROUP", raising=False)
    sweep = tmp_path / "sweep"
    write_job(sweep, "0_a", "synthesize", ["search.width=2"], SYNTHESIS_METRICS, [TREE_BOTH, TREE_WRONG])
    write_job(sweep, "1_b", "synthesize", ["search.width=3"], SYNTHESIS_METRICS, [TREE_WRONG, TREE_BOTH])
    run_dir = tmp_path / "summary"
    metrics = run_stage(compose(["stage=summarize", f"stage.dir={sweep}", "logger=csv"]), run_dir)
    assert (metrics["jobs"], metrics["jobs_done"], metrics["swept"]) == (2, 2, ["search.width"])
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert (run_dir / "summary.md").exists() and (run_dir / "plots" / "synthesize_yield.png").exists()
    logged = (run_dir / "logs" / "version_0" / "summary.csv").read_text().splitlines()
    assert logged[0].startswith("job,stage,search.width,problems,") and len(logged) == 3
    assert "MEDSSS_RUN_GROUP" not in os.environ  # the group was set for the stage only
    with pytest.raises(SweepError, match="no job directories"):
        run_stage(compose(["stage=summarize", f"stage.dir={run_dir}"]), tmp_path / "again")


# --- a real sweep -------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_tiny_sweep_mcts_multirun_is_summarised_job_by_job(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "grid"
    command = [sys.executable, "-m", "medsss.run", "--multirun", "+experiment=sweep_mcts", "model=tiny",
               "search=tiny", "backend=hf", "data.limit=2", "logger=wandb",
               "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    env = {key: value for key, value in os.environ.items() if key != "MEDSSS_RUN_GROUP"}
    done = subprocess.run(command, cwd=ROOT, env={**env, "WANDB_MODE": "offline"}, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    summary = write_summary(sweep, tmp_path / "summary")
    assert len(summary.rows) == 8
    assert sorted(summary.swept) == ["search.max_nodes", "search.simulations", "search.width"]
    assert summary.common == {"experiment": "sweep_mcts", "model": "tiny", "search": "tiny", "backend": "hf",
                              "data.limit": "2", "logger": "wandb"}
    points = {(row["search.width"], row["search.max_nodes"], row["search.simulations"]) for row in summary.rows}
    assert points == {(w, n, s) for w in ("2", "3") for n in ("8", "16") for s in ("4", "8")}
    for row in summary.rows:
        job = sweep / row["directory"]
        metrics = json.loads((job / "metrics.json").read_text())
        trees = [json.loads(line) for line in (job / "trees.jsonl").read_text().splitlines()]
        assert row["status"] == "done" and row["problems"] == len(trees) == 2
        # Computed here from the files on their own: nodes per tree, chains per problem, tokens.
        assert row["nodes_per_tree"] == sum(len(t["nodes"]) for t in trees) / len(trees)
        assert row["nodes_per_tree"] == metrics["nodes_this_run"] / 2
        correct = sum(1 for t in trees for n in t["nodes"] if n["kind"] == "finish" and not n["children"]
                      and n["correct"])
        assert row["correct_per_problem"] == correct / 2 == metrics["trajectories_pos_chains"] / 2
        assert row["problems_with_both"] == metrics["trajectories_problems_with_both"]
        assert row["generated_tokens_per_problem"] == metrics["generated_tokens"] / 2
        assert row["problems_per_hour"] == metrics["problems_per_hour"]
        assert row["wall_seconds"] == metrics["wall_seconds"]
        # logger=wandb: every job in the sweep's group, its stage as the job type
        [offline] = (job / "wandb").glob("offline-run-*")
        logged = read_offline_run(offline)
        assert (logged.group, logged.job_type) == ("sweep-grid", "synthesize")
        assert logged.config["search"]["width"] == int(row["search.width"])
    assert {p.name for p in summary.plots} == {"synthesize_yield.png", "synthesize_heatmap.png"}
