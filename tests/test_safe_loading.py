"""Safe loading: a pickle planted where medsss reads weights or checkpoints is never executed."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
from conftest import compose

PAYLOAD_MARK = "medsss-planted-pickle-ran"


class _Planted:
    """Unpickling this runs os.system: the attack a weights_only / safetensors load must refuse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path, marker):
    import torch

    torch.save({"state_dict": {}, "payload": _Planted(marker)}, path)


@pytest.mark.integration
def test_a_checkpoint_with_a_planted_pickle_is_refused_on_resume(tmp_path):
    import json

    from helpers import build_tree

    from medsss.run import run_stage

    trees = tmp_path / "trees"
    trees.mkdir()
    tree = build_tree({
        "a": {"parent": "root", "visits": 1, "value": 0.5, "rollout_total": 2, "rollout_correct": 1},
        "The answer is A.": {"parent": "a", "kind": "finish", "visits": 1, "value": 1.0, "correct": True},
    })
    record = {"id": "p", "question": "Q?\nA. yes\nB. no", "answer": "A", **tree.to_dict()}
    (trees / "trees.jsonl").write_text(json.dumps(record) + "\n")
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    marker = tmp_path / PAYLOAD_MARK
    _plant(run_dir / "checkpoints" / "last.ckpt", marker)
    cfg = compose(["+experiment=sft_policy", f"data.trees={trees}", "model=tiny", "logger=none",
                   "trainer.enable_progress_bar=false", "stage.dtype=float32", "stage.ckpt_path=latest"])
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        run_stage(cfg, run_dir)
    assert not marker.exists()


@pytest.mark.integration
def test_a_model_folder_with_only_a_pickled_weights_file_is_not_executed(tmp_path, tiny_model):
    """A folder whose weights are only a pickle: transformers reads it with weights_only=True, which
    refuses the planted object, and the pickle never runs."""
    from medsss.generation.hf import HFBackend
    from medsss.generation.models import ModelSpec

    folder = tmp_path / "model"
    shutil.copytree(tiny_model.resolve(), folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / PAYLOAD_MARK
    _plant(folder / "pytorch_model.bin", marker)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        HFBackend(ModelSpec(id="planted", source=str(folder)), device="cpu")
    assert not marker.exists()
