"""What a W&B dashboard gets (docs/wandb.md): stages run with logger=wandb offline on the tiny
model, then their offline runs read back from the transaction log: group, job type, config,
summary keys, the trees table with one HTML page per problem, the evaluation tables and plot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import BUNDLED_BENCHMARKS, compose
from wandb_records import OfflineRun, read_offline_run

from medsss.run import run_stage
from medsss.tracking import RUN_GROUP_ENV

pytest.importorskip("wandb")


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """Offline W&B with its staging folder in the test's directory and no run group set (set,
    then deleted: monkeypatch restores the variable's absence afterwards)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    monkeypatch.setenv(RUN_GROUP_ENV, "unset")
    monkeypatch.delenv(RUN_GROUP_ENV)
    return monkeypatch


def offline_run(run_dir: Path) -> OfflineRun:
    [directory] = (run_dir / "wandb").glob("offline-run-*")
    return read_offline_run(directory)


def artifact(run: OfflineRun, table: str) -> list[str]:
    [paths] = [paths for name, paths in run.artifacts.items() if name.endswith(f"-{table}")]
    return paths


@pytest.mark.integration
def test_synthesis_logs_its_group_config_metrics_and_a_table_of_trees(tmp_path, wandb_offline):
    run_dir = tmp_path / "synthesize"
    metrics = run_stage(compose(["model=tiny", "search=tiny", "backend=hf", "data.limit=2", "logger=wandb"]),
                        run_dir)
    run = offline_run(run_dir)
    assert (run.group, run.job_type) == ("synthesize", "synthesize")  # a lone run: its stage
    assert run.config["stage"]["name"] == "synthesize" and run.config["search"]["width"] == 2
    assert run.summary["synthesis/problems_per_hour"] == metrics["problems_per_hour"]
    assert run.summary["sample_trajectories/_type"] == "table-file"
    assert (run.summary["trees/_type"], run.summary["trees/nrows"]) == ("table-file", 2)

    paths = artifact(run, "trees")
    pages = [path for path in paths if path.startswith("media/html/") and path.endswith(".html")]
    assert "trees.table.json" in paths and len(pages) == 2  # one page per problem
    table = json.loads(Path(run.local_files["trees.table.json"]).read_text())
    assert table["columns"] == ["id", "answer", "stop_reason", "outcome", "nodes", "correct_finishes",
                                "wrong_finishes", "max_depth", "generated_tokens", "tree"]
    trees = [json.loads(line) for line in (run_dir / "trees.jsonl").read_text().splitlines()]
    assert [row[0] for row in table["data"]] == [tree["id"] for tree in trees]
    assert [row[4] for row in table["data"]] == [len(tree["nodes"]) for tree in trees]
    assert all(row[-1]["_type"] == "html-file" for row in table["data"])
    page = Path(run.local_files[table["data"][0][-1]["path"]]).read_text()
    assert page.startswith("<!doctype html>") and f'"order":["{trees[0]["id"]}"]' in page  # its tree alone


@pytest.mark.integration
def test_evaluation_logs_its_tables_and_accuracy_vs_n_in_the_run_group_it_is_given(tmp_path, wandb_offline):
    wandb_offline.setenv(RUN_GROUP_ENV, "evolve-demo")  # as stage=evolve sets it for its steps
    overrides = ["+experiment=eval_bench", "model=tiny", "backend=hf", f"paths.data_dir={BUNDLED_BENCHMARKS}",
                 "suite=medqa", "stage.limit=2", "stage.n=2", "stage.max_tokens=8", "stage.bootstrap=20",
                 "stage.subsample_rounds=2", "logger=wandb"]
    run_dir = tmp_path / "evaluate"
    run_stage(compose(overrides), run_dir)
    run = offline_run(run_dir)
    assert (run.group, run.job_type) == ("evolve-demo", "evaluate")
    assert run.config["stage"]["n"] == 2 and run.config["decode"]["selection"] == "pvs"
    assert run.summary["results/_type"] == run.summary["grid/_type"] == "table-file"
    assert "grid.table.json" in artifact(run, "grid")
    assert run.summary["accuracy_vs_n/medqa/_type"] == "images/separated"
    [image] = run.summary["accuracy_vs_n/medqa/filenames"]
    assert (run.directory / "files" / image).stat().st_size == (run_dir / "plots" / "medqa.png").stat().st_size


@pytest.mark.integration
def test_training_logs_its_config_as_hyperparameters(tmp_path, wandb_offline, training_trees):
    overrides = ["+experiment=prm_soft", f"data.trees={training_trees}", "model=tiny", "logger=wandb",
                 "trainer.enable_progress_bar=false", "stage.batch_size=2", "trainer.max_steps=2", "trainer.log_every_n_steps=1"]
    run_stage(compose(overrides), tmp_path)
    run = offline_run(tmp_path)
    assert (run.group, run.job_type) == ("prm", "prm")
    assert run.config["stage"]["optim"]["optimizer"]["lr"] == 5e-5
    assert run.config["stage"]["labels"]["rule"] == "soft"
    assert "train/loss" in run.summary and run.summary["trainer/global_step"] >= 1


def test_evolve_steps_run_in_the_evolve_group(tmp_path, wandb_offline):
    from medsss.stages import evolve

    seen: list[str | None] = []

    def run_step(plan, *args, **kwargs) -> bool:
        seen.append(os.environ.get(RUN_GROUP_ENV))
        return False

    wandb_offline.setattr(evolve, "_run_step", run_step)
    wandb_offline.setattr(evolve, "write_report", lambda rows, run_dir: None)
    evolve.run(compose(["stage=evolve", "stage.rounds=1"]), tmp_path / "evo-run")
    assert seen and set(seen) == {"evolve-evo-run"}


def test_loggers_without_html_get_the_table_without_its_page_column(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from medsss.tracking import RunLoggers

    logger = CSVLogger(str(tmp_path), name="logs")
    tracking = RunLoggers([logger])
    tracking.log_html_table("trees", ["id", "nodes"], [["p1", 3], ["p2", 5]], "tree", ["<p>1</p>", "<p>2</p>"])
    assert (Path(logger.log_dir) / "trees.csv").read_text().splitlines() == ["id,nodes", "p1,3", "p2,5"]
    tracking.log_image("plot", tmp_path / "missing.png")  # no media on CSV: nothing to do, no error
    with pytest.raises(ValueError, match="table trees: 1 pages for 2 rows"):
        tracking.log_html_table("trees", ["id"], [["p1"], ["p2"]], "tree", ["<p>1</p>"])
