"""Every config file composes, and every object it describes instantiates."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import pytest
from conftest import CONF, compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

from medsss.data.loaders import DataSpec
from medsss.generation.models import ModelSpec
from medsss.search.mcts import SearchConfig
from medsss.stages.common import instantiate_callbacks, instantiate_loggers

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# The groups each stage composes (its conf/stage/NAME.yaml defaults list), besides the root's.
STAGE_GROUPS = {
    "synthesize": {"model", "backend", "data", "search"},
    "sft": {"model", "data", "trainer"},
    "prm": {"model", "data", "trainer"},
    "dpo": {"model", "data", "trainer"},
    "evaluate": {"model", "backend", "decode", "suite"},
    "view": set(),  # reads only the stores it is given
    "merge": set(),
    "curriculum": {"model", "backend", "data", "search"},
    "evolve": set(),  # each step composes its own config
    "summarize": set(),  # reads only the sweep directory it is given
}
ROOT_KEYS = {"stage", "logger", "paths", "seed", "threads", "prompt", "benchmarks_dir", "retry", "allow_download"}
ALL_GROUPS = set().union(*STAGE_GROUPS.values())


def instantiate_all(cfg) -> None:
    """Instantiate every object the config describes (only the groups its stage composes)."""
    assert set(cfg) == ROOT_KEYS | STAGE_GROUPS[cfg.stage.name]
    if "search" in cfg:
        assert isinstance(instantiate(cfg.search), SearchConfig)
    if "model" in cfg:
        assert isinstance(instantiate(cfg.model), ModelSpec)
    from lightning.pytorch.loggers import Logger

    loggers = instantiate_loggers(cfg.logger, Path(tempfile.gettempdir()))
    assert all(isinstance(logger, Logger) for logger in loggers)
    if "backend" in cfg:
        assert callable(instantiate(cfg.backend))  # partial: the model is passed at run time
    if "data" in cfg and "_target_" in cfg.data:
        assert isinstance(instantiate(cfg.data), DataSpec)
    elif "data" in cfg:  # the training stages read stored trees, named on the command line
        assert OmegaConf.is_missing(cfg.data, "trees")


def test_every_experiment_file_has_a_row_in_the_configuration_docs_and_every_row_a_file():
    # The experiment tests below run once per file found: an empty glob (wrong folder) would
    # pass them all. The documented table is the independent list they are checked against.
    import re

    docs = (CONF.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = docs.split("\n## experiment\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.MULTILINE))
    assert documented, "docs/configuration.md lost its experiment table"
    assert sorted(set(EXPERIMENTS) - documented) == [], "experiments missing from docs/configuration.md"
    assert sorted(documented - set(EXPERIMENTS)) == [], "documented experiments with no conf/experiment file"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_instantiates(name):
    cfg = compose([f"+experiment={name}"])
    assert cfg.stage.name
    instantiate_all(cfg)


def test_mcts_medqa_is_synthesis_at_paper_settings():
    cfg = compose(["+experiment=mcts_medqa"])
    search = instantiate(cfg.search)
    assert cfg.stage.name == "synthesize" and cfg.data.format == "medqa"
    assert (search.width, search.simulations, search.min_rollouts, search.correct_nodes, search.max_nodes) == (
        3, 20, 5, 4, 60)
    assert (search.exploration, search.unvisited_ucb, search.bear_ratio, search.low_gate) == (2.0, 5.0, 0.9, 0.5)


# A stage that composes the group (the root's groups compose under the default stage).
GROUP_STAGE = {"search": "synthesize", "model": "synthesize", "backend": "synthesize", "data": "synthesize",
               "logger": "synthesize", "stage": "synthesize", "paths": "synthesize", "debug": "synthesize",
               "decode": "evaluate", "suite": "evaluate"}


@pytest.mark.parametrize("group", sorted(GROUP_STAGE))
def test_every_option_of_every_group_composes(group):
    for option in options(group):
        if group == "logger" and option == "wandb" and importlib.util.find_spec("wandb") is None:
            continue  # the optional wandb extra (medsss[wandb]); a GPU image may lack it
        overrides = [f"{group}={option}"]
        if group != "stage":
            overrides.insert(0, f"stage={GROUP_STAGE[group]}")
        if group == "data" and option in ("medmcqa", "pubmedqa", "jsonl"):
            overrides.append("data.path=/some/file")
        cfg = compose(overrides)
        instantiate_all(cfg)


# The trainer recipes compose and build their Lightning Trainer in tests/test_trainer_recipes.py.


def test_defaults_are_the_embedded_model_on_the_bundled_questions():
    cfg = compose([])
    assert cfg.stage.name == "synthesize"
    assert cfg.model.source == "embedded:smollm2-135m-instruct"
    assert cfg.data.format == "medqa" and cfg.data.path is None
    assert cfg.model.trust_remote_code is False


def test_logger_is_a_list_of_lightning_loggers_and_none_by_default(tmp_path):
    pytest.importorskip("wandb", reason="logger=wandb needs the optional wandb extra (medsss[wandb])")
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    assert instantiate_loggers(compose([]).logger, tmp_path) == []
    both = instantiate_loggers(compose(["logger=[csv,wandb]"]).logger, tmp_path)
    assert [type(logger) for logger in both] == [CSVLogger, WandbLogger]
    assert Path(both[0].log_dir) == tmp_path / "logs" / "version_0"


@pytest.mark.parametrize("stage, lr", [("sft", 2e-4), ("prm", 5e-5)])
def test_optim_instantiates_adamw_at_the_stage_learning_rate_with_warmup_cosine(stage, lr):
    import torch

    from medsss.training.schedules import warmup_scheduler

    optim = compose([f"stage={stage}"]).stage.optim
    optimizer = instantiate(optim.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["lr"] == lr and optimizer.defaults["weight_decay"] == 0.0
    scheduler = instantiate(optim.scheduler)
    assert scheduler.func is warmup_scheduler
    assert scheduler.keywords == {"warmup_ratio": 0.03, "schedule": "cosine"}
    lambda_lr = scheduler(optimizer, 100)  # 3 warm-up steps of 100, then cosine
    assert [round(f(0), 4) for f in lambda_lr.lr_lambdas] == [round(1 / 3, 4)]


def test_every_optim_option_instantiates():
    import torch

    for option in options("optim"):
        optim = compose(["stage=sft", f"optim@stage.optim={option}"]).stage.optim
        optimizer = instantiate(optim.optimizer)([torch.nn.Parameter(torch.zeros(2))])
        assert isinstance(optimizer, torch.optim.Optimizer) and optimizer.defaults["lr"] == 2e-4
        assert optim.scheduler is None or callable(instantiate(optim.scheduler))


@pytest.mark.parametrize("name, lr", [("sft_llama31_8b", 2e-4), ("prm_llama31_8b", 5e-5), ("prm_soft", 5e-5),
                                      ("dpo_llama31_8b", 5e-7), ("dpo_policy", 5e-6)])
def test_experiments_keep_their_learning_rates(name, lr):
    assert compose([f"+experiment={name}"]).stage.optim.optimizer.lr == lr


def test_callbacks_default_to_checkpoints_in_the_run_dir_every_checkpoint_every_steps(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    [checkpoint] = instantiate_callbacks(compose(["stage=prm", "stage.checkpoint_every=7"]).stage.callbacks,
                                         tmp_path)
    assert isinstance(checkpoint, ModelCheckpoint)
    assert Path(checkpoint.dirpath) == tmp_path / "checkpoints"
    assert (checkpoint._every_n_train_steps, checkpoint.save_top_k, checkpoint.save_last) == (7, 1, True)
    assert instantiate_callbacks(compose(["stage=sft", "callbacks@stage.callbacks=none"]).stage.callbacks,
                                 tmp_path) == []


def test_every_callback_option_instantiates(tmp_path):
    from lightning.pytorch.callbacks import (
        EarlyStopping,
        LearningRateMonitor,
        ModelCheckpoint,
        RichProgressBar,
    )

    chosen = ",".join(options("callbacks"))
    cfg = compose(["stage=sft", f"callbacks@stage.callbacks=[{chosen}]"])
    callbacks = instantiate_callbacks(cfg.stage.callbacks, tmp_path)
    assert sorted(type(c).__name__ for c in callbacks) == sorted(
        c.__name__ for c in (EarlyStopping, LearningRateMonitor, ModelCheckpoint, RichProgressBar))
    stopping = next(c for c in callbacks if isinstance(c, EarlyStopping))
    assert (stopping.monitor, stopping.mode, stopping.patience) == ("val/loss", "min", 3)


def test_the_synthesis_and_evaluation_stages_carry_no_training_groups():
    for stage in ("synthesize", "evaluate"):
        cfg = compose([f"stage={stage}"])
        assert "optim" not in cfg.stage and "callbacks" not in cfg.stage
        OmegaConf.to_container(cfg, resolve=True)  # what every stage logs as hyperparameters


# --- per-stage configs -------------------------------------------------------------------------


@pytest.mark.parametrize("stage", sorted(STAGE_GROUPS))
def test_each_stage_composes_only_the_groups_it_reads(stage):
    cfg = compose([f"stage={stage}"])
    assert set(cfg) == ROOT_KEYS | STAGE_GROUPS[stage]
    instantiate_all(cfg)


def test_a_prm_run_carries_no_generation_groups_and_synthesis_no_training_groups():
    prm = compose(["+experiment=prm_soft", "data.trees=unused"])
    assert not {"backend", "search", "decode", "suite"} & set(prm)
    assert "optim" in prm.stage and "trainer" in prm
    synthesize = compose([])
    assert "trainer" not in synthesize and "optim" not in synthesize.stage and "callbacks" not in synthesize.stage
    assert not {"decode", "suite"} & set(synthesize)


def test_the_default_run_is_unchanged_but_for_the_groups_it_does_not_read():
    cfg = compose([])
    assert set(cfg) == ROOT_KEYS | {"model", "backend", "data", "search"}
    assert (cfg.model.source, cfg.backend._target_, cfg.data.name, cfg.search.width) == (
        "embedded:smollm2-135m-instruct", "medsss.generation.auto.auto_backend", "medqa", 2)
    assert list(cfg.logger) == [] and cfg.seed == 0 and cfg.threads is None


def test_the_training_stages_read_stored_trees_by_default():
    for stage in ("sft", "prm", "dpo"):
        cfg = compose([f"stage={stage}"])
        assert cfg.data.name == "trees" and OmegaConf.is_missing(cfg.data, "trees")
        assert cfg.trainer.accelerator == "cpu"


@pytest.mark.parametrize("stage, override, key, value", [
    ("synthesize", "search=mcts", "search.simulations", 20),
    ("synthesize", "backend=hf", "backend._target_", "medsss.generation.hf.HFBackend"),
    ("synthesize", "model=tiny", "model.source", "tiny"),
    ("synthesize", "data.limit=6", "data.limit", 6),
    ("sft", "trainer=ddp", "trainer.strategy", "ddp"),
    ("prm", "model=tiny", "model.source", "tiny"),
    ("prm", "trainer=gpu", "trainer.accelerator", "gpu"),
    ("evaluate", "decode=sc", "decode.selection", "sc"),
    ("evaluate", "suite=paper11", "suite.benchmarks.10.name", "healthfact"),
    ("evaluate", "backend=hf", "backend._target_", "medsss.generation.hf.HFBackend"),
])
def test_overrides_of_the_groups_a_stage_reads(stage, override, key, value):
    assert OmegaConf.select(compose([f"stage={stage}", override]), key) == value


@pytest.mark.parametrize("stage, override", [
    ("prm", "search=mcts"), ("sft", "backend=hf"), ("prm", "decode=sc"), ("sft", "suite=paper11"),
    ("synthesize", "trainer=ddp"), ("synthesize", "decode=sc"), ("evaluate", "data=medqa"),
    ("evaluate", "search=cpu"), ("evaluate", "trainer=cpu"),
])
def test_overriding_a_group_the_stage_does_not_read_is_a_hydra_error(stage, override):
    from hydra.errors import ConfigCompositionException

    group = override.split("=")[0]
    with pytest.raises(ConfigCompositionException, match=f"Could not override '{group}'. No match in the defaults"):
        compose([f"stage={stage}", override])


def test_a_key_of_a_group_the_stage_does_not_read_is_an_error():
    with pytest.raises(Exception, match="data"):
        compose(["stage=evaluate", "data.limit=2"])


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_overrides_only_groups_of_its_stage(name):
    cfg = compose([f"+experiment={name}"])
    assert set(cfg) == ROOT_KEYS | STAGE_GROUPS[cfg.stage.name]


# --- schemas -------------------------------------------------------------------------------------


def _schema_name(node) -> str | None:
    kind = OmegaConf.get_type(node)
    return kind.__name__ if kind not in (None, dict) else None


@pytest.mark.parametrize("stage", sorted(STAGE_GROUPS))
def test_every_group_of_every_stage_is_typed_by_a_schema(stage):
    cfg = compose([f"stage={stage}", "logger=[csv,wandb]"])
    for key in STAGE_GROUPS[stage] | {"stage", "paths", "prompt"}:
        assert _schema_name(cfg[key]), key
    assert {_schema_name(entry) for entry in cfg.logger.values()} == {"CSVLoggerSchema", "WandbLoggerSchema"}
    if stage in ("sft", "prm", "dpo"):
        assert _schema_name(cfg.stage.optim) == "AdamWOptimSchema"
        assert [_schema_name(entry) for entry in cfg.stage.callbacks.values()] == ["ModelCheckpointSchema"]


def test_every_yaml_option_names_its_schema():
    # experiment/debug/local overlays (# @package _global_) set keys of typed nodes instead.
    untyped = {"experiment", "debug", "local"}
    for path in sorted(CONF.glob("*/*.yaml")):
        if path.parent.name in untyped or path.stem in ("none", "default") and path.parent.name in (
                "logger", "callbacks"):
            continue
        text = path.read_text()
        inherits = any(f"\n  - {base}\n" in text for base in ("mcts", "cpu", "gpu"))
        assert "/schema/" in text or inherits, path


def test_a_misspelt_key_on_the_command_line_fails_naming_it():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="rulle"):
        compose(["+experiment=prm_soft", "stage.labels.rulle=hard"])


def test_a_misspelt_key_added_with_plus_fails_naming_it():
    from medsss.config_schema import ConfigKeyAddedError

    with pytest.raises(ConfigKeyAddedError, match=r"'stage\.labels\.rulle' \(not in LabelsSchema\)"):
        compose(["+experiment=prm_soft", "+stage.labels.rulle=hard"])
    with pytest.raises(ConfigKeyAddedError, match=r"'decode\.agregation'"):
        compose(["stage=evaluate", "+decode.agregation=mean"])


def test_constructor_nodes_take_extra_keyword_arguments_with_plus():
    # A node with _target_ is a call: +key adds an argument its constructor checks.
    cfg = compose(["backend=hf", "+backend.prefix_cache_size=64"])
    assert cfg.backend.prefix_cache_size == 64
    assert compose(["stage=sft", "+trainer.enable_autolog_hparams=false"]).trainer.enable_autolog_hparams is False


def _conf_copy(tmp_path: Path) -> Path:
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf, ignore=shutil.ignore_patterns("local"))
    return conf


def test_a_misspelt_key_in_an_overlay_fails_at_composition_naming_it(tmp_path):
    from hydra.errors import ConfigCompositionException

    conf = _conf_copy(tmp_path)
    (conf / "experiment" / "typo.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /stage: prm\nstage:\n  labels:\n    rulle: hard\n")
    with pytest.raises(ConfigCompositionException, match="rulle") as error:
        compose(["+experiment=typo"], config_dir=conf)
    assert "LabelsSchema" in str(error.value.__cause__ or error.value)


@pytest.mark.parametrize("override, key", [
    ("search.width=abc", "width"), ("stage=prm stage.labels.threshold=high", "threshold"),
    ("stage=sft trainer.max_steps=many", "max_steps"), ("data.limit=two", "limit"),
    ("stage=evaluate stage.n=1.5", "n"), ("model.trust_remote_code=maybe", "trust_remote_code"),
])
def test_a_value_of_the_wrong_type_fails_at_composition(override, key):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=key):
        compose(override.split())


def test_schemas_mirror_the_dataclasses_and_constructors_they_describe():
    import dataclasses
    import inspect

    from lightning import Trainer

    from medsss import config_schema as s
    from medsss.generation.hf import HFBackend
    from medsss.generation.vllm_engine import VLLMBackend

    def keys(schema) -> set[str]:
        return {f.name for f in dataclasses.fields(schema)} - {"_target_", "_partial_", "_recursive_"}

    def params(call) -> set[str]:
        return set(inspect.signature(call).parameters) - {"self", "model"}

    assert keys(s.SearchSchema) == {f.name for f in dataclasses.fields(SearchConfig)}
    for schema in (s.ModelSchema, s.AdapterModelSchema, s.TinyModelSchema):
        assert keys(schema) <= {f.name for f in dataclasses.fields(ModelSpec)}
    for schema in (s.DataSchema, s.MedMCQADataSchema, s.PubMedQADataSchema):
        assert keys(schema) <= {f.name for f in dataclasses.fields(DataSpec)}
    assert keys(s.HFBackendSchema) <= params(HFBackend.__init__)
    assert keys(s.VLLMBackendSchema) <= params(VLLMBackend.__init__)
    assert keys(s.TrainerSchema) <= params(Trainer.__init__)
    # the Trainer arguments the yaml files do not set are at Lightning's own defaults
    defaults = {name: p.default for name, p in inspect.signature(Trainer.__init__).parameters.items()}
    for f in dataclasses.fields(s.TrainerSchema):
        if f.name != "_target_" and f.name not in ("accelerator", "devices", "strategy"):
            assert f.default == defaults[f.name], f.name


def test_every_schema_is_registered_and_composes_alone():
    from hydra.core.config_store import ConfigStore

    from medsss.config_schema import SCHEMAS, register_configs

    register_configs()
    repo = ConfigStore.instance().repo["schema"]
    for group, name, _ in SCHEMAS:
        assert f"{name}.yaml" in repo[group]


def test_the_tests_compose_what_medsss_composes():
    # conftest.compose registers the schemas once per session and reuses compositions; the
    # configs it hands out are the ones medsss.config_schema.compose makes.
    from medsss.config_schema import compose as compose_config

    overrides = ["+experiment=prm_soft", "data.trees=unused"]
    ours, theirs = compose(overrides), compose_config(overrides, config_dir=str(CONF))
    assert OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(theirs)
    assert _schema_name(ours.stage) == _schema_name(theirs.stage) == "PRMStageSchema"


# --- paths, debug, local -------------------------------------------------------------------------


def test_benchmarks_dir_is_an_alias_of_paths_data_dir():
    default = compose(["stage=evaluate"])
    assert default.benchmarks_dir == default.paths.data_dir
    for override in ("paths.data_dir=/bench", "benchmarks_dir=/bench"):
        cfg = compose(["stage=evaluate", override])
        assert cfg.suite.benchmarks[0].path == "/bench/MedQA.json"
    assert compose(["data=medqa_bench", "paths.data_dir=/bench"]).data.path == "/bench/MedQA.json"


def test_run_directories_follow_paths():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from medsss.config_schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", ["stage=prm", "paths.root_dir=/runs"], return_hydra_config=True)
    assert cfg.hydra.run.dir.startswith("/runs/outputs/prm/")
    assert cfg.hydra.sweep.dir.startswith("/runs/multirun/prm/")


@pytest.mark.parametrize("stage, expected", [
    ("synthesize", {"data.limit": 2, "search.max_nodes": 4, "search.simulations": 2}),
    ("sft", {"trainer.max_steps": 2, "trainer.limit_val_batches": 2}),
    ("prm", {"trainer.max_steps": 2, "trainer.num_sanity_val_steps": 0}),
    ("evaluate", {"stage.limit": 2, "stage.n": 2}),
])
def test_debug_default_is_a_run_of_seconds_for_every_stage(stage, expected):
    normal = compose([f"stage={stage}"])
    cfg = compose([f"stage={stage}", "debug=default", "logger=csv"])  # command line wins over debug
    assert {key: OmegaConf.select(cfg, key) for key in expected} == expected
    assert set(cfg) == set(normal)  # the debug settings touch only keys the stage has
    assert list(compose([f"stage={stage}", "debug=default"]).logger) == []


def test_debug_default_settles_every_experiment():
    for name in EXPERIMENTS:
        cfg = compose([f"+experiment={name}", "debug=default"])
        assert set(cfg) == ROOT_KEYS | STAGE_GROUPS[cfg.stage.name]


def test_local_overrides_are_included_when_present(tmp_path):
    conf = _conf_copy(tmp_path)
    assert compose([], config_dir=conf).seed == 0  # no conf/local/default.yaml: nothing changes
    (conf / "local").mkdir()
    (conf / "local" / "default.yaml").write_text("# @package _global_\nseed: 5\npaths:\n  data_dir: /mine\n")
    cfg = compose(["stage=evaluate"], config_dir=conf)
    assert cfg.seed == 5 and cfg.suite.benchmarks[0].path == "/mine/MedQA.json"
