"""Training on the tiny model: the PRM learns learnable step labels, SFT lowers the response loss."""

from __future__ import annotations

import random
from functools import partial

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medsss.training.auroc import binary_auroc
from medsss.training.batching import LengthGroupedBatchSampler, budget_batches
from medsss.training.datamodule import ItemsDataModule
from medsss.training.lora import apply_lora
from medsss.training.modules import PolicySFTModule, PRMModule, causal_lm_parts, response_loss
from medsss.training.prm_inputs import collate_prm, prm_inputs
from medsss.training.prm_model import PRMScorer, ProcessRewardModel
from medsss.training.schedules import warmup_cosine, warmup_scheduler
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


@pytest.mark.integration
def test_prm_learns_step_labels_to_a_held_out_auroc_above_0_9(tiny_model, tokenizer):
    torch.manual_seed(0)
    train, held_out = synthetic_chains(200, seed=1), synthetic_chains(60, seed=2)
    items = [(prm_inputs(tokenizer, q, s, None), labels) for q, s, labels in train]
    val = [(prm_inputs(tokenizer, q, s, None), labels) for q, s, labels in held_out]
    data = ItemsDataModule(items, val, lambda b: collate_prm([i for i, _ in b], tokenizer.pad_token_id,
                                                             labels=[label for _, label in b]),
                           length=lambda x: len(x[0].input_ids), batch_size=16)
    model = ProcessRewardModel.from_causal_lm(tiny_model.resolve())
    scorer = PRMScorer(model, tokenizer, None)
    before = binary_auroc([s for q, st, _ in held_out for s in scorer.score(q, [st])[0]],
                          [int(x) for *_, labels in held_out for x in labels])
    fit = trainer(max_epochs=3)
    fit.fit(PRMModule(model, optimizer=partial(torch.optim.AdamW, lr=3e-3, weight_decay=0.0),
                      scheduler=partial(warmup_scheduler, warmup_ratio=0.05)), data)
    scores = [s for q, steps, _ in held_out for s in scorer.score(q, [steps])[0]]
    targets = [int(x) for *_, labels in held_out for x in labels]
    auroc = binary_auroc(scores, targets)
    assert auroc > 0.9, f"held-out step AUROC {auroc:.3f} (untrained: {before:.3f})"
    assert fit.callback_metrics["val/step_auroc"] > 0.9


@pytest.mark.integration
def test_sft_lowers_the_response_loss(tiny_model, tokenizer):
    torch.manual_seed(0)
    chains = [(f"Case {i}: which drug reverses opioids?", ["Let's break down this problem step by step.",
               "Naloxone antagonises mu receptors.", "The answer is A."]) for i in range(24)]
    items = [sft_inputs(tokenizer, q, s, None) for q, s in chains]
    model = AutoModelForCausalLM.from_pretrained(tiny_model.resolve())
    module = PolicySFTModule(model, optimizer=partial(torch.optim.AdamW, lr=3e-3, weight_decay=0.0),
                             scheduler=partial(warmup_scheduler, warmup_ratio=0.0, schedule="constant"))
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


def test_token_budget_cuts_batches_at_rows_times_longest():
    lengths = [10, 9, 5, 5, 5, 3, 20, 25]
    longest_first = [7, 6, 0, 1, 2, 3, 4, 5]
    # 25 > 20 rides alone; 20 fills the budget; 10 and 9 pad to 2 x 10; four rows of 5 make 20.
    assert budget_batches(longest_first, lengths, 20, None) == [[7], [6], [0, 1], [2, 3, 4, 5]]
    assert budget_batches(longest_first, lengths, 20, max_rows=3) == [[7], [6], [0, 1], [2, 3, 4], [5]]
    assert budget_batches(longest_first, lengths, None, max_rows=3) == [[7, 6, 0], [1, 2, 3], [4, 5]]
    # Unsorted order: a later, longer item widens the batch; 3 then 10 is 2 x 10 = 20, a third row 30.
    assert budget_batches([5, 0, 2, 1], lengths, 20, None) == [[5, 0], [2, 1]]
    with pytest.raises(ValueError, match="max_batch_tokens"):
        budget_batches([0], lengths, None, None)


