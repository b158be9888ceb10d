"""A config that cannot run fails before any work, with one line naming the key (issue 15, item 5).

Composition refuses a misspelt key or a wrong type in every group; :func:`medsss.preflight.preflight`
(called by ``run_stage`` before the run directory exists) refuses what needs an import, the file
system or the machine. Every refusal here leaves no run directory behind: no lock, no logs, no model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUNDLED_BENCHMARKS, CONF, ROOT, compose
from hydra.errors import ConfigCompositionException

from medsss.config_schema import ConfigKeyAddedError
from medsss.preflight import VLLM_LORA_RANKS, ConfigError, preflight, serving_backend, vllm_adapter_problems
from medsss.run import run_stage

EVALUATE = ["stage=evaluate", "model=tiny", "backend=hf", f"paths.data_dir={BUNDLED_BENCHMARKS}"]


def refused(overrides: list[str], tmp_path: Path) -> str:
    """The one-line message of ``run_stage`` refusing the config of ``overrides``; nothing was
    written (the run directory does not exist)."""
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as error:
        run_stage(compose(overrides), run_dir)
    assert not run_dir.exists()
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{error.value.key}: ")
    return message


def model_folder(directory: Path) -> Path:
    """A folder that looks like model weights to the checks (they never load it)."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text("{}")
    return directory


def adapter_folder(directory: Path, **config) -> Path:
    directory.mkdir(parents=True)
    settings = {
        "peft_type": "LORA",
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
        **config,
    }
    (directory / "adapter_config.json").write_text(json.dumps(settings))
    return directory


# --- misspelt keys: at composition, in every group -------------------------------------------------

# group: (its stage's overrides, an overlay's misspelt setting, the same on the command line, the key)
TYPOS = {
    "stage": (
        ["stage=prm", "data.trees=x"],
        "stage:\n  labels:\n    rulle: hard\n",
        "stage.labels.rulle=hard",
        "stage.labels.rulle",
    ),
    "decode": (
        ["stage=evaluate"],
        "decode:\n  agregation: mean\n",
        "decode.agregation=mean",
        "decode.agregation",
    ),
    "suite": (["stage=evaluate"], "suite:\n  benchmark: []\n", "suite.benchmark=[]", "suite.benchmark"),
    "data": (["stage=synthesize"], "data:\n  limt: 2\n", "data.limt=2", "data.limt"),
    "search": (["stage=synthesize"], "search:\n  widht: 3\n", "search.widht=3", "search.widht"),
    "trainer": (
        ["stage=sft", "data.trees=x"],
        "trainer:\n  max_step: 2\n",
        "trainer.max_step=2",
        "trainer.max_step",
    ),
}


def _conf_with_overlay(tmp_path: Path, stage: str, setting: str) -> Path:
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf, ignore=shutil.ignore_patterns("local"))
    (conf / "experiment" / "typo.yaml").write_text(
        f"# @package _global_\ndefaults:\n  - override /stage: {stage}\n{setting}"
    )
    return conf


@pytest.mark.parametrize("group", sorted(TYPOS))
def test_a_misspelt_key_in_an_overlay_fails_at_composition_naming_it(group, tmp_path):
    stage_overrides, setting, _, key = TYPOS[group]
    conf = _conf_with_overlay(tmp_path, stage_overrides[0].removeprefix("stage="), setting)
    with pytest.raises(ConfigCompositionException) as error:
        compose(["+experiment=typo", *stage_overrides[1:]], config_dir=conf)
    assert key in f"{error.value} {error.value.__cause__}"


@pytest.mark.parametrize("group", sorted(TYPOS))
def test_a_misspelt_key_on_the_command_line_fails_at_composition_naming_it(group):
    stage_overrides, _, override, key = TYPOS[group]
    with pytest.raises(ConfigCompositionException) as error:
        compose([*stage_overrides, override])
    assert key in f"{error.value} {error.value.__cause__}"


@pytest.mark.parametrize("group", sorted(TYPOS))
def test_a_misspelt_key_added_with_plus_fails_before_any_work_naming_it(group):
    # settings nodes (stage, decode, suite): check_config; constructor nodes (data, search,
    # trainer): preflight, by the target's parameters
    stage_overrides, _, override, key = TYPOS[group]
    with pytest.raises((ConfigKeyAddedError, ConfigError)) as error:
        preflight(compose([*stage_overrides, f"+{override}"]))
    assert f"'{key}'" in str(error.value) or str(error.value).startswith(f"{key}: not an argument of ")


def test_an_argument_added_with_plus_that_the_constructor_takes_passes():
    preflight(compose(["model=tiny", "backend=hf", "+backend.prefix_cache_size=64"]))
    preflight(compose(["model=tiny", "++model.adapter=null"]))  # what evolve's adapter handoff adds


