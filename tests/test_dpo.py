"""DPO: the preference pairs of hand-built trees, their tokens, the loss against a hand computation,
the reference as the adapter-disabled policy, and the dpo stage end to end on the tiny model."""

from __future__ import annotations

import json
import math
from functools import partial

import pytest
import torch
from conftest import compose
from helpers import build_tree
from transformers import AutoModelForCausalLM, AutoTokenizer

from medsss.data.prompts import STEP_ZERO
from medsss.generation.base import GenerationRequest
from medsss.generation.hf import HFBackend
from medsss.generation.models import ModelSpec
from medsss.labels.dpo import dpo_counts, dpo_rows
from medsss.run import run_stage
from medsss.training.dpo import DPOModule, dpo_loss, dpo_metrics, sequence_logprobs
from medsss.training.dpo_inputs import collate_dpo, dpo_inputs
from medsss.training.examples import Batching, dpo_datamodule
from medsss.training.lora import apply_lora
from medsss.training.sft_inputs import IGNORE, sft_inputs

R, W = {"kind": "finish", "correct": True, "value": 1.0}, {"kind": "finish", "correct": False, "value": 0.0}


def pairs_tree():
    #                         root 0.5
    #        a 0.8                b 0.3                 c 0.6
    #   a1 0.9   a2 0.0      b1 0.1     b2 0.85           c1 0.0
    #   fa (R)            fb1 (W) fb2 (R)  fb3 (R) b2o 0.15   fc (W)
    # Depth 1: one parent (the root). Depth 2: a1/b1 differ by exactly 0.8; c1's parent has one
    # child; a1/a2 share a parent. Depth 3: fa's and fc's parents have one child each.
    return build_tree({
        "root": {"value": 0.5},
        "a": {"parent": "root", "value": 0.8},
        "b": {"parent": "root", "value": 0.3},
        "c": {"parent": "root", "value": 0.6},
        "a1": {"parent": "a", "value": 0.9},
        "a2": {"parent": "a", "value": 0.0},
        "b1": {"parent": "b", "value": 0.1},
        "b2": {"parent": "b", "value": 0.85},
        "c1": {"parent": "c", "value": 0.0},
        "fa. The answer is A.": {"parent": "a1", **R},
        "fb1. The answer is B.": {"parent": "b1", **W},
        "fb2. The answer is A.": {"parent": "b1", **R},
        "fb3. The answer is A.": {"parent": "b2", **R},
        "b2o": {"parent": "b2", "value": 0.15},
        "fc. The answer is C.": {"parent": "c1", **W},
    })


def stored(tree, pid="p1"):
    return {"id": pid, "question": f"Case {pid}?\nA. yes\nB. no\nC. maybe", "answer": "A", **tree.to_dict()}


def path(*steps):
    return [STEP_ZERO, *steps]


def summary(rows):
    return [(r["kind"], r["chosen"], r["rejected"], r["chosen_value"], r["rejected_value"], r["chosen_finished"],
             r["rejected_finished"]) for r in rows]


def test_level_and_finish_pairs_of_a_hand_built_tree():
    rows = dpo_rows([stored(pairs_tree())])
    assert summary(rows) == [
        # depth 2: b2 - a2 = 0.85 (the later node is chosen); a1 - b1 = 0.8 is not more than the margin
        ("level", path("b", "b2"), path("a", "a2"), 0.85, 0.0, False, False),
        # depth 3, node order: (fb1, fb3), then (fb2, b2o); fb1/fb2 and fb3/b2o share parents
        ("level", path("b", "b2", "fb3. The answer is A."), path("b", "b1", "fb1. The answer is B."),
         1.0, 0.0, True, True),
        ("level", path("b", "b1", "fb2. The answer is A."), path("b", "b2", "b2o"), 1.0, 0.15, True, False),
        # correct by min value: fa 0.8, fb3 0.3, fb2 0.1; wrong (both min 0) by the minimum before the
        # answer: fc 0.0, fb1 0.1. (fb3, fb1) is the level pair above and is not repeated.
        ("finish", path("a", "a1", "fa. The answer is A."), path("c", "c1", "fc. The answer is C."),
         0.8, 0.0, True, True),
    ]
    assert {(r["id"], r["question"][:7], r["answer"]) for r in rows} == {("p1", "Case p1", "A")}
    assert dpo_counts(rows) == {"problems": 1, "pairs": 4, "level_pairs": 3, "finish_pairs": 1}