def test_token_budget_sampler_covers_every_item_once_within_the_budget():
    lengths = [random.Random(k).randint(5, 500) for k in range(256)] + [900]
    grouped = LengthGroupedBatchSampler(lengths, group=8, seed=3, max_tokens=1000)
    shuffled = LengthGroupedBatchSampler(lengths, group=1, seed=3, max_tokens=1000)
    for sampler in (grouped, shuffled):
        batches = sampler.batches()
        assert sorted(i for b in batches for i in b) == list(range(257))
        assert all(len(b) * max(lengths[i] for i in b) <= 1000 for b in batches)
        assert len(sampler) == len(batches)

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    # Grouped lengths waste less of the budget on padding, so the same items need fewer batches.
    assert padding(grouped.batches()) < 0.5 * padding(shuffled.batches())
    assert len(grouped) < len(shuffled)


def test_token_budget_batches_reach_the_model_no_larger_than_the_budget(tokenizer):
    items = [sft_inputs(tokenizer, f"Case {i}: " + "fever " * (3 * i), ["Step text."], None)
             for i in range(12)]
    budget = 2 * max(len(x.input_ids) for x in items)
    data = ItemsDataModule(items, items[:5], lambda b: collate_sft(b, tokenizer.pad_token_id),
                           length=lambda x: len(x.input_ids), batch_size=None, max_tokens=budget)
    for loader in (data.train_dataloader(), data.val_dataloader()):
        shapes = [tuple(batch["input_ids"].shape) for batch in loader]
        assert all(rows * width <= budget for rows, width in shapes)
        assert sum(rows for rows, _ in shapes) in (12, 5)
        assert max(rows for rows, _ in shapes) >= 2


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


def test_warmup_scheduler_steps_the_multiplier_and_refuses_unknown_schedules():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_scheduler(optimizer, total_steps=100, warmup_ratio=0.1)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.1 * (k + 1) for k in range(10)])
    with pytest.raises(ValueError, match="cosine"):
        warmup_scheduler(optimizer, 100, schedule="linear")


def test_modules_build_the_optimizer_and_schedule_they_are_given():
    model = torch.nn.Linear(2, 1)
    module = PolicySFTModule(model, optimizer=partial(torch.optim.SGD, lr=0.5), scheduler=None)
    optimizer = module.configure_optimizers()  # no scheduler: the optimizer alone, no trainer needed
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["lr"] == 0.5
    assert sum(p.numel() for group in optimizer.param_groups for p in group["params"]) == 3
    # Built in code without factories, the modules keep the stages' defaults (conf/stage/*.yaml).
    for module_class, lr in ((PolicySFTModule, 2e-4), (PRMModule, 5e-5)):
        defaults = module_class(model)
        optimizer = defaults.optimizer_factory(model.parameters())
        assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["lr"] == lr
        assert optimizer.defaults["weight_decay"] == 0.0
        assert defaults.scheduler_factory.keywords == {"warmup_ratio": 0.03, "schedule": "cosine"}


@pytest.mark.parametrize("lora", [False, True])
def test_response_loss_is_the_models_own_loss_without_all_the_logits(tiny_model, tokenizer, lora):
    """The chunked loss over response positions equals ``model(labels=...).loss``, gradients too."""
    torch.manual_seed(0)
    chains = [["Let's think.", "Naloxone. " * i, "The answer is A."] for i in range(1, 4)]
    items = [sft_inputs(tokenizer, f"Case {i}: fever?", steps, None) for i, steps in enumerate(chains)]
    batch = collate_sft(items, tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.resolve())
    if lora:
        model = apply_lora(model, 4, 8, 0.0, "all-linear", "CAUSAL_LM")
    assert causal_lm_parts(model) is not None
    trainable = [p for p in model.parameters() if p.requires_grad]
    expected = model(**batch).loss
    expected_grads = torch.autograd.grad(expected, trainable)
    ours = response_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"], chunk_tokens=7)
    grads = torch.autograd.grad(ours, trainable)
    assert ours.item() == pytest.approx(expected.item(), abs=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
