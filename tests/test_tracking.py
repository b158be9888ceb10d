"""The one tracking layer: Lightning loggers from ``logger=`` (a list), the resolved config as
hyperparameters with secrets redacted, metrics and tables, and runs finalized also on error."""

from __future__ import annotations

import csv

import pytest
import yaml
from conftest import compose

from medsss.stages.common import instantiate_loggers, tracked_stage
from medsss.tracking import REDACTED, RunLoggers, redact_secrets, tracked_run


def read_csv(path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_a_csv_run_writes_hyperparams_metrics_and_tables(tmp_path):
    cfg = compose(["logger=[csv]"])
    with tracked_stage(cfg, tmp_path) as run:
        run.log_metrics({"synthesis/nodes": 3, "model": "not a number", "ci": [0.1, 0.2]}, step=1)
        run.log_metrics({"synthesis/nodes": 5})
        run.log_table("results", ["benchmark", "sc"], [["medqa", 0.5], ["pubmedqa", 0.25]])
    log_dir = tmp_path / "logs" / "version_0"
    hparams = yaml.safe_load((log_dir / "hparams.yaml").read_text())
    assert hparams["stage"]["name"] == "synthesize" and hparams["seed"] == 0
    assert hparams["prompt"]["system"] == cfg.prompt.system  # resolved, not interpolations
    rows = read_csv(log_dir / "metrics.csv")
    assert [r["synthesis/nodes"] for r in rows] == ["3", "5"] and "model" not in rows[0]
    assert read_csv(log_dir / "results.csv") == [{"benchmark": "medqa", "sc": "0.5"},
                                                 {"benchmark": "pubmedqa", "sc": "0.25"}]


def test_a_run_that_raises_is_finalized_as_failed_with_what_it_logged(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger

    statuses = []
    original = CSVLogger.finalize
    monkeypatch.setattr(CSVLogger, "finalize", lambda self, status: statuses.append(status) or original(self, status))
    [logger] = instantiate_loggers(compose(["logger=csv"]).logger, tmp_path)
    with pytest.raises(RuntimeError, match="boom"), tracked_run([logger], {"seed": 1}) as run:
        run.log_metrics({"loss": 0.5}, step=0)
        raise RuntimeError("boom")
    assert statuses == ["failed"]
    assert read_csv(tmp_path / "logs" / "version_0" / "metrics.csv") == [{"loss": "0.5", "step": "0"}]
    with tracked_run([logger], {"seed": 1}):
        pass
    assert statuses == ["failed", "success"]


def test_a_synthesis_stage_that_raises_leaves_a_finalized_run(tmp_path):
    from medsss.run import run_stage

    # A data file whose row is not JSON: the stage raises inside its tracked run (a missing file
    # would be refused by the preflight checks before the run starts).
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    cfg = compose(["logger=csv", "data=jsonl", f"data.path={bad}"])
    with pytest.raises(Exception, match="bad.jsonl"):
        run_stage(cfg, tmp_path / "run")
    hparams = yaml.safe_load((tmp_path / "run" / "logs" / "version_0" / "hparams.yaml").read_text())
    assert hparams["data"]["path"] == str(bad)


@pytest.mark.integration  # starts W&B's own service process: seconds of wall time
def test_wandb_runs_are_finished_offline_and_marked_failed_on_error(tmp_path):
    wandb = pytest.importorskip("wandb")

    [logger] = instantiate_loggers(compose(["logger=wandb", "logger.wandb.mode=offline"]).logger, tmp_path)
    with pytest.raises(ValueError), tracked_run([logger], {"seed": 3, "api_key": "hunter2"}) as run:
        run.log_metrics({"loss": 1.0}, step=0)
        run.log_table("results", ["benchmark", "sc"], [["medqa", 0.5]])
        assert dict(wandb.run.config) == {"seed": 3, "api_key": REDACTED}
        raise ValueError("the stage failed")
    assert wandb.run is None  # finished: the next stage in this process starts its own run
    [offline] = (tmp_path / "wandb").glob("offline-run-*")
    assert list(offline.glob("*.wandb"))


def test_secrets_are_redacted_at_any_depth_and_token_counts_are_not():
    config = {"model": {"hf_token": "x", "max_tokens": 8}, "wandb": {"api_key": "y", "tags": ["token"]},
              "password": "z", "items": [{"secret": "s"}], "max_batch_tokens": 768}
    assert redact_secrets(config) == {
        "model": {"hf_token": REDACTED, "max_tokens": 8}, "wandb": {"api_key": REDACTED, "tags": ["token"]},
        "password": REDACTED, "items": [{"secret": REDACTED}], "max_batch_tokens": 768}


def test_without_loggers_nothing_is_logged_or_needed(tmp_path):
    with tracked_run([], {"seed": 0}) as run:
        run.log_metrics({"a": 1})
        run.log_table("t", ["a"], [[1]])
    assert isinstance(run, RunLoggers) and run.loggers == [] and not list(tmp_path.iterdir())
