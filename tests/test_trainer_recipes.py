"""Every trainer recipe (conf/trainer/) builds the Lightning Trainer it describes, as the training
stages build it: cpu and ddp here; gpu, fsdp and deepspeed, and the paper's GPU experiments (the
8B SFT and PRM recipes and the released-model evaluation, with the tiny model in place of the 8B
one), on a CUDA device (marker ``gpu``: skipped with the reason elsewhere). The released-model
evaluation also runs here, on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import BUNDLED_BENCHMARKS, CONF, compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

from medsss.run import run_stage
from medsss.stages.common import instantiate_callbacks

# What each recipe changes in the one-process CPU recipe it builds on (conf/trainer/cpu.yaml).
GPU = {"accelerator": "gpu", "precision": "bf16-mixed"}
RECIPES = {
    "cpu": {},
    "ddp": {"accelerator": "auto", "devices": 2, "strategy": "ddp"},
    "gpu": GPU,
    "fsdp": {**GPU, "devices": -1, "strategy": "fsdp"},
    "deepspeed": {**GPU, "devices": -1, "strategy": "deepspeed_stage_2"},
}


def trainer_settings(option: str, *overrides: str) -> dict:
    return OmegaConf.to_container(compose(["stage=sft", f"trainer={option}", *overrides]).trainer, resolve=True)


def build_trainer(cfg, run_dir: Path):
    """The Trainer a training stage builds from ``cfg`` (medsss/stages/train.py): the trainer
    recipe, the stage's callbacks, the run directory."""
    return instantiate(cfg.trainer, default_root_dir=str(run_dir),
                       callbacks=instantiate_callbacks(cfg.stage.get("callbacks"), run_dir), logger=False)


def test_the_recipes_checked_here_are_the_recipe_files():
    assert sorted(RECIPES) == sorted(p.stem for p in (CONF / "trainer").glob("*.yaml"))


@pytest.mark.parametrize("option", sorted(RECIPES))
def test_each_recipe_is_the_cpu_recipe_but_for_its_own_keys(option):
    cpu, recipe = trainer_settings("cpu"), trainer_settings(option)
    assert recipe["_target_"] == "lightning.Trainer"
    assert {key: value for key, value in recipe.items() if cpu.get(key) != value} == RECIPES[option]
    # every recipe keeps the batches of the length-grouped sampler, which shards them itself
    assert recipe["use_distributed_sampler"] is False and recipe["gradient_clip_val"] == 1.0


def test_the_cpu_recipe_builds_a_one_process_fp32_trainer_with_the_stage_checkpoints(tmp_path):
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.strategies import SingleDeviceStrategy

    trainer = build_trainer(compose(["stage=prm", "stage.checkpoint_every=7"]), tmp_path)
    assert isinstance(trainer.accelerator, CPUAccelerator) and isinstance(trainer.strategy, SingleDeviceStrategy)
    assert (trainer.num_devices, trainer.world_size, trainer.precision) == (1, 1, "32-true")
    assert (trainer.max_epochs, trainer.max_steps, trainer.accumulate_grad_batches) == (1, -1, 1)
    assert (trainer.gradient_clip_val, trainer.log_every_n_steps) == (1.0, 5)
    assert trainer._accelerator_connector.use_distributed_sampler is False
    [checkpoint] = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert Path(checkpoint.dirpath) == tmp_path / "checkpoints" and checkpoint._every_n_train_steps == 7
    assert trainer.default_root_dir == str(tmp_path)


def test_ddp_on_cpu_builds_a_two_process_gloo_trainer_without_starting_a_process(tmp_path):
    # The documented CPU data-parallel run: trainer=ddp trainer.accelerator=cpu trainer.devices=2.
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.strategies import DDPStrategy

    trainer = build_trainer(compose(["stage=sft", "trainer=ddp", "trainer.accelerator=cpu"]), tmp_path)
    assert isinstance(trainer.accelerator, CPUAccelerator) and isinstance(trainer.strategy, DDPStrategy)
    assert (trainer.num_devices, trainer.world_size, trainer.global_rank) == (2, 2, 0)
    assert trainer.strategy._get_process_group_backend() == "gloo"
    assert not torch.distributed.is_initialized()  # the processes start with fit, not here
    assert trainer._accelerator_connector.use_distributed_sampler is False