def test_the_margin_is_configurable():
    level = [(r["chosen"], r["rejected"]) for r in dpo_rows([stored(pairs_tree())], margin=0.75)
             if r["kind"] == "level"]
    # a1 (0.9) vs b1 (0.1) differs by 0.8: more than 0.75, not more than the default 0.8
    assert level == [(path("a", "a1"), path("b", "b1")), (path("b", "b2"), path("a", "a2")),
                     *[(r["chosen"], r["rejected"]) for r in dpo_rows([stored(pairs_tree())])[1:3]]]


def test_finish_pairs_are_as_many_as_the_shorter_list():
    tree = build_tree({
        "root": {"value": 0.5},
        "x. The answer is A.": {"parent": "root", **R},
        "y. The answer is A.": {"parent": "root", **R},
        "z. The answer is B.": {"parent": "root", **W},
    })
    rows = dpo_rows([stored(tree)])
    assert summary(rows) == [("finish", path("x. The answer is A."), path("z. The answer is B."), 1.0, 0.0,
                              True, True)]


def test_pairs_of_identical_text_are_dropped():
    tree = build_tree({"root": {"value": 0.5}, "x": {"parent": "root", **R}, "y": {"parent": "root", **W}})
    tree.nodes[2].text = tree.nodes[1].text  # a wrong leaf with the very text of a correct one
    assert dpo_rows([stored(tree)]) == []


@pytest.mark.parametrize("record, margin, message", [
    ({"id": "q", "question": "Q?", "answer": "A", "pos": [], "_source": "f.jsonl: record 3"}, 0.8,
     "f.jsonl: record 3: DPO pairs need a stored tree"),
    (None, 1.0, r"stage.margin must be in \[0, 1\)"),
])
def test_bad_input_is_a_clear_error(record, margin, message):
    with pytest.raises(ValueError, match=message):
        dpo_rows([record or stored(pairs_tree())], margin=margin)


# --- tokens --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model.resolve())


def test_a_finished_path_ends_with_the_end_of_turn_and_a_partial_path_does_not(tokenizer):
    [*_, row, _] = dpo_rows([stored(pairs_tree())])  # fb2 (finished) vs b2o (partial)
    pair = dpo_inputs(tokenizer, row["question"], row["chosen"], row["rejected"], row["chosen_finished"],
                      row["rejected_finished"], None)
    eos = tokenizer.eos_token_id
    assert pair.chosen.input_ids[-1] == eos and pair.chosen.labels[-1] == eos
    assert pair.rejected.input_ids[-1] != eos and eos not in [t for t in pair.rejected.labels if t != IGNORE]
    assert tokenizer.decode(pair.rejected.input_ids).endswith("Step 3: b2o")


def test_both_sequences_share_the_sft_prompt_and_score_steps_after_step_zero(tokenizer):
    chosen, rejected = path("Fever points to infection.", "The answer is A."), path("It is a banana.")
    pair = dpo_inputs(tokenizer, "Q?", chosen, rejected, True, False, "Be careful.")
    sft = sft_inputs(tokenizer, "Q?", chosen, "Be careful.")
    # The finished side is exactly the SFT sequence; SFT's labels start at step 0, DPO's at step 1.
    assert pair.chosen.input_ids == sft.input_ids
    for item in (pair.chosen, pair.rejected):
        first = next(i for i, label in enumerate(item.labels) if label != IGNORE)
        assert item.labels[first:] == item.input_ids[first:]
        assert tokenizer.decode(item.input_ids[first:]).lstrip().startswith("Step 1:")
        assert STEP_ZERO in tokenizer.decode(item.input_ids[:first])
    prompt = next(i for i, label in enumerate(sft.labels) if label != IGNORE)
    assert pair.chosen.input_ids[:prompt] == pair.rejected.input_ids[:prompt] == sft.input_ids[:prompt]


