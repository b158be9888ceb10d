"""The proving ground: its task generator, step checker, corpus, measurements, and (slow) the
regression test that the self-evolution loop measurably improves its policy."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from medsss.data.prompts import STEP_ZERO, render_steps, split_steps
from medsss.data.verify import extract_answer, is_correct
from medsss.proving_ground.checker import sound_prefixes, step_rightness
from medsss.proving_ground.knowledge import (
    CLASSES,
    Fact,
    KnowledgeBase,
    build_knowledge_base,
    fact_sentence,
    parse_answer,
    parse_fact,
)
from medsss.proving_ground.measure import paired_difference, step_auroc, strategy_outcomes
from medsss.proving_ground.pretrain import (
    PretrainSettings,
    corpus_error_share,
    misconceptions,
    noisy_chain,
    pretraining_corpus,
)
from medsss.proving_ground.task import (
    CHAINS,
    TaskSettings,
    generate_questions,
    gold_steps,
    parse_question,
    question_text,
)

QUESTION = "Which condition is a contraindication to zorudrel?\nA. asthma\nB. gout\nC. glaucoma\nD. pregnancy"
OPTIONS = {"A": "asthma", "B": "gout", "C": "glaucoma", "D": "pregnancy"}


def hand_kb() -> KnowledgeBase:
    """zorudrel -> plabotin -> voramide -> vex kinase inhibition -> gout (and one confusable class)."""
    return KnowledgeBase(
        seed=0,
        drug_class={"plabotin": "voramide", "kelatin": "kelastin"},
        prodrug_drug={"zorudrel": "plabotin"},
        class_mechanism={"voramide": "vex kinase inhibition", "kelastin": "tolar channel block"},
        mechanism_condition={"vex kinase inhibition": "gout", "tolar channel block": "asthma"},
    )


@pytest.fixture(scope="module")
def task():
    return generate_questions(TaskSettings(seed=0))


# --- knowledge base and sentences -------------------------------------------------------------


def test_every_fact_sentence_reads_back_as_its_fact():
    for fact in (Fact("prodrug", "zorudrel", "plabotin"), Fact("class", "plabotin", "voramide"),
                 Fact("mechanism", "voramide", "vex kinase inhibition"),
                 Fact("contraindication", "vex kinase inhibition", "gout")):
        assert parse_fact(fact_sentence(fact)) == fact
    assert fact_sentence(Fact("mechanism", "voramide", "vex kinase inhibition")) == \
        "voramides act by vex kinase inhibition."
    assert parse_answer("The answer is vex kinase inhibition.") == "vex kinase inhibition"
    assert parse_fact("plabotin is probably a voramide.") is None
    assert parse_answer("The answer is B.") is None  # an option letter is not a value


def test_knowledge_base_is_a_function_of_its_seed_with_two_classes_per_mechanism():
    kb = build_knowledge_base(3)
    assert kb == build_knowledge_base(3)
    assert kb != build_knowledge_base(4)
    assert len(kb.drug_class) == 10 * len(CLASSES) and len(kb.prodrug_drug) == 40
    per_mechanism: dict[str, int] = {}
    for mechanism in kb.class_mechanism.values():
        per_mechanism[mechanism] = per_mechanism.get(mechanism, 0) + 1
    assert set(per_mechanism.values()) == {2}
    assert len(set(kb.mechanism_condition.values())) == len(kb.mechanism_condition)
    assert set(kb.prodrug_drug.values()) <= set(kb.drug_class)


# --- questions and splits ---------------------------------------------------------------------


def test_splits_share_no_question_and_no_chain_but_every_held_out_fact_is_stated_in_train(task):
    _, questions = task
    train, heldout = questions["train"], questions["heldout"]
    assert len(train) + len(heldout) >= 3000 and len(heldout) >= 1000
    assert not {q.text for q in train} & {q.text for q in heldout}
    assert not {q.id for q in train} & {q.id for q in heldout}
    # No held-out chain occurs in train, not even as the start of a longer train chain.
    train_prefixes = {q.chain[:k] for q in train for k in range(1, len(q.chain) + 1)}
    assert not {q.chain for q in heldout} & train_prefixes
    # ... while every fact a held-out chain needs is stated on some train question.
    train_facts = {f for q in train for f in q.chain}
    assert {f for q in heldout for f in q.chain} <= train_facts
    # A held-out question asks further than train does about its entity: its family is never
    # asked on train questions, but the entity is.
    assert not {(q.entity, q.asks) for q in train} & {(q.entity, q.asks) for q in heldout}
    assert {q.entity for q in heldout} <= {q.entity for q in train}


def test_questions_need_two_to_four_chained_steps_and_their_gold_answers_hold(task):
    kb, questions = task
    lengths = set()
    for question in questions["train"][:300] + questions["heldout"][:300]:
        lengths.add(len(question.chain))
        assert all(kb.holds(fact) for fact in question.chain)
        for before, after in zip(question.chain, question.chain[1:], strict=False):
            assert after.subject == before.object
        assert question.options[question.answer] == question.chain[-1].object
        assert sorted(question.options) == ["A", "B", "C", "D"]
        assert len(set(question.options.values())) == 4
        assert parse_question(question.text) == (question.entity, question.asks)
        solution = render_steps([STEP_ZERO, *gold_steps(question)])
        assert is_correct(extract_answer(solution), question.answer, question.options)
        assert all(sound_prefixes(kb, question.text, question.options, split_steps(solution)[1:]))
    assert lengths == {2, 3, 4}


def test_split_records_are_plain_jsonl_rows_the_loader_reads(tmp_path):
    from medsss.data.loaders import DataSpec, load_problems
    from medsss.proving_ground.task import write_task

    write_task(TaskSettings(seed=1, drugs_per_class=2, prodrugs=4, variants=2), tmp_path)
    problems = load_problems(DataSpec(name="pg", format="jsonl", path=str(tmp_path / "train.jsonl"))).problems
    assert problems and all(p.kind == "choice" and p.options and p.answer in p.options for p in problems)
    kb = json.loads((tmp_path / "knowledge.json").read_text())
    assert set(kb) == {"settings", "drug_class", "prodrug_drug", "class_mechanism", "mechanism_condition"}


def test_data_config_resolves_to_the_generated_split(tmp_path, monkeypatch):
    from conftest import compose
    from hydra.utils import instantiate

    monkeypatch.setenv("MEDSSS_CACHE", str(tmp_path))
    cfg = compose(["data=proving_ground"])
    spec = instantiate(cfg.data)
    assert spec.path.startswith(str(tmp_path)) and spec.path.endswith("train.jsonl")
    first = json.loads(open(spec.path, encoding="utf-8").readline())
    assert first["source"] == "proving_ground/train"


# --- the step checker -------------------------------------------------------------------------


def test_checker_marks_the_first_wrong_step_and_everything_after_it():
    kb = hand_kb()
    right = ["zorudrel is a prodrug of plabotin.", "plabotin is a voramide.",
             "voramides act by vex kinase inhibition.", "vex kinase inhibition is contraindicated in gout.",
             "The answer is gout."]
    assert step_rightness(kb, QUESTION, OPTIONS, right) == [True] * 5
    # A wrong class: the chain then follows the wrong class correctly, but is not sound any more.
    wrong_class = ["zorudrel is a prodrug of plabotin.", "plabotin is a kelastin.",
                   "kelastins act by tolar channel block.", "tolar channel block is contraindicated in asthma.",
                   "The answer is asthma."]
    assert step_rightness(kb, QUESTION, OPTIONS, wrong_class) == [True, False, False, False, False]
    assert sound_prefixes(kb, QUESTION, OPTIONS, wrong_class) == [True, False, False, False, False]
    # A right step after a wrong one stays unsound.
    lucky = ["zorudrel is a prodrug of kelatin.", "plabotin is a voramide.", "voramides act by vex kinase inhibition."]
    assert step_rightness(kb, QUESTION, OPTIONS, lucky) == [False, True, True]
    assert sound_prefixes(kb, QUESTION, OPTIONS, lucky) == [False, False, False]
    # Unparseable text, a skipped step and a step after the answer are wrong.
    assert step_rightness(kb, QUESTION, OPTIONS, ["zorudrel is great.", "plabotin is a voramide."]) == [False, True]
    assert step_rightness(kb, QUESTION, OPTIONS, ["plabotin is a voramide."]) == [False]
    assert step_rightness(kb, QUESTION, OPTIONS, [*right, "The answer is gout."]) == [True] * 5 + [False]
    assert step_rightness(kb, QUESTION, OPTIONS, [*right[:4], "The answer is B."]) == [True] * 4 + [False]


def test_checker_refuses_a_question_it_did_not_generate():
    with pytest.raises(ValueError, match="not a proving ground question"):
        step_rightness(hand_kb(), "What is 2 + 2?\nA. 3\nB. 4", {"A": "3", "B": "4"}, ["4."])
    with pytest.raises(ValueError, match="gold value 'gout'"):
        step_rightness(hand_kb(), QUESTION, {**OPTIONS, "B": "bradycardia"}, [])


# --- the pretraining corpus -------------------------------------------------------------------


def test_corpus_without_errors_is_the_gold_solutions_and_never_a_split_question(task):
    kb, questions = task
    excluded = {q.text for q in questions["train"][:200]}
    clean = PretrainSettings(examples=300, entity_error=0.0, link_error_low=0.0, link_error_high=0.0)
    corpus = pretraining_corpus(kb, clean, seed=0, excluded=excluded)
    assert len(corpus) == 300 and corpus_error_share(corpus) == 0.0
    assert not {e.question for e in corpus} & excluded
    for example in corpus[:50]:
        entity, asks = parse_question(example.question)
        options = {line[0]: line[3:] for line in example.question.splitlines()[1:]}
        assert all(step_rightness(kb, example.question, options, example.steps))
        assert question_text(entity, asks, options) == example.question


def test_misconceptions_spread_evenly_and_a_full_confusion_names_the_confuser():
    kb = hand_kb()
    settings = PretrainSettings(link_error_low=0.2, link_error_high=0.8)
    beliefs = misconceptions(kb, settings)
    assert sorted(beliefs.rate[c] for c in kb.class_mechanism) == pytest.approx([0.2, 0.8])
    always = PretrainSettings(entity_error=0.0, link_error_low=1.0, link_error_high=1.0, confusion_share=1.0)
    beliefs = misconceptions(kb, always)
    facts, truths = noisy_chain(kb, "plabotin", "mechanism", random.Random(0), always, beliefs)
    assert truths == [True, False]
    assert facts[1] == Fact("mechanism", "voramide", beliefs.confuser["voramide"])
    assert beliefs.confuser["voramide"] != "vex kinase inhibition"


def test_corpus_error_share_follows_the_settings(task):
    kb, _ = task
    settings = PretrainSettings(examples=3000)
    share = corpus_error_share(pretraining_corpus(kb, settings, seed=0, excluded=set()))
    # Expected from the rates: entity steps 0.1, class-level steps 0.475 on average, answer steps
    # wrong whenever an earlier step was (bar lucky landings): about a third overall.
    assert 0.28 < share < 0.40
    few = corpus_error_share(pretraining_corpus(kb, PretrainSettings(examples=3000, link_error_low=0.0,
                                                                     link_error_high=0.1), 0, set()))
    assert few < share / 2
    assert {len(CHAINS[k]) for k in CHAINS} == {2, 3, 4}


# --- measurements -----------------------------------------------------------------------------


def item(item_id, answers, scores, gold="A", greedy=None):
    options = {"A": "gout", "B": "asthma", "C": "glaucoma", "D": "pregnancy"}
    candidates = [{"text": f"The answer is {a}.", "steps": [STEP_ZERO, f"The answer is {a}."], "answer": a,
                   "step_scores": [s]} for a, s in zip(answers, scores, strict=True)]
    row = {"id": item_id, "gold": gold, "kind": "choice", "options": options, "candidates": candidates}
    if greedy is not None:
        row["greedy"] = {"text": "", "steps": [], "answer": greedy}
    return row


def test_strategy_outcomes_average_over_disjoint_blocks_of_n():
    rows = [item("q1", ["asthma", "asthma", "gout", "asthma"], [0.1, 0.2, 0.9, 0.3], greedy="asthma"),
            item("q2", ["gout", "gout", "asthma", "gout"], [0.5, 0.5, 0.9, 0.5], greedy="gout")]
    assert strategy_outcomes(rows, "sc", 4).tolist() == [0.0, 1.0]
    assert strategy_outcomes(rows, "pvs", 4).tolist() == [1.0, 1.0]    # 0.9 beats 0.1 + 0.2 + 0.3
    assert strategy_outcomes(rows, "bon", 4).tolist() == [1.0, 0.0]
    assert strategy_outcomes(rows, "sc", 2).tolist() == [0.5, 0.5]     # blocks [0, 1] and [2, 3]
    assert strategy_outcomes(rows, "sc", 1).tolist() == [0.25, 0.75]
    assert strategy_outcomes(rows, "greedy", 1).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="fewer than N = 8"):
        strategy_outcomes(rows, "sc", 8)


def test_paired_difference_is_the_mean_per_item_difference_with_an_interval_around_it():
    mean, low, high = paired_difference([1, 1, 1, 0] * 25, [0, 1, 0, 0] * 25, rounds=500)
    assert mean == pytest.approx(0.5) and 0.35 < low < 0.5 < high < 0.65
    mean, low, high = paired_difference([1, 0] * 50, [1, 0] * 50, rounds=200)
    assert (mean, low, high) == (0.0, 0.0, 0.0)


def test_step_auroc_compares_scores_with_sound_prefixes():
    kb = hand_kb()
    good = ["zorudrel is a prodrug of plabotin.", "plabotin is a voramide."]
    bad = ["zorudrel is a prodrug of kelatin.", "kelatin is a kelastin."]
    rows = [{"id": "q", "options": OPTIONS, "candidates": [
        {"steps": [STEP_ZERO, *good], "step_scores": [0.9, 0.8]},
        {"steps": [STEP_ZERO, *bad], "step_scores": [0.2, 0.85]},
    ]}]
    questions = {"q": QUESTION}
    # Sound: 0.9, 0.8; unsound: 0.2, 0.85 -> 3 of 4 pairs ordered right.
    assert step_auroc(kb, rows, questions) == pytest.approx(0.75)
    # Process steps only (before each candidate's last): 0.9 vs 0.2.
    assert step_auroc(kb, rows, questions, process_only=True) == pytest.approx(1.0)


# --- the regression test: the loop works, measured --------------------------------------------


@pytest.fixture(scope="module")
def small_experiment(tmp_path_factory):
    """One round on the proving ground (+experiment=proving_ground_small, one seed): 240 train
    questions searched, SFT and PRM on their trees, 120 held-out questions evaluated for the
    starting and the evolved policy under the round's PRM."""
    from medsss.proving_ground.experiment import main

    out = tmp_path_factory.mktemp("proving_ground") / "run"
    return main(["--out", str(out), "--seeds", "0", "--experiment", "proving_ground_small",
                 "--no-backprop", "--no-rules", "--bootstrap", "500"])


