"""backend=auto (the default): vLLM where it is importable, else hf with a line saying why."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging

import pytest
from conftest import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

real_find_spec = importlib.util.find_spec


def pretend_vllm(monkeypatch, installed: bool) -> None:
    def find_spec(name, *args, **kwargs):
        if name == "vllm":
            return importlib.machinery.ModuleSpec("vllm", None) if installed else None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize("installed", [False, True])
def test_the_default_backend_picks_by_whether_vllm_is_importable(monkeypatch, installed):
    # A plain run (no backend= override) and an evaluation both get auto's choice, with the
    # chosen backend's own settings.
    from medsss.generation.hf import HFBackend
    from medsss.generation.vllm_engine import VLLMBackend

    pretend_vllm(monkeypatch, installed=installed)
    for stage in ([], ["stage=evaluate"]):  # synthesis is the default stage
        factory = instantiate(compose(stage).backend)
        assert factory.func is (VLLMBackend if installed else HFBackend), stage
        chosen = compose([*stage, f"backend={'vllm' if installed else 'hf'}"]).backend
        settings = OmegaConf.to_container(chosen, resolve=True)
        assert factory.keywords == {k: v for k, v in settings.items() if not k.startswith("_")}, stage


def test_auto_holds_the_settings_of_both_backends():
    auto = compose(["backend=auto"]).backend
    assert auto.hf == compose(["backend=hf"]).backend
    assert auto.vllm == compose(["backend=vllm"]).backend


def test_without_vllm_auto_is_hf_and_says_why(monkeypatch, caplog):
    from medsss.generation.hf import HFBackend

    pretend_vllm(monkeypatch, installed=False)
    with caplog.at_level(logging.INFO, logger="medsss.generation.auto"):
        factory = instantiate(compose(["backend=auto", "backend.hf.max_batch_size=8"]).backend)
    assert factory.func is HFBackend
    assert factory.keywords == {"device": "auto", "max_batch_size": 8, "seed": 0}
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("backend=auto: hf, because vllm is not importable")


def test_with_vllm_auto_is_vllm(monkeypatch, caplog):
    from medsss.generation.vllm_engine import VLLMBackend

    pretend_vllm(monkeypatch, installed=True)
    cfg = compose(["backend=auto", "seed=7", "backend.vllm.max_num_seqs=64"])
    with caplog.at_level(logging.INFO, logger="medsss.generation.auto"):
        factory = instantiate(cfg.backend)
    assert factory.func is VLLMBackend  # a partial: no engine starts until a model is passed
    expected = OmegaConf.to_container(compose(["backend=vllm"]).backend, resolve=False)
    expected = {k: v for k, v in expected.items() if not k.startswith("_")}
    assert factory.keywords == {**expected, "max_num_seqs": 64, "seed": 7}
    assert [r.getMessage() for r in caplog.records] == ["backend=auto: vllm (importable)"]


def test_top_level_backend_keys_are_not_accepted_under_auto():
    # Settings belong to the backend they configure: backend.hf.* or backend.vllm.*.
    with pytest.raises(Exception, match="max_batch_size"):
        compose(["backend=auto", "backend.max_batch_size=8"])
