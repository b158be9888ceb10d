"""Training that resumes exactly and validation metrics that are right under data parallelism.

A run killed mid-epoch and resumed from its newest checkpoint ends where an uninterrupted run ends:
same step, same optimizer state, same weights and loss (fp32, tiny model). The batch sampler keeps
its place in the epoch's order in the checkpoint, and every training batch's dropout is seeded from
the step it belongs to. The PRM's step AUROC and accuracy are gathered across ranks: a 2-process ddp
run reports the numbers of a 1-process run on the same odd-sized validation set.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, compose
from helpers import build_tree, mixed_tree
from lightning.fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import DataLoader

from medsss.run import run_stage
from medsss.training.auroc import binary_auroc
from medsss.training.batching import LengthGroupedBatchSampler
from medsss.training.datamodule import ItemsDataModule
from medsss.training.examples import split_by_problem
from medsss.training.modules import batch_seed
from medsss.training.step_metrics import StepClassification

LENGTHS = [random.Random(k).randint(5, 300) for k in range(40)]


def sampler(rank: int = 0, ranks: int = 1, **kw) -> LengthGroupedBatchSampler:
    return LengthGroupedBatchSampler(
        LENGTHS, batch_size=3, group=4, seed=7, num_replicas=ranks, rank=rank, **kw
    )


def epoch_batches(s: LengthGroupedBatchSampler, epoch: int) -> list[list[int]]:
    s.set_epoch(epoch)
    return list(s)


# -- the resumable sampler ----------------------------------------------------------------------


@pytest.mark.parametrize("trained", [0, 1, 5, 13])
def test_a_resumed_sampler_continues_with_the_batches_it_had_not_served(trained):
    whole = epoch_batches(sampler(), 1)
    assert len(whole) == 14  # 40 items in batches of 3
    state = sampler().state_at(epoch=1, batches=trained)
    assert state == {"seed": 7, "items": 40, "epoch": 1, "start": trained}
    resumed = sampler()
    resumed.load_state_dict(state)
    # len() stays the epoch's: Lightning adds the batches it already counted itself
    assert len(resumed) == 14 and list(resumed) == whole[trained:]
    assert epoch_batches(resumed, 1) == whole[trained:]  # Lightning's set_epoch(1) keeps the place
    assert epoch_batches(resumed, 2) == epoch_batches(sampler(), 2)  # the next epoch starts at its top


def test_a_used_up_epoch_resumes_at_the_top_of_the_next():
    state = sampler().state_at(epoch=0, batches=14)
    assert (state["epoch"], state["start"]) == (1, 0)
    assert sampler().state_at(epoch=0, batches=9, epoch_done=True)["epoch"] == 1  # Lightning ended it


def test_each_rank_resumes_with_its_own_share_of_the_rest_of_the_order():
    ranks = [sampler(rank=r, ranks=2) for r in (0, 1)]
    whole = [epoch_batches(s, 0) for s in ranks]
    assert len(whole[0]) == len(whole[1]) == 7
    state = ranks[0].state_at(epoch=0, batches=3)  # 3 batches each: 6 of the order
    assert state["start"] == 6
    for r in (0, 1):
        resumed = sampler(rank=r, ranks=2)
        resumed.load_state_dict(state)
        assert list(resumed) == whole[r][3:]


def test_lightning_reaches_the_batch_sampler_to_set_the_epoch():
    # Lightning's own call at every epoch start: without it every epoch had epoch 0's order.
    s = sampler()
    loader = DataLoader(list(range(40)), batch_sampler=s)
    _set_sampler_epoch(loader, 3)
    assert s.epoch == 3 and list(loader.batch_sampler) != epoch_batches(sampler(), 0)


def test_a_checkpoint_of_other_data_is_refused_by_name():
    state = sampler().state_at(epoch=0, batches=2)
    other = LengthGroupedBatchSampler(LENGTHS[:-1], batch_size=3, seed=7)
    with pytest.raises(ValueError, match=r"40 training items shuffled with seed 7, this run has 39 items"):
        other.load_state_dict(state)


def test_validation_items_are_split_across_ranks_without_padding_or_repeats():
    items = list(range(5))
    data = ItemsDataModule(items, items, collate=lambda batch: batch, length=lambda x: 1, batch_size=2)
    served = []
    for rank in (0, 1):
        data.trainer = SimpleNamespace(world_size=2, global_rank=rank)  # what the data module reads
        served.append(sorted(i for batch in data.val_dataloader() for i in batch))
    assert served == [[0, 2, 4], [1, 3]]


def test_batch_seeds_depend_on_the_seed_step_batch_and_rank_only():
    assert batch_seed(0, 5, 2, 0) == batch_seed(0, 5, 2, 0)
    seeds = {batch_seed(s, step, b, r) for s in (0, 1) for step in (0, 5) for b in (0, 2) for r in (0, 1)}
    assert len(seeds) == 16 and all(0 <= x < 2**63 for x in seeds)


# -- step metrics -------------------------------------------------------------------------------


def test_step_metrics_are_the_exact_auroc_and_the_accuracy_above_one_half():
    metrics = StepClassification()
    scores, targets = [0.1, 0.4, 0.35, 0.8, 0.6, 0.6], [0, 0, 1, 1, 0, 1]
    metrics.update(torch.tensor(scores[:3]), torch.tensor(targets[:3]))
    metrics.update(torch.tensor(scores[3:]), torch.tensor(targets[3:]))
    auroc, accuracy = metrics.compute()
    # positive over negative in 6 of the 9 pairs, and the tie (0.6, 0.6) counts half
    assert auroc == pytest.approx(binary_auroc(scores, targets)) == pytest.approx(6.5 / 9)
    assert accuracy == pytest.approx(4 / 6)  # 0.1, 0.4 right; 0.35 wrong; 0.8 right; 0.6 wrong, right
    metrics.reset()
    metrics.update(torch.tensor([0.2, 0.7]), torch.tensor([1, 1]))
    assert metrics.compute() == (None, 0.5)  # one class: no AUROC
    metrics.reset()
    assert metrics.compute() == (None, None)


# -- a run killed mid-epoch and resumed ends where an uninterrupted run ends ------------------------

RESUME = [
    "model=tiny",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "stage.batch_size=2",
    "stage.dtype=float32",
    "stage.merge=false",
    "stage.checkpoint_every=1",
    "trainer.max_epochs=2",
    "stage.ckpt_path=latest",
    "threads=1",
]
# Training batches per epoch of tests/helpers.py's 8 trees (one problem held out) in batches of 2:
# 7 correct chains for sft, 14 chains for prm.
STEPS_PER_EPOCH = {"sft_policy": 4, "prm_soft": 7}


def _one_thread(run):
    """``run()`` with torch on one thread, as ``threads=1`` has the killed subprocess run (the
    reductions, and so the last bits of a loss, depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run()
    finally:
        torch.set_num_threads(threads)


def _checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((x.double() - b[k].double()).abs().max().item() for k, x in a.items())


@pytest.mark.integration
@pytest.mark.parametrize("experiment", sorted(STEPS_PER_EPOCH))
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(training_trees, tmp_path, experiment):
    overrides = [f"+experiment={experiment}", f"data.trees={training_trees}", *RESUME]
    per_epoch = STEPS_PER_EPOCH[experiment]
    through = _one_thread(lambda: run_stage(compose(overrides), tmp_path / "through"))
    assert through["global_steps"] == 2 * per_epoch

    # Killed after a step inside the first epoch (never its last), before that step's checkpoint.
    kill = random.Random(experiment).randint(2, per_epoch - 1)
    run_dir = tmp_path / "killed"
    env = {**os.environ, "MEDSSS_KILL_AT": f"{run_dir.name}@{kill}"}
    command = [sys.executable, "-m", "medsss.run", *overrides, f"hydra.run.dir={run_dir}"]
    killed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = _one_thread(lambda: run_stage(compose(overrides), run_dir))  # the same command again

    assert (resumed["start_step"], resumed["global_steps"]) == (kill - 1, through["global_steps"])
    assert abs(resumed["train_loss"] - through["train_loss"]) <= 1e-6
    ends = _checkpoint(tmp_path / "through"), _checkpoint(run_dir)
    assert ends[0]["global_step"] == ends[1]["global_step"] == 2 * per_epoch
    assert ends[0]["ItemsDataModule"] == ends[1]["ItemsDataModule"]
    assert ends[0]["lr_schedulers"] == ends[1]["lr_schedulers"]
    assert _largest_difference(ends[0]["state_dict"], ends[1]["state_dict"]) <= 1e-6  # the trained weights
    adam = [end["optimizer_states"][0]["state"] for end in ends]
    assert adam[0].keys() == adam[1].keys()
    for key in ("exp_avg", "exp_avg_sq"):
        moments = [{str(p): state[key] for p, state in a.items()} for a in adam]
        assert _largest_difference(*moments) <= 1e-6, key


# -- step AUROC and accuracy: 2-process ddp reports the 1-process numbers --------------------------


def _three_chain_tree(k: int):
    """Problem ``k``'s tree with a second wrong chain: three chains instead of two."""
    return build_tree(
        {
            "root": {"visits": 4, "value": 0.4},
            f"idea {k}": {
                "parent": "root",
                "visits": 2,
                "value": 0.5,
                "rollout_total": 4,
                "rollout_correct": 2,
            },
            f"other {k}": {
                "parent": "root",
                "visits": 2,
                "value": 0.25,
                "rollout_total": 4,
                "rollout_correct": 1,
            },
            f"guess {k}": {
                "parent": "root",
                "visits": 1,
                "value": 0.2,
                "rollout_total": 4,
                "rollout_correct": 0,
            },
            "So the answer is A. The answer is A.": {
                "parent": f"idea {k}",
                "kind": "finish",
                "visits": 1,
                "value": 1.0,
                "correct": True,
            },
            "So the answer is B. The answer is B.": {
                "parent": f"other {k}",
                "kind": "finish",
                "visits": 1,
                "value": 0.0,
                "correct": False,
            },
            "Surely B. The answer is B.": {
                "parent": f"guess {k}",
                "kind": "finish",
                "visits": 1,
                "value": 0.0,
                "correct": False,
            },
        }
    )


def _odd_validation_trees(run_dir: Path, problems: int, fraction: float) -> Path:
    """Trees whose held-out problems (at ``fraction``) have an odd number of chains in all: the
    first of them three, every other problem two."""
    ids = [f"p{k}" for k in range(problems)]
    _, held = split_by_problem([{"id": i} for i in ids], fraction)
    odd_one = held[0]["id"]
    run_dir.mkdir(parents=True)
    with open(run_dir / "trees.jsonl", "w", encoding="utf-8") as handle:
        for k, pid in enumerate(ids):
            tree = _three_chain_tree(k) if pid == odd_one else mixed_tree(k)
            record = {"id": pid, "question": f"Case {k}?\nA. yes\nB. no", "answer": "A", **tree.to_dict()}
            handle.write(json.dumps(record) + "\n")
    return run_dir


@pytest.mark.integration
def test_two_process_ddp_reports_the_one_process_validation_metrics(tmp_path):
    trees = _odd_validation_trees(tmp_path / "synthesis", problems=8, fraction=0.3)
    # lr 0: both runs validate the same weights. Batches of one chain: no padding, so each chain's
    # scores are computed the same way in both runs.
    common = [
        "+experiment=prm_soft",
        f"data.trees={trees}",
        "model=tiny",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "stage.dtype=float32",
        "stage.batch_size=1",
        "stage.val_fraction=0.3",
        "stage.optim.optimizer.lr=0.0",
        "stage.optim.scheduler=null",
        "trainer.limit_train_batches=1",
        "stage.merge=false",
        "threads=1",
    ]
    metrics = []
    for name, extra in (
        ("one", []),
        ("ddp", ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]),
    ):
        command = [sys.executable, "-m", "medsss.run", *common, *extra, f"hydra.run.dir={tmp_path / name}"]
        done = subprocess.run(
            command,
            cwd=ROOT,
            env={**os.environ, "WANDB_MODE": "offline"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        metrics.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    one, ddp = metrics
    assert one["val_chains"] == ddp["val_chains"] and one["val_chains"] % 2 == 1  # rank 0 has one more
    assert 0 < one["val_step_auroc"] < 1
    assert abs(ddp["val_step_auroc"] - one["val_step_auroc"]) <= 1e-6
    assert abs(ddp["val_step_accuracy"] - one["val_step_accuracy"]) <= 1e-6
    # The epoch mean too: weighted by chains across ranks (Lightning's sync_dist mean counted the
    # 3 + 2 chains of the two ranks as 4).
    assert abs(ddp["val_loss"] - one["val_loss"]) <= 1e-6
