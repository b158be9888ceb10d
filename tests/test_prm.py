"""PRM inputs, scores and loss: positions at step ends, training and scoring read the same logits."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from medsss.training.prm_inputs import collate_prm, prm_inputs
from medsss.training.prm_model import PRMScorer, ProcessRewardModel, soft_bce

QUESTION = "Which drug reverses opioid overdose?\nA. Naloxone\nB. Flumazenil"
CHAIN = ["Let's break down this problem step by step.", "Opioids act on mu receptors.",
         "Naloxone is a competitive mu antagonist. The answer is A."]


@pytest.fixture(scope="module")
def tiny_prm(tiny_model):
    torch.manual_seed(0)
    path = tiny_model.resolve()
    return ProcessRewardModel.from_causal_lm(path), AutoTokenizer.from_pretrained(path)


def test_score_positions_are_the_last_token_of_each_step_after_step_zero(tiny_prm):
    _, tokenizer = tiny_prm
    item = prm_inputs(tokenizer, QUESTION, CHAIN, "Be careful.")
    assert len(item.score_positions) == 2
    text_upto = [tokenizer.decode(item.input_ids[: p + 1]) for p in item.score_positions]
    assert text_upto[0].endswith("Step 1: Opioids act on mu receptors.\n\n")
    assert text_upto[1].endswith("Step 2: Naloxone is a competitive mu antagonist. The answer is A.\n\n")
    assert item.score_positions[1] == len(item.input_ids) - 1
    after_first = tokenizer.decode(item.input_ids[item.score_positions[0] + 1 :])
    assert after_first.startswith("Step 2:")
    prompt = tokenizer.decode(item.input_ids)
    assert prompt.index("Be careful.") < prompt.index(QUESTION) < prompt.index("Step 0: Let's break")


def test_each_step_is_tokenized_on_its_own(tiny_prm):
    _, tokenizer = tiny_prm
    item = prm_inputs(tokenizer, QUESTION, CHAIN, None)
    step2 = tokenizer("Step 2: " + CHAIN[2] + "\n\n", add_special_tokens=False)["input_ids"]
    assert item.input_ids[-len(step2):] == step2


def test_training_logits_and_scorer_scores_agree_token_for_token(tiny_prm):
    model, tokenizer = tiny_prm
    candidates = [CHAIN, CHAIN[:2], [CHAIN[0], "Flumazenil reverses benzodiazepines.", "The answer is B."]]
    items = [prm_inputs(tokenizer, QUESTION, c, None) for c in candidates]
    batch = collate_prm(items, tokenizer.pad_token_id, labels=[[1.0, 1.0], [1.0], [0.0, 0.0]])
    with torch.no_grad():
        trained_on = torch.sigmoid(model.step_logits(batch["input_ids"], batch["attention_mask"],
                                                     batch["score_positions"]))
    scored = PRMScorer(model, tokenizer, None, batch_size=2).score(QUESTION, candidates)
    assert [len(s) for s in scored] == [2, 1, 2]
    for row, scores in enumerate(scored):
        assert scores == pytest.approx(trained_on[row, : len(scores)].tolist(), abs=1e-6)


def test_scores_do_not_depend_on_what_else_is_in_the_batch(tiny_prm):
    model, tokenizer = tiny_prm
    alone = PRMScorer(model, tokenizer, None).score(QUESTION, [CHAIN[:2]])
    together = PRMScorer(model, tokenizer, None).score(QUESTION, [CHAIN, CHAIN[:2]])
    assert alone[0] == pytest.approx(together[1], abs=1e-5)


def test_soft_bce_uses_only_real_positions_and_weights():
    logits = torch.tensor([[0.0, 2.0], [1.0, 99.0]])
    labels = torch.tensor([[0.5, 1.0], [0.0, 0.0]])
    positions = torch.tensor([[3, 5], [4, -1]])  # the second row has one step; 99.0 is padding
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = (bce(torch.tensor(0.0), torch.tensor(0.5)) + bce(torch.tensor(2.0), torch.tensor(1.0))
                + bce(torch.tensor(1.0), torch.tensor(0.0))) / 3
    assert soft_bce(logits, labels, positions) == pytest.approx(expected.item())
    weights = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    weighted = (bce(torch.tensor(0.0), torch.tensor(0.5)) + bce(torch.tensor(1.0), torch.tensor(0.0))) / 2
    assert soft_bce(logits, labels, positions, weights) == pytest.approx(weighted.item())


def test_a_saved_prm_loads_with_the_same_scores(tiny_prm, tmp_path):
    model, tokenizer = tiny_prm
    with torch.no_grad():
        model.head.weight.normal_()
    model.save(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = ProcessRewardModel.from_causal_lm(str(tmp_path))
    before = PRMScorer(model, tokenizer, None).score(QUESTION, [CHAIN])
    after = PRMScorer(reloaded, tokenizer, None).score(QUESTION, [CHAIN])
    assert before[0] == pytest.approx(after[0], abs=1e-6)


def test_the_released_medsss_layout_loads_and_scores_class_one(tiny_model, tmp_path):
    """MedSSS ships its PRM as a two-class token classifier with a LoRA adapter."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForTokenClassification

    path = tiny_model.resolve()
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(1)
    base = AutoModelForTokenClassification.from_pretrained(path, num_labels=2)
    adapted = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                              task_type="TOKEN_CLS", init_lora_weights=False))
    adapted.save_pretrained(tmp_path / "adapter")
    item = prm_inputs(tokenizer, QUESTION, CHAIN, None)
    with torch.no_grad():
        expected_logits = adapted(input_ids=torch.tensor([item.input_ids])).logits

    loaded = PeftModel.from_pretrained(AutoModelForTokenClassification.from_pretrained(path, num_labels=2),
                                       tmp_path / "adapter")
    # The classifier head is saved with the adapter (modules_to_save for TOKEN_CLS).
    scores = PRMScorer(loaded, tokenizer, None, layout="token_classifier").score(QUESTION, [CHAIN])[0]
    expected = torch.softmax(expected_logits[0, item.score_positions], dim=-1)[:, 1].tolist()
    assert scores == pytest.approx(expected, abs=1e-5)
    assert all(0.0 < s < 1.0 for s in scores)
