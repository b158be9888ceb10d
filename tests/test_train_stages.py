"""The sft and prm stages on the tiny model: views from stored trees, saved loadable outputs,
resume from a checkpoint, and a 2-process ddp run on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, compose

from medsss.generation.base import GenerationRequest
from medsss.generation.hf import HFBackend
from medsss.generation.models import ModelSpec
from medsss.run import run_stage
from medsss.training.prm_model import PRMScorer, ProcessRewardModel

TINY = ["model=tiny", "logger=none", "trainer.enable_progress_bar=false", "stage.batch_size=2"]


@pytest.fixture(scope="module")
def trees(training_trees):
    return training_trees


@pytest.mark.integration
def test_sft_stage_saves_an_adapter_and_a_merged_policy_the_backend_loads(trees, tiny_model, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # float32 by name: with dtype=auto the machine's training probe may load the base in bfloat16,
    # and the comparison below is of the fp32 base with its adapter.
    metrics = run_stage(compose(["+experiment=sft_policy", f"data.trees={trees}", *TINY, "stage.dtype=float32"]),
                        tmp_path)
    assert metrics["view_chains"] == 8 and metrics["train_chains"] + metrics["val_chains"] == 8
    assert len((tmp_path / "sft.jsonl").read_text().splitlines()) == 8
    # final/merged is the base with the trained adapter (final/) folded in: the adapter's logits on
    # its base, which training moved away from the base's own.
    ids = torch.tensor([[5, 17, 230, 41, 9, 300]])
    base_model = AutoModelForCausalLM.from_pretrained(tiny_model.resolve())
    with torch.no_grad():
        base = base_model(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base_model, tmp_path / "final")(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "final" / "merged")(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-4)
    assert (merged - base).abs().max() > 1e-4
    # the next round's generation backend loads the merged policy as it loads the adapter on its base
    request = GenerationRequest(({"role": "user", "content": "Q?"},), "Step 0:", temperature=0.0, max_tokens=6)
    texts = [HFBackend(spec, device="cpu").generate([request])[0][0].text for spec in (
        ModelSpec(id="next-round", source=str(tmp_path / "final" / "merged")),
        ModelSpec(id="adapter", source=tiny_model.resolve(), adapter=str(tmp_path / "final")))]
    assert texts[0] == texts[1]
    assert json.loads((tmp_path / "metrics.json").read_text())["stage"] == "sft"
    assert metrics["train_tokens_per_second_mean"] > 0 and metrics["gradient_checkpointing"] == "auto"


@pytest.mark.parametrize("experiment, expected_labels", [
    ("prm_soft", [0.5, 1.0]),
    ("prm_hard", [0.0, 1.0]),
    ("prm_value_dynamics", [0.5, 1.0]),  # step 1 unshaped (V_1 = 0.5); 1.0 - (0.5 - 1.0) -> 1
])
@pytest.mark.integration
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


def _checkpointing(model) -> bool:
    return model.get_base_model().is_gradient_checkpointing


@pytest.mark.integration
def test_value_dynamics_can_shape_step_one_against_the_root(trees, tmp_path):
    overrides = ["+experiment=prm_value_dynamics", f"data.trees={trees}", *TINY,
                 "stage.labels.shape_step_one=true", "trainer.max_steps=1"]
    run_stage(compose(overrides), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "prm.jsonl").read_text().splitlines()]
    assert rows[0]["labels"] == pytest.approx([0.6, 1.0])  # 0.5 - (0.4 - 0.5) = 0.6


@pytest.mark.parametrize("flag, expected", [([], True), (["stage.gradient_checkpointing=false"], False)])
def test_gradient_checkpointing_reaches_both_models_on_by_default(tiny_model, flag, expected):
    from medsss.stages.train import policy_model, reward_model

    sft = compose(["+experiment=sft_policy", "data.trees=unused", *TINY, *flag])
    prm = compose(["+experiment=prm_soft", "data.trees=unused", *TINY, *flag])
    assert _checkpointing(policy_model(sft, tiny_model.resolve(), False)) is expected
    assert _checkpointing(reward_model(prm, tiny_model.resolve(), False).body) is expected


def test_the_prm_trains_the_body_without_the_lm_head(tiny_model):
    from medsss.stages.train import reward_model

    cfg = compose(["+experiment=prm_soft", "data.trees=unused", *TINY])
    names = [name for name, _ in reward_model(cfg, tiny_model.resolve(), False).named_parameters()]
    assert names and not any("lm_head" in name for name in names)


def _probe_says(monkeypatch, dtype):
    """Stub the training dtype probe; returns the list of what it was asked."""
    from medsss.generation import dtype as probe

    asked = []

    def choose(model, device, requested, **kw):
        asked.append((device, requested, kw.get("workload")))
        return dtype

    monkeypatch.setattr(probe, "choose_dtype", choose)
    return asked


def test_stage_dtype_auto_with_lora_loads_the_base_in_the_probes_dtype_and_adapters_in_float32(
        tiny_model, monkeypatch):
    import torch

    from medsss.stages import train

    asked = _probe_says(monkeypatch, torch.bfloat16)
    cfg = compose(["+experiment=sft_policy", "data.trees=unused", *TINY, "stage.dtype=auto"])
    model = train.policy_model(cfg, tiny_model.resolve(), False)
    assert asked == [("cpu", "auto", "train")]
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}


def test_stage_dtype_auto_prm_keeps_its_head_in_float32(tiny_model, monkeypatch):
    import torch

    from medsss.stages import train

    _probe_says(monkeypatch, torch.bfloat16)
    cfg = compose(["+experiment=prm_soft", "data.trees=unused", *TINY, "stage.dtype=auto"])
    model = train.reward_model(cfg, tiny_model.resolve(), False)
    assert model.head.weight.dtype == torch.float32
    assert next(p for n, p in model.body.named_parameters() if "lora" not in n).dtype == torch.bfloat16
    logits = model.token_logits(torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.long))
    assert logits.dtype == torch.float32 and logits.shape == (1, 3)


def test_stage_dtype_auto_without_lora_trains_in_float32_on_cpu(tiny_model, monkeypatch):
    import torch

    from medsss.stages import train

    asked = _probe_says(monkeypatch, torch.bfloat16)
    cfg = compose(["+experiment=sft_policy", "data.trees=unused", *TINY, "stage.dtype=auto",
                   "stage.lora.enabled=false"])
    model = train.policy_model(cfg, tiny_model.resolve(), False)
    assert asked == [] and {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.integration
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


@pytest.mark.integration
def test_two_process_ddp_on_cpu_splits_the_batches_and_saves(trees, tmp_path):
    command = [sys.executable, "-m", "medsss.run", "+experiment=prm_soft", f"data.trees={trees}", *TINY,
               "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # 14 training chains in batches of 2 are 7 batches; each rank takes every other one of the
    # first 6 (ranks take equally many), so one epoch is 3 optimizer steps instead of 7.
    assert (metrics["train_chains"], metrics["global_steps"]) == (14, 3)
    model = ProcessRewardModel.from_causal_lm(str(tmp_path / "final"))  # saved once, by rank 0
    from transformers import AutoTokenizer

    [scores] = PRMScorer(model, AutoTokenizer.from_pretrained(tmp_path / "final"), None).score(
        "Case 0?", [["Let's break down this problem step by step.", "idea 0", "The answer is A."]])
    assert len(scores) == 2 and all(0 < s < 1 for s in scores)


@pytest.mark.integration
def test_training_logs_to_csv(trees, tmp_path):
    overrides = ["+experiment=prm_soft", f"data.trees={trees}", *TINY, "logger=csv"]
    run_stage(compose(overrides), tmp_path)
    header = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss" in header and "val/step_auroc" in header
    hparams = yaml.safe_load((tmp_path / "logs" / "version_0" / "hparams.yaml").read_text())
    assert hparams["stage"]["name"] == "prm" and hparams["stage"]["optim"]["optimizer"]["lr"] == 5e-5


@pytest.mark.integration
def test_training_logs_every_step_and_the_config_to_wandb_offline(trees, tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    sent: list[tuple[dict, int | None]] = []
    configs: list[dict] = []
    log_metrics, log_hyperparams = WandbLogger.log_metrics, WandbLogger.log_hyperparams

    def spy_metrics(self, metrics, step=None):
        sent.append((dict(metrics), step))
        return log_metrics(self, metrics, step)

    def spy_hyperparams(self, params, *args, **kwargs):
        configs.append(params)
        return log_hyperparams(self, params, *args, **kwargs)

    monkeypatch.setattr(WandbLogger, "log_metrics", spy_metrics)
    monkeypatch.setattr(WandbLogger, "log_hyperparams", spy_hyperparams)
    overrides = ["+experiment=prm_soft", f"data.trees={trees}", *TINY, "logger=wandb",
                 "trainer.log_every_n_steps=1"]
    metrics = run_stage(compose(overrides), tmp_path)
    [offline] = (tmp_path / "wandb").glob("offline-run-*")
    assert list(offline.glob("*.wandb"))
    losses = [(step, values["train/loss"]) for values, step in sent if "train/loss" in values]
    assert [step for step, _ in losses] == list(range(metrics["global_steps"])) == list(range(7))
    assert losses[-1][1] == pytest.approx(metrics["train_loss"])
    assert any("val/step_auroc" in values for values, _ in sent)
    assert configs[0]["stage"]["name"] == "prm" and configs[0]["data"]["trees"] == str(trees)


@pytest.mark.integration
def test_the_configured_optimizer_schedule_and_callbacks_reach_the_trainer(trees, tmp_path):
    import csv

    overrides = ["+experiment=prm_soft", f"data.trees={trees}", *TINY, "logger=csv", "trainer.max_steps=2",
                 "trainer.log_every_n_steps=1", "stage.optim.optimizer.lr=0.001", "stage.optim.scheduler=null",
                 "callbacks@stage.callbacks=[default,lr_monitor]"]
    metrics = run_stage(compose(overrides), tmp_path)
    with open(tmp_path / "logs" / "version_0" / "metrics.csv", encoding="utf-8") as handle:
        rates = [float(row["lr-AdamW"]) for row in csv.DictReader(handle) if row.get("lr-AdamW")]
    # The configured rate, held: with the default warm-up + cosine schedule it would be [0.001, 0.0005].
    assert rates == [0.001, 0.001]
    assert metrics["global_steps"] == 2 and (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_a_training_stage_that_fails_leaves_a_finalized_run(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger

    finalized = []
    original = CSVLogger.finalize
    monkeypatch.setattr(CSVLogger, "finalize",
                        lambda self, status: finalized.append(status) or original(self, status))
    empty = tmp_path / "trees.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no labelled chains"):
        run_stage(compose(["+experiment=prm_soft", f"data.trees={empty}", *TINY, "logger=csv"]), tmp_path / "run")
    assert finalized == ["failed"]
    hparams = yaml.safe_load((tmp_path / "run" / "logs" / "version_0" / "hparams.yaml").read_text())
    assert hparams["data"]["trees"] == str(empty)


def test_moved_training_helpers_keep_working():
    from medsss.training.examples import split_by_problem
    from medsss.training.fit import resolve_ckpt_path
    from medsss.training.models import TrainingModelSettings, checkpoint_above_tokens, training_device

    rows = [{"id": f"p{k}"} for k in range(20) for _ in range(2)]
    train, held = split_by_problem(rows, 0.1)
    assert held and {r["id"] for r in train}.isdisjoint({r["id"] for r in held})
    assert split_by_problem(rows, 0.1) == (train, held)  # stable
    assert split_by_problem(rows[:2], 0.5) == (rows[:2], [])  # one problem: nothing to hold out
    assert checkpoint_above_tokens("auto", 768) == 768 and checkpoint_above_tokens("auto", None) == 0
    assert checkpoint_above_tokens(True, 768) is None
    assert training_device("gpu") == "cuda" and training_device("auto", cuda_available=False) == "cpu"
    with pytest.raises(ValueError, match="true, false or auto"):
        TrainingModelSettings(gradient_checkpointing="sometimes")
    assert resolve_ckpt_path("latest", Path("/nonexistent")) is None
    assert resolve_ckpt_path("some.ckpt", Path("/nonexistent")) == "some.ckpt"


@pytest.mark.integration
def test_an_unmerged_prm_adapter_loads_on_its_base_with_the_scores_of_the_merged_save(trees, tmp_path):
    from transformers import AutoTokenizer

    chain = ["Let's break down this problem step by step.", "idea 0", "The answer is A."]
    scores = {}
    for merge in (False, True):  # the same seeded training, saved both ways
        run_dir = tmp_path / f"merge_{merge}"
        # float32 by name: a bfloat16 base (dtype=auto's probe, on some CPUs) merges with rounding.
        run_stage(compose(["+experiment=prm_soft", f"data.trees={trees}", *TINY, f"stage.merge={merge}",
                           "stage.dtype=float32"]), run_dir)
        assert (run_dir / "final" / "adapter_config.json").exists() is not merge
        model = ProcessRewardModel.from_causal_lm(str(run_dir / "final"))
        [scores[merge]] = PRMScorer(model, AutoTokenizer.from_pretrained(run_dir / "final"), None).score(
            "Case 0?", [chain])
    assert len(scores[False]) == 2 and scores[False] == pytest.approx(scores[True], abs=1e-5)
