"""The dual-sided PRM (stage.head=dual): penalty targets 1[V_k < V_{k-1}], a second head on the same
hidden states, loss = value BCE + alpha * penalty BCE, score = clip(p_value - lambda * p_penalty, 0, 1)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import compose
from helpers import build_tree
from transformers import AutoTokenizer

from medsss.labels.rules import penalty_targets
from medsss.labels.views import prm_rows, view_counts
from medsss.training.prm_inputs import collate_prm, prm_inputs
from medsss.training.prm_model import (
    CONFIG_FILE,
    PENALTY_HEAD_FILE,
    PRMHeadConfig,
    PRMScorer,
    ProcessRewardModel,
    dual_head_loss,
    dual_score,
)

QUESTION = "Which drug reverses opioid overdose?\nA. Naloxone\nB. Flumazenil"
CHAIN = ["Let's break down this problem step by step.", "Opioids act on mu receptors.",
         "Naloxone is a competitive mu antagonist. The answer is A."]
OTHER = [CHAIN[0], "Flumazenil reverses benzodiazepines.", "So it reverses opioids too.", "The answer is B."]
DUAL = PRMHeadConfig(head="dual", penalty_weight=0.3, penalty_scale=0.5)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce(logit: float, target: float) -> float:
    p = sigmoid(logit)
    return -(target * math.log(p) + (1.0 - target) * math.log(1.0 - p))


# --- targets and rows ----------------------------------------------------------------------------


def test_penalty_targets_mark_each_step_that_lowers_the_value():
    assert penalty_targets([0.5, 0.6, 0.4, 0.4, 1.0]) == [0.0, 1.0, 0.0, 0.0]
    assert penalty_targets([0.4, 0.2]) == [1.0]  # step 1 is compared with the root's value


@pytest.mark.parametrize("values, message", [([0.5], "at least one labelled step"),
                                             ([0.5, 1.2], "step 1 is 1.2, outside")])
def test_penalty_targets_of_a_bad_chain_are_a_clear_error(values, message):
    with pytest.raises(ValueError, match=message):
        penalty_targets(values)


def record(pid: str = "p1") -> dict:
    #            root 0.4
    #      a 0.5               b 0.2
    #  right 1.0  wrong 0.0     m 0.2 (copied) -> right 1.0
    tree = build_tree({
        "root": {"visits": 3, "value": 0.4},
        "a": {"parent": "root", "visits": 2, "value": 0.5, "rollout_total": 4, "rollout_correct": 2},
        "b": {"parent": "root", "visits": 2, "value": 0.2, "rollout_total": 2, "rollout_correct": 0},
        "right. The answer is A.": {"parent": "a", "kind": "finish", "visits": 1, "value": 1.0, "correct": True},
        "wrong. The answer is B.": {"parent": "a", "kind": "finish", "visits": 1, "value": 0.0, "correct": False},
        "m": {"parent": "b", "visits": 1, "value": 0.2},
        "right again. The answer is A.": {"parent": "m", "kind": "finish", "visits": 1, "value": 1.0,
                                          "correct": True},
    })
    return {"id": pid, "question": "Q?", "answer": "A", **tree.to_dict()}


def test_prm_rows_carry_penalties_only_when_asked():
    single = prm_rows([record()])
    assert all("penalties" not in row for row in single)
    assert "penalty_steps" not in view_counts(single)
    dual = prm_rows([record()], penalties=True)
    assert [row["penalties"] for row in dual] == [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0, 0.0]]
    assert [row["labels"] for row in dual] == [row["labels"] for row in single]  # labels unchanged
    assert view_counts(dual)["penalty_steps"] == 2


def test_collate_aligns_penalties_with_the_score_positions(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.resolve())
    items = [prm_inputs(tokenizer, QUESTION, CHAIN, None), prm_inputs(tokenizer, QUESTION, OTHER, None)]
    batch = collate_prm(items, 0, labels=[[1.0, 1.0], [0.2, 0.1, 0.0]], penalties=[[0.0, 0.0], [1.0, 1.0, 0.0]])
    assert batch["penalties"].tolist() == [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    assert batch["score_positions"][0, 2] == -1
    with pytest.raises(ValueError, match="row 1: 2 penalty targets for 3 scored steps"):
        collate_prm(items, 0, labels=[[1.0, 1.0], [0.2, 0.1, 0.0]], penalties=[[0.0, 0.0], [1.0, 1.0]])


# --- loss and score ------------------------------------------------------------------------------


VALUE = torch.tensor([[0.3, -1.2, 7.0], [2.0, 50.0, -50.0]])  # row 1: one real step; the rest is padding
PENALTY = torch.tensor([[-0.4, 1.5, -7.0], [-2.5, 50.0, 50.0]])
LABELS = torch.tensor([[0.5, 0.25, 1.0], [0.75, 0.0, 1.0]])
PENALTIES = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
POSITIONS = torch.tensor([[10, 14, 19], [12, -1, -1]])
REAL = [(0, 0), (0, 1), (0, 2), (1, 0)]


@pytest.mark.parametrize("weights", [None, torch.tensor([[1.0, 0.5, 0.25], [0.75, 1.0, 1.0]])])
def test_dual_loss_is_value_bce_plus_alpha_times_penalty_bce_at_real_positions(weights):
    w = {(b, k): 1.0 if weights is None else weights[b, k].item() for b, k in REAL}
    value = sum(w[b, k] * bce(VALUE[b, k].item(), LABELS[b, k].item()) for b, k in REAL) / sum(w.values())
    # the penalty part is unweighted: rollout weights are the confidence of one value, not of a comparison
    penalty = sum(bce(PENALTY[b, k].item(), PENALTIES[b, k].item()) for b, k in REAL) / len(REAL)
    loss = dual_head_loss(VALUE, PENALTY, LABELS, PENALTIES, POSITIONS, weights, penalty_weight=0.3)
    assert loss.value.item() == pytest.approx(value, abs=1e-6)
    assert loss.penalty.item() == pytest.approx(penalty, abs=1e-6)
    assert loss.total.item() == pytest.approx(value + 0.3 * penalty, abs=1e-6)


def test_the_score_is_the_value_minus_half_the_penalty_clipped_to_zero_and_one():
    value = torch.tensor([[2.0, 0.0, -2.0, 9.0]])
    penalty = torch.tensor([[-1.0, 3.0, 2.0, -30.0]])
    expected = [sigmoid(2.0) - 0.5 * sigmoid(-1.0), sigmoid(0.0) - 0.5 * sigmoid(3.0),
                0.0,  # sigmoid(-2) - 0.5 * sigmoid(2) = 0.119 - 0.440 < 0: clipped
                sigmoid(9.0) - 0.5 * sigmoid(-30.0)]
    assert dual_score(value, penalty, 0.5)[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert dual_score(value, penalty, 0.0)[0].tolist() == pytest.approx([sigmoid(v) for v in value[0].tolist()],
                                                                          abs=1e-6)


@pytest.mark.parametrize("settings, message", [({"head": "triple"}, "'triple' must be one of"),
                                               ({"penalty_weight": -0.1}, "penalty_weight must be"),
                                               ({"penalty_scale": "half"}, "penalty_scale must be")])
def test_bad_head_settings_are_a_clear_error(settings, message):
    with pytest.raises(ValueError, match=message):
        PRMHeadConfig(**settings)


# --- the model -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dual_prm(tiny_model):
    torch.manual_seed(0)
    path = tiny_model.resolve()
    model = ProcessRewardModel.from_causal_lm(path, heads=DUAL)
    with torch.no_grad():  # heads far from their initialisation, so their scores are not all ~0.5
        model.head.weight.normal_()
        model.penalty_head.weight.normal_()
    return model, AutoTokenizer.from_pretrained(path)


def _batch(tokenizer, candidates):
    return collate_prm([prm_inputs(tokenizer, QUESTION, c, None) for c in candidates], tokenizer.pad_token_id)


def test_both_heads_read_one_body_forward_at_the_same_positions(dual_prm):
    model, tokenizer = dual_prm
    batch = _batch(tokenizer, [CHAIN, OTHER])
    forwards = []
    hook = model.body.register_forward_hook(lambda *args: forwards.append(1))
    try:
        with torch.no_grad():
            value, penalty = model.head_logits(batch["input_ids"], batch["attention_mask"], batch["score_positions"])
            hidden = model.body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    finally:
        hook.remove()
    assert len(forwards) == 2  # head_logits: one; the reference forward just above: one
    for row in range(2):
        for step, position in enumerate(batch["score_positions"][row].tolist()):
            if position < 0:
                assert value[row, step] == 0.0 and penalty[row, step] == 0.0
                continue
            assert value[row, step].item() == pytest.approx(model.head(hidden[row, position]).item(), abs=1e-5)
            assert penalty[row, step].item() == pytest.approx(model.penalty_head(hidden[row, position]).item(),
                                                              abs=1e-5)


def test_the_scorer_applies_the_dual_score_with_the_saved_or_a_given_scale(dual_prm):
    model, tokenizer = dual_prm
    batch = _batch(tokenizer, [CHAIN, OTHER])
    with torch.no_grad():
        value, penalty = model.head_logits(batch["input_ids"], batch["attention_mask"], batch["score_positions"])
    scored = PRMScorer(model, tokenizer, None).score(QUESTION, [CHAIN, OTHER])
    rescaled = PRMScorer(model, tokenizer, None, penalty_scale=0.0).score(QUESTION, [CHAIN, OTHER])
    for row, (scores, value_only) in enumerate(zip(scored, rescaled, strict=True)):
        v, p = value[row, : len(scores)].tolist(), penalty[row, : len(scores)].tolist()
        expected = [min(1.0, max(0.0, sigmoid(a) - 0.5 * sigmoid(b))) for a, b in zip(v, p, strict=True)]
        assert scores == pytest.approx(expected, abs=1e-6)
        assert value_only == pytest.approx([sigmoid(a) for a in v], abs=1e-6)


def test_a_saved_dual_prm_loads_with_its_heads_and_the_same_scores(dual_prm, tmp_path):
    model, tokenizer = dual_prm
    model.save(tmp_path)
    assert (tmp_path / PENALTY_HEAD_FILE).exists()
    assert json.loads((tmp_path / CONFIG_FILE).read_text()) == {"head": "dual", "penalty_weight": 0.3,
                                                                "penalty_scale": 0.5}
    reloaded = ProcessRewardModel.from_causal_lm(str(tmp_path))
    assert reloaded.heads == DUAL and reloaded.penalty_head is not None
    before = PRMScorer(model, tokenizer, None).score(QUESTION, [CHAIN, OTHER])
    after = PRMScorer(reloaded, tokenizer, None).score(QUESTION, [CHAIN, OTHER])
    for old, new in zip(before, after, strict=True):
        assert new == pytest.approx(old, abs=1e-6)
    (tmp_path / PENALTY_HEAD_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="says head=dual but .*penalty_head.safetensors is missing"):
        ProcessRewardModel.from_causal_lm(str(tmp_path))


def test_a_single_head_prm_saved_before_the_dual_head_loads_and_scores_as_before(tiny_model, tmp_path):
    torch.manual_seed(0)
    path = tiny_model.resolve()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = ProcessRewardModel.from_causal_lm(path)
    with torch.no_grad():
        model.head.weight.normal_()
    model.save(tmp_path)
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["head"] == "single"
    (tmp_path / CONFIG_FILE).unlink()  # the folder as the single-head PRM wrote it before
    reloaded = ProcessRewardModel.from_causal_lm(str(tmp_path))
    assert reloaded.heads.head == "single" and reloaded.penalty_head is None
    batch = _batch(tokenizer, [CHAIN])
    with torch.no_grad():
        logits = model.step_logits(batch["input_ids"], batch["attention_mask"], batch["score_positions"])
    scores = PRMScorer(reloaded, tokenizer, None).score(QUESTION, [CHAIN])[0]
    assert scores == pytest.approx(torch.sigmoid(logits[0]).tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="needs a dual-head PRM"):
        PRMScorer(reloaded, tokenizer, None, penalty_scale=0.5)


def test_a_prm_config_with_an_unknown_key_names_the_file(tmp_path):
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"head": "dual", "penalty_wieght": 0.3}))
    with pytest.raises(ValueError, match=f"{CONFIG_FILE}: expected an object with keys among"):
        PRMHeadConfig.read(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"head": "both"}))
    with pytest.raises(ValueError, match=f"{CONFIG_FILE}: PRM head 'both'"):
        PRMHeadConfig.read(tmp_path)


def test_a_dual_module_without_penalty_targets_is_a_clear_error(dual_prm):
    from medsss.training.modules import PRMModule

    model, tokenizer = dual_prm
    items = [prm_inputs(tokenizer, QUESTION, CHAIN, None)]
    batch = collate_prm(items, tokenizer.pad_token_id, labels=[[1.0, 1.0]])
    with pytest.raises(ValueError, match="penalties=True"):
        PRMModule(model).training_step(batch, 0)


# --- stages --------------------------------------------------------------------------------------


def test_stage_head_defaults_to_single_and_a_bad_one_fails_naming_the_key():
    from medsss.stages.train import prm_heads

    assert prm_heads(compose(["stage=prm"])) == PRMHeadConfig()
    assert prm_heads(compose(["+experiment=prm_dual"])) == DUAL
    assert prm_heads(compose(["stage=prm", "stage.head=dual", "stage.dual.penalty_scale=0.2"])).penalty_scale == 0.2
    with pytest.raises(ValueError, match="stage.head / stage.dual: PRM head 'triple'"):
        prm_heads(compose(["stage=prm", "stage.head=triple"]))


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    run = tmp_path_factory.mktemp("synthesis")
    with open(run / "trees.jsonl", "w") as handle:
        for k in range(8):
            handle.write(json.dumps(record(f"p{k}")) + "\n")
    return run


@pytest.mark.integration
def test_the_prm_stage_trains_a_dual_prm_the_evaluation_scorer_loads(trees, tmp_path):
    from medsss.evaluation.scorer import load_prm_scorer
    from medsss.run import run_stage
    from medsss.stages.evaluate import load_scorer

    overrides = ["+experiment=prm_dual", f"data.trees={trees}", "model=tiny", "logger=none",
                 "trainer.enable_progress_bar=false", "stage.batch_size=2"]
    metrics = run_stage(compose(overrides), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "prm.jsonl").read_text().splitlines()]
    assert [row["penalties"] for row in rows[:3]] == [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0, 0.0]]
    assert metrics["view_penalty_steps"] == 8 * 2
    # The held-out problem has value drops and rises, correct and wrong steps: every AUROC is defined.
    for key in ("val_loss", "val_value_loss", "val_penalty_loss", "val_step_auroc", "val_penalty_auroc",
                "val_score_auroc"):
        assert key in metrics, key
    assert metrics["val_loss"] == pytest.approx(metrics["val_value_loss"] + 0.3 * metrics["val_penalty_loss"],
                                                abs=1e-5)
    final = tmp_path / "final"
    assert (final / "value_head.safetensors").exists() and (final / PENALTY_HEAD_FILE).exists()
    assert json.loads((final / CONFIG_FILE).read_text())["head"] == "dual"

    scorer = load_prm_scorer(str(final))
    scores = scorer.score("Q?", [rows[0]["steps"], rows[2]["steps"]])
    assert [len(s) for s in scores] == [2, 3] and all(0.0 <= s <= 1.0 for row in scores for s in row)
    cfg = compose(["stage=evaluate", f"stage.prm.path={final}", "stage.prm.penalty_scale=0.0"])
    value_only = load_scorer(cfg.stage.prm, None, "cpu").score("Q?", [rows[0]["steps"], rows[2]["steps"]])
    # lambda = 0 scores p_value alone, strictly above p_value - 0.5 * p_penalty (clipped or not)
    assert all(v > s for row, vrow in zip(scores, value_only, strict=True) for s, v in zip(row, vrow, strict=True))