def test_a_batch_is_the_chosen_rows_then_the_rejected_rows_within_the_token_budget(tokenizer):
    rows = dpo_rows([stored(pairs_tree(), "p1"), stored(pairs_tree(), "p2")])
    items = [dpo_inputs(tokenizer, r["question"], r["chosen"], r["rejected"], r["chosen_finished"],
                        r["rejected_finished"], None) for r in rows[:2]]
    batch = collate_dpo(items, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 4
    for row, sequence in enumerate([items[0].chosen, items[1].chosen, items[0].rejected, items[1].rejected]):
        assert batch["input_ids"][row, :len(sequence.input_ids)].tolist() == sequence.input_ids
    assert items[0].padded_tokens == 2 * max(len(items[0].chosen.input_ids), len(items[0].rejected.input_ids))
    budget = 2 * max(item.padded_tokens for item in items)
    data = dpo_datamodule(rows, [], tokenizer, tokenizer.pad_token_id, None, 2048,
                          Batching(max_batch_tokens=budget))
    sizes = []
    for batch in data.train_dataloader():
        sizes.append(batch["input_ids"].shape[0] // 2)
        assert batch["input_ids"].numel() <= budget or sizes[-1] == 1  # both rows of every pair count
    assert sum(sizes) == len(rows)


# --- loss ----------------------------------------------------------------------------------------


def test_dpo_loss_rewards_and_metrics_match_a_hand_computation():
    beta = 0.1
    pc, pr = [-10.0, -7.5, -20.0], [-12.0, -7.0, -19.0]  # policy log p(chosen), log p(rejected)
    rc, rr = [-11.0, -7.5, -18.0], [-11.0, -8.0, -21.0]  # reference
    expected_loss, expected_chosen, expected_rejected = [], [], []
    for i in range(3):
        z = beta * ((pc[i] - rc[i]) - (pr[i] - rr[i]))  # 0.2, -0.1, -0.4
        expected_loss.append(-math.log(1 / (1 + math.exp(-z))))
        expected_chosen.append(beta * (pc[i] - rc[i]))
        expected_rejected.append(beta * (pr[i] - rr[i]))
    policy_chosen = torch.tensor(pc, requires_grad=True)
    losses, chosen, rejected = dpo_loss(policy_chosen, torch.tensor(pr), torch.tensor(rc), torch.tensor(rr),
                                        beta)
    assert losses.tolist() == pytest.approx(expected_loss, abs=1e-6)
    assert chosen.tolist() == pytest.approx(expected_chosen, abs=1e-6)  # 0.1, 0.0, -0.2
    assert rejected.tolist() == pytest.approx(expected_rejected, abs=1e-6)  # -0.1, 0.1, 0.2
    assert losses.requires_grad and not chosen.requires_grad and not rejected.requires_grad
    metrics = {k: v.item() for k, v in dpo_metrics(losses, chosen, rejected).items()}
    assert metrics == pytest.approx({
        "loss": sum(expected_loss) / 3,
        "rewards_chosen": sum(expected_chosen) / 3,
        "rewards_rejected": sum(expected_rejected) / 3,
        "reward_margin": (0.2 - 0.1 - 0.4) / 3,
        "reward_accuracy": 1 / 3,  # only the first pair prefers its chosen side
    }, abs=1e-6)


def _batch(tokenizer):
    rows = dpo_rows([stored(pairs_tree())])
    items = [dpo_inputs(tokenizer, r["question"], r["chosen"], r["rejected"], r["chosen_finished"],
                        r["rejected_finished"], None) for r in rows]
    return collate_dpo(items, tokenizer.pad_token_id)


def _plain_logprobs(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    totals = []
    for row in range(batch["input_ids"].shape[0]):
        total = logprobs.new_zeros(())
        for position, token in enumerate(batch["labels"][row, 1:].tolist()):
            if token != IGNORE:
                total = total + logprobs[row, position, token]
        totals.append(total)
    return torch.stack(totals)


@pytest.mark.parametrize("lora", [False, True])
def test_sequence_logprobs_are_the_plain_sums_of_labelled_token_logprobs(tiny_model, tokenizer, lora):
    torch.manual_seed(0)
    batch = _batch(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.resolve(), dtype=torch.float32)
    if lora:
        model = apply_lora(model, 4, 8, 0.0, "all-linear", "CAUSAL_LM")
    trainable = [p for p in model.parameters() if p.requires_grad]
    expected = _plain_logprobs(model, batch)
    expected_grads = torch.autograd.grad(expected.sum(), trainable)
    ours = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"], chunk_tokens=5)
    grads = torch.autograd.grad(ours.sum(), trainable)
    assert ours.shape == (8,) and (ours < 0).all()
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-6)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_the_reference_is_the_base_model_while_the_policy_moves(tiny_model, tokenizer):
    torch.manual_seed(0)
    batch = _batch(tokenizer)
    base = AutoModelForCausalLM.from_pretrained(tiny_model.resolve(), dtype=torch.float32)
    with torch.no_grad():
        base_logprobs = _plain_logprobs(base, batch)
    policy = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model.resolve(), dtype=torch.float32),
                        4, 8, 0.1, "all-linear", "CAUSAL_LM")
    module = DPOModule(policy, beta=0.1, optimizer=partial(torch.optim.AdamW, lr=1e-2), scheduler=None)
    module.train()
    optimizer = module.configure_optimizers()
    losses, _, _ = module(batch)
    losses.mean().backward()
    optimizer.step()
    reference = module.reference_logprobs(batch)
    assert module.model.training  # the reference pass runs in eval mode and restores the mode
    module.eval()
    with torch.no_grad():
        moved = module.policy_logprobs(batch)
    torch.testing.assert_close(reference, base_logprobs, atol=1e-5, rtol=1e-6)
    assert (moved - base_logprobs).abs().max() > 1e-2