# --- on a CUDA device ------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("option", ["gpu", "fsdp", "deepspeed"])
def test_the_gpu_recipes_build_their_trainer_on_a_cuda_device(option, tmp_path):
    from lightning.pytorch.accelerators import CUDAAccelerator
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, SingleDeviceStrategy

    if option == "deepspeed":
        pytest.importorskip("deepspeed", reason="trainer=deepspeed needs the optional deepspeed package")
    trainer = build_trainer(compose(["stage=sft", f"trainer={option}"]), tmp_path)
    assert isinstance(trainer.accelerator, CUDAAccelerator) and trainer.precision == "bf16-mixed"
    expected = {"gpu": SingleDeviceStrategy, "fsdp": FSDPStrategy, "deepspeed": DeepSpeedStrategy}[option]
    assert isinstance(trainer.strategy, expected)
    assert trainer.num_devices == (1 if option == "gpu" else torch.cuda.device_count())  # devices: -1 is all
    if option == "deepspeed":
        assert trainer.strategy.config["zero_optimization"]["stage"] == 2


def train_recipe(experiment: str, trees: Path, run_dir: Path, *overrides: str) -> dict:
    """The paper's 8B training recipe with the tiny model in place of Llama-3.1-8B: two steps."""
    cfg = compose([f"+experiment={experiment}", f"data.trees={trees}", "model=tiny", "logger=none",
                   "trainer.max_steps=2", "trainer.enable_progress_bar=false", "stage.batch_size=2", *overrides])
    return run_stage(cfg, run_dir)


@pytest.mark.gpu
@pytest.mark.integration
@pytest.mark.parametrize("experiment", ["sft_llama31_8b", "prm_llama31_8b"])
def test_the_paper_training_recipes_train_on_a_cuda_device(experiment, training_trees, tmp_path):
    metrics = train_recipe(experiment, training_trees, tmp_path)
    assert metrics["global_steps"] == 2 and metrics["peak_cuda_mb"] > 0
    # the recipe's bf16 base with fp32 adapters, and activations recomputed in every batch
    assert metrics["dtype"] == "bfloat16" and metrics["gradient_checkpointing"] is True
    assert (tmp_path / "final").is_dir()


def released_layout_models(base: str, directory: Path) -> tuple[Path, Path]:
    """The released MedSSS layout on ``base``: a policy LoRA adapter and a PRM that is a
    two-class token classifier with a LoRA adapter (random weights, seeded)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    torch.manual_seed(3)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                       task_type="CAUSAL_LM", init_lora_weights=False))
    policy.save_pretrained(directory / "policy")
    prm = get_peft_model(AutoModelForTokenClassification.from_pretrained(base, num_labels=2),
                         LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="TOKEN_CLS",
                                    init_lora_weights=False))
    prm.save_pretrained(directory / "prm")
    return directory / "policy", directory / "prm"


def evaluate_released_recipe(base: str, work: Path, *overrides: str) -> dict:
    """``+experiment=eval_medsss_8b`` with tiny released-layout models in place of the 8B ones, on
    the bundled benchmark files: one item per benchmark, two candidates of 8 tokens."""
    policy, prm = released_layout_models(base, work / "models")
    cfg = compose(["+experiment=eval_medsss_8b", f"model.source={base}", f"model.adapter={policy}",
                   f"stage.prm.path={prm}", f"paths.data_dir={BUNDLED_BENCHMARKS}", "backend=hf",
                   "stage.limit=1", "stage.n=2", "stage.max_tokens=8", "stage.bootstrap=20",
                   "stage.subsample_rounds=2", "logger=none", *overrides])
    return run_stage(cfg, work / "eval")


def check_released_run(metrics: dict, run_dir: Path) -> None:
    # 7 of the paper's 11 benchmarks are bundled (the other 4 are skipped with a warning); each
    # item: 2 candidates and a greedy answer
    assert metrics["generations_sampled"] == 7 * 1 * (2 + 1)
    rows = [line for line in (run_dir / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows[1:]] == [
        "medqa", "medmcqa", "mmlu_medical", "pubmedqa", "bioasq", "pubhealth", "drugdose", "macro average"]
    assert not any("not run" in row for row in rows)  # the token-classifier PRM scored every candidate
    assert (metrics["decode"], metrics.get("decode_fallback_from")) == ("pvs", None)


@pytest.mark.integration
def test_the_released_model_evaluation_recipe_runs_with_tiny_released_layout_models(tiny_model, tmp_path):
    metrics = evaluate_released_recipe(tiny_model.resolve(), tmp_path)
    check_released_run(metrics, tmp_path / "eval")


@pytest.mark.gpu
@pytest.mark.integration
def test_the_released_model_evaluation_runs_on_a_cuda_device(tiny_model, tmp_path):
    metrics = evaluate_released_recipe(tiny_model.resolve(), tmp_path)
    check_released_run(metrics, tmp_path / "eval")
    assert metrics["peak_cuda_mb"] > 0