# --- weights -----------------------------------------------------------------------------------------


def test_a_missing_local_model_folder_is_refused_naming_model_source(tmp_path):
    message = refused(["model=llama31_8b", f"model.source={tmp_path / 'llama'}"], tmp_path)
    assert message == f"model.source: {tmp_path / 'llama'} does not exist (a local model folder)"


def test_a_folder_without_a_model_config_is_refused_naming_model_source(tmp_path):
    (tmp_path / "outputs").mkdir()
    message = refused(["model=llama31_8b", f"model.source={tmp_path / 'outputs'}"], tmp_path)
    assert message.startswith(f"model.source: {tmp_path / 'outputs'} holds no config.json")


def test_a_hub_id_outside_the_local_cache_is_refused_unless_downloads_are_allowed(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    message = refused(["model=llama31_8b"], tmp_path)
    assert message.startswith(
        "model.source: 'meta-llama/Llama-3.1-8B-Instruct' is neither a local folder nor"
    )
    assert "allow_download=true" in message
    preflight(compose(["model=llama31_8b", "allow_download=true"]))


def test_a_hub_id_in_the_local_cache_passes(tmp_path, monkeypatch):
    from huggingface_hub import constants

    # the cache's own layout: refs/main names the snapshot that holds the files
    repo = tmp_path / "hub" / "models--meta-llama--Llama-3.1-8B-Instruct"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    model_folder(repo / "snapshots" / "0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    preflight(compose(["model=llama31_8b"]))


def test_a_missing_adapter_is_refused_naming_model_adapter(tmp_path):
    base = model_folder(tmp_path / "base")
    message = refused(
        ["model=medsss_8b", f"model.source={base}", f"model.adapter={tmp_path / 'policy'}", "backend=hf"],
        tmp_path,
    )
    assert message == f"model.adapter: {tmp_path / 'policy'} does not exist (a LoRA adapter folder)"
    (tmp_path / "policy").mkdir()
    message = refused(
        ["model=medsss_8b", f"model.source={base}", f"model.adapter={tmp_path / 'policy'}", "backend=hf"],
        tmp_path,
    )
    assert (
        message
        == f"model.adapter: {tmp_path / 'policy'} holds no adapter_config.json: not a PEFT adapter folder"
    )


def test_a_missing_prm_is_refused_naming_stage_prm_path(tmp_path):
    message = refused([*EVALUATE, f"stage.prm.path={tmp_path / 'prm'}"], tmp_path)
    assert message == f"stage.prm.path: {tmp_path / 'prm'} does not exist (a local model folder)"


# --- a LoRA adapter on a backend that cannot serve it ---------------------------------------------


def test_vllm_refuses_an_adapter_above_its_max_lora_rank_naming_the_settings_that_fix_it(tmp_path):
    base, adapter = model_folder(tmp_path / "base"), adapter_folder(tmp_path / "policy", r=128)
    overrides = ["model=medsss_8b", f"model.source={base}", f"model.adapter={adapter}", "backend=vllm"]
    message = refused(overrides, tmp_path)
    assert message == (
        "model.adapter: vLLM cannot serve this adapter unmerged (LoRA rank 128 above "
        "max_lora_rank=64): set backend.max_lora_rank=128, or backend.merge_adapter=true to "
        "merge it at load, or backend=hf"
    )
    for fix in ("backend.max_lora_rank=128", "backend.merge_adapter=true", "backend=hf"):
        preflight(compose([*overrides, fix]))


@pytest.mark.parametrize(
    "setting, problem",
    [
        ({"use_dora": True}, "DoRA"),
        ({"bias": "all"}, "trained biases"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save ['lm_head']"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights=pissa"),
    ],
)
def test_vllm_refuses_an_adapter_it_cannot_apply_unmerged(setting, problem, tmp_path):
    base, adapter = model_folder(tmp_path / "base"), adapter_folder(tmp_path / "policy", **setting)
    overrides = ["model=medsss_8b", f"model.source={base}", f"model.adapter={adapter}", "backend=vllm"]
    message = refused(overrides, tmp_path)
    assert message == (
        f"model.adapter: vLLM cannot serve this adapter unmerged ({problem}): set "
        "backend.merge_adapter=true to merge it at load, or backend=hf"
    )
    preflight(compose([*overrides, "backend.merge_adapter=true"]))


def test_a_max_lora_rank_vllm_does_not_offer_is_refused_naming_it(tmp_path):
    base, adapter = model_folder(tmp_path / "base"), adapter_folder(tmp_path / "policy")
    message = refused(
        [
            "model=medsss_8b",
            f"model.source={base}",
            f"model.adapter={adapter}",
            "backend=vllm",
            "backend.max_lora_rank=48",
        ],
        tmp_path,
    )
    assert (
        message
        == "backend.max_lora_rank: 48 is not a rank vLLM offers: one of 1, 8, 16, 32, 64, 128, 256, 320, 512"
    )


def test_backend_auto_checks_the_backend_it_will_build(tmp_path):
    from medsss.generation.auto import vllm_importable

    base, adapter = model_folder(tmp_path / "base"), adapter_folder(tmp_path / "policy", r=128)
    cfg = compose(["model=medsss_8b", f"model.source={base}", f"model.adapter={adapter}"])
    kind, _, prefix = serving_backend(cfg.backend)
    assert (kind, prefix) == (("vllm", "backend.vllm.") if vllm_importable() else ("hf", "backend.hf."))
    if kind == "vllm":
        with pytest.raises(
            ConfigError, match=r"set backend\.vllm\.max_lora_rank=128, or backend\.vllm\.merge_adapter"
        ):
            preflight(cfg)
    else:  # transformers merges any adapter at load
        preflight(cfg)


@pytest.mark.vllm
@pytest.mark.integration
def test_the_adapters_refused_for_vllm_are_the_ones_vllm_itself_rejects():
    from typing import get_args

    from vllm.config.lora import LoRAConfig, MaxLoRARanks
    from vllm.lora.peft_helper import PEFTHelper

    assert VLLM_LORA_RANKS == get_args(MaxLoRARanks)
    plain = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
    for change in (
        {},
        {"r": 64},
        {"r": 128},
        {"rank_pattern": {"q_proj": 128}},
        {"use_dora": True},
        {"bias": "lora_only"},
        {"lora_bias": True},
        {"modules_to_save": ["lm_head"]},
        {"modules_to_save": ["score"]},
        {"init_lora_weights": "pissa"},
        {"init_lora_weights": "gaussian"},
        {"alora_invocation_tokens": [1, 2]},
    ):
        config = {**plain, **change}
        try:
            PEFTHelper.from_dict(config).validate_legal(LoRAConfig(max_lora_rank=64))
            rejected = False
        except ValueError:
            rejected = True
        assert bool(vllm_adapter_problems(config, 64)) == rejected, change


# --- inputs: trees, data, benchmark files ----------------------------------------------------------


def test_training_without_trees_is_refused_naming_data_trees(tmp_path):
    message = refused(["stage=sft", "model=tiny"], tmp_path)
    assert message == "data.trees: required but not set (???): give it on the command line, data.trees=..."


def test_missing_trees_are_refused_naming_data_trees(tmp_path):
    message = refused(["stage=prm", "model=tiny", f"data.trees={tmp_path / 'synthesis'}"], tmp_path)
    assert message == (
        f"data.trees: {tmp_path / 'synthesis'} does not exist (a synthesis run directory or trees.jsonl)"
    )
    (tmp_path / "synthesis").mkdir()
    message = refused(["stage=dpo", "model=tiny", f"data.trees=[{tmp_path / 'synthesis'}]"], tmp_path)
    assert message.startswith(f"data.trees[0]: {tmp_path / 'synthesis'} holds no trees.jsonl")


def test_a_missing_data_file_is_refused_naming_data_path(tmp_path):
    message = refused(["model=tiny", "data=jsonl", f"data.path={tmp_path / 'questions.jsonl'}"], tmp_path)
    assert message == f"data.path: {tmp_path / 'questions.jsonl'}: data file not found"


def test_a_missing_checkpoint_is_refused_naming_stage_ckpt_path(training_trees, tmp_path):
    message = refused(
        [
            "stage=sft",
            "model=tiny",
            f"data.trees={training_trees}",
            f"stage.ckpt_path={tmp_path / 'last.ckpt'}",
        ],
        tmp_path,
    )
    assert (
        message == f"stage.ckpt_path: {tmp_path / 'last.ckpt'} does not exist (a checkpoint file, or latest)"
    )


def _benchmarks_without(tmp_path: Path, missing: str) -> Path:
    folder = tmp_path / "benchmarks"
    shutil.copytree(BUNDLED_BENCHMARKS, folder)
    (folder / missing).unlink()
    return folder


def test_a_missing_benchmark_file_is_refused_naming_its_suite_entry(tmp_path):
    folder = _benchmarks_without(tmp_path, "drugdose.json")
    message = refused([*EVALUATE, f"paths.data_dir={folder}"], tmp_path)
    assert message == (
        f"suite.benchmarks[6].path: benchmark drugdose: {folder / 'drugdose.json'} not found "
        "(fix the path, or mark the entry optional: true to skip it when absent)"
    )


def test_the_paper_suite_skips_only_its_four_optional_benchmarks(tmp_path):
    cfg = compose([*EVALUATE, "suite=paper11"])
    assert [b.name for b in cfg.suite.benchmarks if b.optional] == ["biomrc", "ddxplus", "seer", "healthfact"]
    preflight(cfg)  # the bundled files hold the other seven
    message = refused(
        [*EVALUATE, "suite=paper11", f"paths.data_dir={_benchmarks_without(tmp_path, 'MedQA.json')}"],
        tmp_path,
    )
    assert message.startswith("suite.benchmarks[0].path: benchmark medqa: ")


def test_a_data_dir_without_any_benchmark_file_is_refused_naming_paths_data_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    message = refused([*EVALUATE, "suite=paper11", f"paths.data_dir={tmp_path / 'empty'}"], tmp_path)
    assert message == (
        f"paths.data_dir: none of the suite's 11 benchmark files is in {tmp_path / 'empty'} "
        "(e.g. MedQA.json): point paths.data_dir (or $MEDSSS_BENCHMARKS) at the benchmark folder"
    )


# --- trainers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, settings",
    [
        ("gpu", "accelerator=gpu strategy=auto"),
        ("fsdp", "accelerator=gpu strategy=fsdp"),
        ("deepspeed", "accelerator=gpu strategy=deepspeed_stage_2"),
    ],
)
def test_a_gpu_trainer_without_a_cuda_device_is_refused_naming_trainer(
    option, settings, training_trees, tmp_path
):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    message = refused(
        ["stage=sft", "model=tiny", f"data.trees={training_trees}", f"trainer={option}"], tmp_path
    )
    assert message == (
        f"trainer: {settings} needs a CUDA GPU and torch.cuda.is_available() is false here: "
        "use trainer=cpu, or trainer=ddp trainer.accelerator=cpu"
    )


def test_deepspeed_without_its_package_is_refused_naming_trainer(training_trees):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    with pytest.raises(ConfigError) as error:
        preflight(
            compose(["stage=prm", "model=tiny", f"data.trees={training_trees}", "trainer=deepspeed"]),
            cuda_available=True,
        )
    assert str(error.value) == (
        "trainer: strategy=deepspeed_stage_2 needs the deepspeed package: "
        "pip install deepspeed, or trainer=fsdp"
    )


def test_the_cpu_trainers_pass_without_a_cuda_device(training_trees):
    for trainer in (["trainer=cpu"], ["trainer=ddp"], ["trainer=ddp", "trainer.accelerator=cpu"]):
        preflight(
            compose(["stage=sft", "model=tiny", f"data.trees={training_trees}", *trainer]),
            cuda_available=False,
        )


def test_the_gpu_trainers_pass_with_a_cuda_device(training_trees):
    for trainer in ("gpu", "fsdp"):
        preflight(
            compose(["stage=sft", "model=tiny", f"data.trees={training_trees}", f"trainer={trainer}"]),
            cuda_available=True,
        )


@pytest.mark.gpu
def test_the_gpu_trainer_passes_on_this_cuda_device(training_trees):
    preflight(compose(["stage=sft", "model=tiny", f"data.trees={training_trees}", "trainer=gpu"]))


# --- the configs that run pass ---------------------------------------------------------------------


def test_the_default_run_and_the_tiny_model_configs_pass():
    preflight(compose(["data.limit=6"]))  # make run
    preflight(compose(["model=tiny", "search=tiny", "backend=hf", "data.limit=1"]))
    preflight(compose(["+experiment=eval_bench", *EVALUATE]))


def test_the_training_stages_on_stored_trees_pass(training_trees):
    for stage in ("sft", "prm", "dpo"):
        preflight(compose([f"stage={stage}", "model=tiny", f"data.trees={training_trees}"]))


# --- the user-facing path: one line on stderr --------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    "overrides, last_line",
    [
        (
            ["stage=evaluate", "model=tiny", "backend=hf", "paths.data_dir={empty}"],
            "config error: paths.data_dir: none of the suite's 7 benchmark files is in {empty}",
        ),
        (
            ["+experiment=prm_soft", "model=tiny", "data.trees={empty}", "+stage.labels.rulle=hard"],
            "config error: unknown config key 'stage.labels.rulle' (not in LabelsSchema)",
        ),
    ],
)
def test_medsss_run_prints_one_line_naming_the_key_and_writes_no_stage_output(overrides, last_line, tmp_path):
    from medsss.runlock import LOCK_FILE

    empty, run_dir = tmp_path / "empty", tmp_path / "run"
    empty.mkdir()
    command = [
        sys.executable,
        "-m",
        "medsss.run",
        *(o.format(empty=empty) for o in overrides),
        f"hydra.run.dir={run_dir}",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(last_line.format(empty=empty)), done.stderr
    assert "Traceback" not in done.stderr
    # Hydra writes its own record of the composed config before the stage runs; nothing else is there
    assert {p.name for p in run_dir.iterdir()} <= {".hydra", "run.log"} and not (run_dir / LOCK_FILE).exists()
