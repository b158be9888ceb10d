"""Every config file composes, and every object it describes instantiates."""

from __future__ import annotations

import pytest
from conftest import CONF, compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

from medsss.data.loaders import DataSpec
from medsss.generation.models import ModelSpec
from medsss.search.mcts import SearchConfig
from medsss.tracking import Tracker

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def instantiate_all(cfg) -> None:
    assert isinstance(instantiate(cfg.search), SearchConfig)
    assert isinstance(instantiate(cfg.model), ModelSpec)
    assert isinstance(instantiate(cfg.logger), Tracker)
    assert callable(instantiate(cfg.backend))  # partial: the model is passed at run time
    if "_target_" in cfg.data:
        assert isinstance(instantiate(cfg.data), DataSpec)
    else:  # the training stages read stored trees, named on the command line
        assert OmegaConf.is_missing(cfg.data, "trees")


def test_there_are_experiments():
    assert "mcts_medqa" in EXPERIMENTS


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


@pytest.mark.parametrize("group", ["search", "model", "backend", "data", "logger", "stage"])
def test_every_option_of_every_group_composes(group):
    for option in options(group):
        overrides = [f"{group}={option}"]
        if group == "data" and option in ("medmcqa", "pubmedqa", "jsonl"):
            overrides.append("data.path=/some/file")
        cfg = compose(overrides)
        instantiate_all(cfg)


@pytest.mark.parametrize("option", options("trainer"))
def test_every_trainer_composes(option):
    cfg = compose([f"trainer={option}"])
    assert cfg.trainer._target_ == "lightning.Trainer" and cfg.trainer.use_distributed_sampler is False


def test_defaults_are_the_embedded_model_on_the_bundled_questions():
    cfg = compose([])
    assert cfg.stage.name == "synthesize"
    assert cfg.model.source == "embedded:smollm2-135m-instruct"
    assert cfg.data.format == "medqa" and cfg.data.path is None
    assert cfg.model.trust_remote_code is False