def test_dpo_without_a_lora_adapter_is_refused(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model.resolve())
    with pytest.raises(ValueError, match="LoRA policy.*second, frozen copy"):
        DPOModule(model)


# --- the stage -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    run = tmp_path_factory.mktemp("synthesis")
    with open(run / "trees.jsonl", "w") as handle:
        for k in range(6):
            handle.write(json.dumps(stored(pairs_tree(), f"p{k}")) + "\n")
    return run


TINY = ["model=tiny", "logger=none", "trainer.enable_progress_bar=false", "stage.batch_size=2"]


@pytest.mark.integration
def test_dpo_stage_writes_pairs_metrics_and_a_policy_the_backend_loads(trees, tmp_path):
    cfg = compose(["+experiment=dpo_policy", f"data.trees={trees}", *TINY, "trainer.max_steps=2",
                   "trainer.limit_train_batches=2"])
    metrics = run_stage(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "dpo.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and summary(rows[:4]) == summary(dpo_rows([stored(pairs_tree())]))
    assert (metrics["view_pairs"], metrics["view_level_pairs"], metrics["view_finish_pairs"]) == (24, 18, 6)
    assert metrics["train_pairs"] + metrics["val_pairs"] == 24 and metrics["val_pairs"] >= 4
    assert metrics["stage"] == "dpo" and metrics["global_steps"] == 2
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for split in ("train", "val"):
        for name in ("loss", "rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy"):
            assert f"{split}_{name}" in saved, f"{split}_{name}"
    assert saved["val_loss"] == pytest.approx(math.log(2), abs=0.05)  # barely moved from the reference
    assert (tmp_path / "final" / "adapter_config.json").exists()
    backend = HFBackend(ModelSpec(id="dpo", source=str(tmp_path / "final" / "merged")), device="cpu")
    [[completion]] = backend.generate([GenerationRequest(({"role": "user", "content": "Q?"},), "Step 0:",
                                                         temperature=0.0, max_tokens=4)])
    assert completion.generated_tokens >= 1


@pytest.mark.integration
def test_dpo_stage_refuses_full_fine_tuning(trees, tmp_path):
    cfg = compose(["+experiment=dpo_policy", f"data.trees={trees}", *TINY, "stage.lora.enabled=false"])
    with pytest.raises(ValueError, match="stage.lora.enabled=true"):
        run_stage(cfg, tmp_path)
