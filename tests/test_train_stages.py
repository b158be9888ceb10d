"""The sft and prm stages on the tiny model: views from stored trees, saved loadable outputs,
resume from a checkpoint, and a 2-process ddp run on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, compose
from helpers import build_tree

from medsss.generation.base import GenerationRequest
from medsss.generation.hf import HFBackend
from medsss.generation.models import ModelSpec
from medsss.run import run_stage
from medsss.training.prm_model import PRMScorer, ProcessRewardModel

TINY = ["model=tiny", "logger=none", "trainer.enable_progress_bar=false", "stage.batch_size=2"]


def mixed_tree(k: int):
    return build_tree({
        "root": {"visits": 3, "value": 0.4},
        f"idea {k}": {"parent": "root", "visits": 2, "value": 0.5, "rollout_total": 4, "rollout_correct": 2},
        f"other {k}": {"parent": "root", "visits": 2, "value": 0.25, "rollout_total": 4, "rollout_correct": 1},
        "So the answer is A. The answer is A.": {"parent": f"idea {k}", "kind": "finish", "visits": 1,
                                                 "value": 1.0, "correct": True},
        "So the answer is B. The answer is B.": {"parent": f"other {k}", "kind": "finish", "visits": 1,
                                                 "value": 0.0, "correct": False},
    })


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    run = tmp_path_factory.mktemp("synthesis")
    with open(run / "trees.jsonl", "w") as handle:
        for k in range(8):
            record = {"id": f"p{k}", "question": f"Case {k}?\nA. yes\nB. no", "answer": "A",
                      **mixed_tree(k).to_dict()}
            handle.write(json.dumps(record) + "\n")
    return run


def test_sft_stage_saves_an_adapter_and_a_merged_policy_the_backend_loads(trees, tmp_path):
    metrics = run_stage(compose(["+experiment=sft_policy", f"data.trees={trees}", *TINY]), tmp_path)
    assert metrics["view_chains"] == 8 and metrics["train_chains"] + metrics["val_chains"] == 8
    assert (tmp_path / "final" / "adapter_config.json").exists()
    assert len((tmp_path / "sft.jsonl").read_text().splitlines()) == 8
    backend = HFBackend(ModelSpec(id="next-round", source=str(tmp_path / "final" / "merged")), device="cpu")
    [[completion]] = backend.generate([GenerationRequest(({"role": "user", "content": "Q?"},), "Step 0:",
                                                         temperature=0.0, max_tokens=4)])
    assert completion.generated_tokens >= 1
    assert json.loads((tmp_path / "metrics.json").read_text())["stage"] == "sft"


@pytest.mark.parametrize("experiment, expected_labels", [
    ("prm_soft", [0.5, 1.0]),
    ("prm_hard", [0.0, 1.0]),
    ("prm_value_dynamics", [0.5, 1.0]),  # step 1 unshaped (V_1 = 0.5); 1.0 - (0.5 - 1.0) -> 1
])
def test_prm_stage_labels_by_rule_and_saves_a_scorer(trees, tmp_path, experiment, expected_labels):
    metrics = run_stage(compose([f"+experiment={experiment}", f"data.trees={trees}", *TINY]), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "prm.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and rows[0]["labels"] == pytest.approx(expected_labels)
    assert metrics["view_label_histogram"] and "val_step_auroc" in metrics
    model = ProcessRewardModel.from_causal_lm(str(tmp_path / "final"))
    from transformers import AutoTokenizer

    scores = PRMScorer(model, AutoTokenizer.from_pretrained(tmp_path / "final"), None).score(
        "Case 0?", [rows[0]["steps"]])
    assert len(scores[0]) == 2 and all(0 < s < 1 for s in scores[0])


def test_training_resumes_from_the_latest_checkpoint(trees, tmp_path):
    base = ["+experiment=prm_soft", f"data.trees={trees}", *TINY, "stage.checkpoint_every=1",
            "trainer.max_epochs=5"]
    first = run_stage(compose([*base, "trainer.max_steps=2"]), tmp_path)
    assert (first["start_step"], first["global_steps"]) == (0, 2)
    resumed = run_stage(compose([*base, "trainer.max_steps=4", "stage.ckpt_path=latest"]), tmp_path)
    assert (resumed["start_step"], resumed["global_steps"]) == (2, 4)


def test_training_without_trees_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="data.trees"):
        run_stage(compose(["+experiment=prm_soft", *TINY]), tmp_path)


def test_two_process_ddp_on_cpu_finishes_and_saves(trees, tmp_path):
    command = [sys.executable, "-m", "medsss.run", "+experiment=prm_soft", f"data.trees={trees}", *TINY,
               "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "final" / "value_head.safetensors").exists()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["global_steps"] >= 1


@pytest.mark.parametrize("logger, produced", [("csv", "logs/version_0/metrics.csv"), ("wandb", "wandb")])
def test_training_logs_to_csv_or_wandb_offline(trees, tmp_path, logger, produced):
    overrides = ["+experiment=prm_soft", f"data.trees={trees}", *TINY, f"logger={logger}"]
    run_stage(compose(overrides), tmp_path)
    assert (tmp_path / produced).exists()
    if logger == "csv":
        header = (tmp_path / produced).read_text().splitlines()[0]
        assert "train/loss" in header and "val/step_auroc" in header


def test_an_unmerged_prm_adapter_loads_on_its_base(trees, tmp_path):
    run_stage(compose(["+experiment=prm_soft", f"data.trees={trees}", *TINY, "stage.merge=false"]), tmp_path)
    assert (tmp_path / "final" / "adapter_config.json").exists()
    model = ProcessRewardModel.from_causal_lm(str(tmp_path / "final"))
    from transformers import AutoTokenizer

    scores = PRMScorer(model, AutoTokenizer.from_pretrained(tmp_path / "final"), None).score(
        "Case 0?", [["Let's break down this problem step by step.", "idea 0", "The answer is A."]])
    assert len(scores[0]) == 2