def _report(summary) -> str:
    differences = summary["differences"]
    return json.dumps({"greedy gain": differences["evolved - start, greedy"]["items"],
                       "start pvs@16 - sc@16": differences["start: pvs@16 - sc@16"]["items"],
                       "evolved pvs@16 - sc@16": differences["evolved: pvs@16 - sc@16"]["items"],
                       "process auroc": summary["prm"]["soft / comp"]["start auroc process"][0]})


@pytest.mark.slow
def test_self_evolution_beats_the_starting_policy_greedy(small_experiment):
    # Measured: +28.3 points [20.0, 36.7] (experiments/proving_ground/README.md).
    gain = small_experiment["differences"]["evolved - start, greedy"]["items"]
    assert gain[1] > 0.0, _report(small_experiment)   # the 95% interval lies above zero
    assert np.isfinite(small_experiment["accuracy"]["evolved|pass@16"]["items"][0])


@pytest.mark.slow
def test_prm_guided_decoding_beats_sc_and_the_prm_reads_wrong_steps(small_experiment):
    """P-VS beats SC at N = 16 and the PRM's process-step AUROC is well above chance. Inverted PRM
    labels or a constant back-propagation must fail it (experiments/proving_ground/README.md)."""
    # Measured: +28.3 points [19.6, 39.2] and AUROC 0.791; inverted labels gave -28.3 [-36.7, -18.3]
    # and AUROC 0.229, a constant back-propagation +35.8 [26.7, 45.0] (the answer steps still carry
    # the outcome) but AUROC 0.572 (experiments/proving_ground/README.md).
    pvs_over_sc = small_experiment["differences"]["start: pvs@16 - sc@16"]["items"]
    auroc = small_experiment["prm"]["soft / comp"]["start auroc process"][0]
    assert pvs_over_sc[1] > 0.0, _report(small_experiment)
    assert auroc > 0.65, _report(small_experiment)
