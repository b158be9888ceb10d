"""Training on the tiny model: the PRM learns learnable step labels, SFT lowers the response loss."""

from __future__ import annotations

import random

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medsss.training.batching import LengthGroupedBatchSampler
from medsss.training.datamodule import ItemsDataModule
from medsss.training.metrics import binary_auroc
from medsss.training.modules import PolicySFTModule, PRMModule, warmup_cosine
from medsss.training.prm_inputs import collate_prm, prm_inputs
from medsss.training.prm_model import PRMScorer, ProcessRewardModel
from medsss.training.sft_inputs import IGNORE, collate_sft, sft_inputs

SUPPORTING = ["This finding supports the diagnosis.", "The vital signs confirm it.", "Labs are consistent with this."]
MISLEADING = ["This contradicts the history.", "The patient is a banana.", "Ignore the labs entirely."]


def trainer(**kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False, **kw)


def synthetic_chains(n: int, seed: int):
    """Chains whose step labels are learnable: supporting steps are 1, misleading ones 0."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        steps, labels = ["Let's break down this problem step by step."], []
        for _ in range(rng.randint(1, 4)):
            good = rng.random() < 0.5
            steps.append(rng.choice(SUPPORTING if good else MISLEADING))
            labels.append(1.0 if good else 0.0)
        rows.append((f"Case {seed}-{i}: a {rng.randint(20, 80)}-year-old with fever?", steps, labels))
    return rows


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model.resolve())


def test_prm_learns_step_labels_to_a_held_out_auroc_above_0_9(tiny_model, tokenizer):
    torch.manual_seed(0)
    train, held_out = synthetic_chains(200, seed=1), synthetic_chains(60, seed=2)
    items = [(prm_inputs(tokenizer, q, s, None), l) for q, s, l in train]
    val = [(prm_inputs(tokenizer, q, s, None), l) for q, s, l in held_out]
    data = ItemsDataModule(items, val, lambda b: collate_prm([i for i, _ in b], tokenizer.pad_token_id,
                                                             labels=[l for _, l in b]),
                           length=lambda x: len(x[0].input_ids), batch_size=16)
    model = ProcessRewardModel.from_causal_lm(tiny_model.resolve())
    scorer = PRMScorer(model, tokenizer, None)
    before = binary_auroc([s for q, st, _ in held_out for s in scorer.score(q, [st])[0]],
                          [int(x) for *_, l in held_out for x in l])
    fit = trainer(max_epochs=3)
    fit.fit(PRMModule(model, lr=3e-3, warmup_ratio=0.05), data)
    scores = [s for q, steps, _ in held_out for s in scorer.score(q, [steps])[0]]
    targets = [int(x) for *_, labels in held_out for x in labels]
    auroc = binary_auroc(scores, targets)
    assert auroc > 0.9, f"held-out step AUROC {auroc:.3f} (untrained: {before:.3f})"
    assert fit.callback_metrics["val/step_auroc"] > 0.9


def test_sft_lowers_the_response_loss(tiny_model, tokenizer):
    torch.manual_seed(0)
    chains = [(f"Case {i}: which drug reverses opioids?", ["Let's break down this problem step by step.",
               "Naloxone antagonises mu receptors.", "The answer is A."]) for i in range(24)]
    items = [sft_inputs(tokenizer, q, s, None) for q, s in chains]
    model = AutoModelForCausalLM.from_pretrained(tiny_model.resolve())
    module = PolicySFTModule(model, lr=3e-3, schedule="constant", warmup_ratio=0.0)
    batch = collate_sft(items[:8], tokenizer.pad_token_id)
    with torch.no_grad():
        before = module(batch).item()
    data = ItemsDataModule(items, items[:8], lambda b: collate_sft(b, tokenizer.pad_token_id),
                           length=lambda x: len(x.input_ids), batch_size=8)
    trainer(max_epochs=8).fit(module, data)
    module.eval()
    with torch.no_grad():
        after = module(batch).item()
    assert after < 0.5 * before, (before, after)


def test_sft_labels_cover_the_response_and_its_end_of_turn_only(tokenizer):
    item = sft_inputs(tokenizer, "Q?", ["Let's break down this problem step by step.", "The answer is A."], None)
    first = next(i for i, label in enumerate(item.labels) if label != IGNORE)
    assert all(label == IGNORE for label in item.labels[:first])
    assert item.labels[first:] == item.input_ids[first:]
    assert tokenizer.decode(item.input_ids[first:]).startswith("Step 0: Let's break down")
    assert item.input_ids[-1] == tokenizer.eos_token_id


def test_length_grouped_batches_cover_every_item_once_and_pad_less():
    lengths = [random.Random(k).randint(5, 500) for k in range(256)]
    grouped = LengthGroupedBatchSampler(lengths, batch_size=8, group=16, seed=3).batches()
    shuffled = LengthGroupedBatchSampler(lengths, batch_size=8, group=1, seed=3).batches()
    for batches in (grouped, shuffled):
        assert sorted(i for b in batches for i in b) == list(range(256))

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(grouped) < 0.25 * padding(shuffled)


def test_data_parallel_ranks_split_the_batches():
    lengths = list(range(40))
    ranks = [LengthGroupedBatchSampler(lengths, 4, seed=1, num_replicas=2, rank=r) for r in (0, 1)]
    seen = [i for sampler in ranks for batch in sampler for i in batch]
    assert sorted(seen) == list(range(40)) and all(len(s) == 5 for s in ranks)


def test_binary_auroc_counts_ties_half():
    assert binary_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert binary_auroc([0.5, 0.5], [0, 1]) == 0.5
    assert binary_auroc([0.2, 0.3], [1, 1]) is None


def test_warmup_then_cosine_schedule():
    assert [warmup_cosine(s, 100, 10, "cosine") for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert warmup_cosine(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, "cosine") == pytest.approx(0.0)
    assert warmup_cosine(50, 100, 10, "constant") == 1.0
