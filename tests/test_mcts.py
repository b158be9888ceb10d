"""The search loop, driven by scripted completions: actions, evaluation, termination, post-processing."""

from __future__ import annotations

import pytest
from helpers import ScriptedBackend, by_text, drive, problem

from medsss.data.prompts import build_messages
from medsss.data.records import Problem
from medsss.search.mcts import SearchConfig, TreeSearch

BASE = dict(width=2, simulations=4, min_rollouts=2, correct_nodes=2, max_nodes=30,
            max_step_tokens=50, max_rollout_tokens=100, max_finish_tokens=200, force_answer_tokens=3)


def kind(request) -> str:
    if request.temperature == 0.0:
        return "force"
    if request.stop and request.stop[0].startswith("\nStep "):
        return "reflect" if request.prefill.endswith("But wait, ") else "step"
    return "finish" if request.max_tokens == 200 else "rollout"


def last_step(request) -> str:
    """The text of the node a request continues from."""
    return request.prefill.split("\n\n")[-2].split(": ", 1)[1]


def search(respond, gold="A", item=None, **settings):
    backend = ScriptedBackend(respond)
    config = SearchConfig(**{**BASE, **settings})
    result = drive(TreeSearch(item or problem(gold), build_messages("Q?", None), config).run(), backend)
    return result, backend


def test_answers_in_reason_steps_become_finish_nodes_and_stop_at_correct_nodes():
    result, backend = search(lambda r, i: f"Reasoning {i}. The answer is A.", width=3)
    tree = result.tree
    assert result.stop_reason == "correct_nodes"
    assert [n.kind for n in tree.nodes] == ["root", "finish", "finish", "finish"]
    assert all(n.correct and n.value == 1.0 and n.answer == "A" for n in tree.nodes[1:])
    assert tree.root.value == 1.0 and tree.root.visits == 3  # one visit per new node
    assert len(backend.calls) == 1  # nothing to roll out


def test_confident_node_is_finished_and_the_completion_split_into_steps():
    def respond(request, i):
        return {
            "step": f"Idea {i}.",
            "rollout": "Some reasoning. The answer is A.",
            "finish": " First part.\n\nStep 3: Second part. The answer is A.",
        }[kind(request)]

    result, backend = search(respond)
    tree = result.tree
    first_finish = next(r for call in backend.calls for r in call if kind(r) == "finish")
    assert first_finish.prefill.endswith("Step 1: Idea 0.\n\nStep 2:") and first_finish.stop == ()
    idea = by_text(tree, "Idea 0.")
    middle = tree.children(idea)[0]
    assert (middle.text, middle.kind, middle.rollout_total) == ("First part.", "reason", 0)
    assert middle.value == 1.0  # copied from the node it continues (its rollouts were all correct)
    end = tree.children(middle)[0]
    assert (end.text, end.kind, end.correct, end.depth) == ("Second part. The answer is A.", "finish", True, 3)
    assert result.stop_reason == "correct_nodes" and len(tree.correct_leaves()) == 2


def test_rollouts_value_a_node_by_its_accuracy_with_the_depth_rollout_count():
    def respond(request, i):
        if kind(request) == "step":
            return f"Idea {i}."
        return "The answer is A." if i == 0 else "The answer is B."  # 1 of n correct

    result, backend = search(respond, max_nodes=3, post_process=False)
    rollouts = [r for r in backend.calls[1] if kind(r) == "rollout"]
    assert [r.n for r in rollouts] == [2, 2]  # max(floor(4 / 2), 2) at depth 1
    assert rollouts[0].temperature == 0.6 and rollouts[0].top_p == 0.9
    idea = by_text(result.tree, "Idea 0.")
    assert (idea.rollout_correct, idea.rollout_total, idea.visits) == (1, 2, 1)
    assert idea.value == 0.5


def test_a_wrong_finish_is_reflected_on_and_the_reflection_can_answer():
    def respond(request, i):
        return {
            "step": "Idea.",
            "rollout": "The answer is A.",
            "finish": " Conclude. The answer is B.",
            "reflect": "the findings point to A. The answer is A.",
        }[kind(request)]

    result, backend = search(respond, width=1, correct_nodes=1)
    tree = result.tree
    wrong = by_text(tree, "Conclude. The answer is B.")
    assert wrong.kind == "finish" and wrong.correct is False and not wrong.completed
    reflect_request = next(r for call in backend.calls for r in call if kind(r) == "reflect")
    assert reflect_request.prefill.endswith("Step 2: Conclude. The answer is B.\n\nStep 3: But wait, ")
    revision = tree.children(wrong)[0]
    assert revision.text == "But wait, the findings point to A. The answer is A."
    assert (revision.kind, revision.reflection, revision.correct) == ("finish", True, True)
    # The reflected finish is no longer a leaf: back-propagation updates it like any ancestor,
    # comp from its own verdict 0 and its one child's 1: (0 + 1) / 2.
    assert (wrong.visits, wrong.value) == (2, 0.5)
    assert result.stop_reason == "correct_nodes"


def test_without_reflection_quota_wrong_answers_exhaust_the_tree():
    result, _ = search(lambda r, i: "The answer is B.", width=1, refine_limit=0)
    assert result.stop_reason == "all_completed"
    assert [n.kind for n in result.tree.nodes] == ["root", "finish"]
    assert result.tree.root.completed


def test_max_nodes_stops_the_search_then_post_processing_finishes_leaves_by_value():
    def respond(request, i):
        k = kind(request)
        if k == "step":
            depth = request.prefill.count("\n\nStep ")
            return f"{'good' if i == 0 else 'bad'} idea {depth}."
        if k == "rollout":  # good nodes: 1 of 2 rollouts right; bad nodes: none
            return "The answer is A." if last_step(request).startswith("good") and i == 0 else "The answer is B."
        return " So. The answer is B."  # every finish is wrong: all open leaves get finished

    result, backend = search(respond, max_nodes=5, correct_nodes=1, refine_limit=0)
    assert result.stop_reason == "max_nodes"
    finished = [last_step(r) for call in backend.calls for r in call if kind(r) == "finish"]
    # open leaves after the search: bad idea 1 (0.0), good idea 2 (0.5), bad idea 2 (0.0)
    assert finished == ["good idea 2.", "bad idea 1.", "bad idea 2."]
    assert all(not leaf.correct for leaf in result.tree.leaves())


def test_post_processing_stops_as_soon_as_enough_answers_are_correct():
    def respond(request, i):
        k = kind(request)
        if k == "step":
            return f"{'good' if i == 0 else 'bad'} idea {request.prefill.count(chr(10) + chr(10) + 'Step ')}."
        if k == "rollout":
            return "The answer is A." if last_step(request).startswith("good") and i == 0 else "The answer is B."
        return " So. The answer is A."

    result, backend = search(respond, max_nodes=5, correct_nodes=1)
    finished = [last_step(r) for call in backend.calls for r in call if kind(r) == "finish"]
    assert finished == ["good idea 2."]
    assert len(result.tree.correct_leaves()) == 1


def test_rollouts_without_an_answer_are_forced_to_one_of_the_option_letters():
    def respond(request, i):
        return {"step": f"Idea {i}.", "rollout": "I am not sure.", "force": " A"}.get(kind(request), "")

    result, backend = search(respond, max_nodes=3, post_process=False)
    forced = [r for call in backend.calls for r in call if kind(r) == "force"]
    assert len(forced) == 4  # 2 nodes x 2 rollouts
    assert all(r.prefill.endswith("I am not sure. The answer is") for r in forced)
    # constrained to the problem's option letters, so a weak model cannot answer ":"
    assert all(r.choices == ("A", "B") and r.max_tokens == 1 for r in forced)
    idea = by_text(result.tree, "Idea 0.")
    assert (idea.rollout_correct, idea.rollout_total, idea.value) == (2, 2, 1.0)
    assert result.stats["unanswered_after_forcing"] == 0


def test_a_choice_item_without_an_options_dict_takes_its_letters_from_the_question():
    item = Problem(id="q", question="Which?\nA. one\nB. two\nC. three", answer="C")
    result, backend = search(lambda r, i: {"step": "Idea.", "rollout": "Hmm.", "force": "C"}.get(kind(r), ""),
                             item=item, max_nodes=2, post_process=False)
    forced = [r for call in backend.calls for r in call if kind(r) == "force"]
    assert forced and all(r.choices == ("A", "B", "C") for r in forced)
    assert by_text(result.tree, "Idea.").value == 1.0


def test_free_text_rollouts_are_forced_greedily_and_unanswered_ones_are_counted_wrong():
    item = Problem(id="q", question="Dose?", answer="25 mg", kind="free_text")

    def respond(request, i):
        return {"step": f"Idea {i}.", "rollout": "I am not sure.", "force": " 25 mg." if i == 0 else ""}.get(
            kind(request), "")

    result, backend = search(respond, item=item, max_nodes=3, post_process=False)
    forced = [r for call in backend.calls for r in call if kind(r) == "force"]
    assert len(forced) == 4 and all(not r.choices and r.max_tokens == 3 and r.stop == ("\n",) for r in forced)
    # each forcing request has n=1, so every forced text is " 25 mg." and all 4 are right
    assert result.stats["unanswered_after_forcing"] == 0
    item_blank = Problem(id="q2", question="Dose?", answer="25 mg", kind="free_text")
    result, _ = search(lambda r, i: {"step": f"Idea {i}.", "rollout": "Hmm."}.get(kind(r), ""),
                       item=item_blank, max_nodes=3, post_process=False)
    assert result.stats["unanswered_after_forcing"] == 4  # " The answer is" + nothing: wrong, no crash
    assert all(n.value == 0.0 for n in result.tree.nodes[1:])


def test_identical_sibling_steps_are_kept_once():
    result, _ = search(lambda r, i: "Same step." if kind(r) == "step" else "The answer is B.", max_nodes=2)
    assert [n.text for n in result.tree.children(result.tree.root)] == ["Same step."]


def test_a_line_starting_with_step_that_is_no_marker_stays_in_the_step():
    def respond(request, i):
        if kind(request) == "step":
            return "Check the vitals.\nStep back: the pressure is low.\nStep 2: Next idea."
        return "The answer is B."

    result, backend = search(respond, width=1, max_nodes=2, post_process=False)
    assert backend.calls[0][0].stop == ("\nStep 2:",)  # the next step's exact marker only
    assert result.tree.nodes[1].text == "Check the vitals.\nStep back: the pressure is low."


def test_an_empty_reflection_creates_no_node_and_exhausts_the_wrong_answer():
    def respond(request, i):
        return {"step": "Idea.", "rollout": "The answer is A.", "finish": " Conclude. The answer is B.",
                "reflect": "  "}[kind(request)]

    result, backend = search(respond, width=1, correct_nodes=1)
    wrong = by_text(result.tree, "Conclude. The answer is B.")
    assert wrong.children == [] and wrong.completed
    assert not any(n.reflection for n in result.tree.nodes)
    assert result.stop_reason == "all_completed"


def test_a_leaf_the_model_gives_nothing_for_is_completed():
    result, _ = search(lambda r, i: "   ", post_process=False)
    assert result.stop_reason == "all_completed" and len(result.tree.nodes) == 1


def test_requests_share_a_byte_stable_prefix():
    def respond(request, i):
        return f"Idea {i}." if kind(request) == "step" else "The answer is B."

    _, backend = search(respond, max_nodes=3)
    step, rollout = backend.calls[0][0], backend.calls[1][0]
    assert rollout.messages == step.messages
    assert rollout.prefill.startswith(step.prefill)


def noisy_model(request, i) -> str:
    """A deterministic stand-in for a sampling model: the request's seed and sample index decide
    whether a step states an answer and whether a rollout or completion is right."""
    import random

    rng = random.Random(f"{request.seed}|{i}")
    k = kind(request)
    if k == "force":
        return rng.choice(["A", "B"])
    if k in ("step", "reflect"):
        return rng.choice(["Consider the vitals.", "Rule out infection.", "Check the labs.",
                           "So the answer is A.", "So the answer is B."]) + f" ({rng.random():.3f})"
    if k == "rollout":
        return rng.choice(["Thus the answer is A.", "Thus the answer is B.", "Unclear."])
    return rng.choice([" One.\n\nStep 9: Two. The answer is A.", " One. The answer is B.",
                       " One.\n\nStep 9: Two.\n\nStep 10: Three. The answer is B."])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("backprop", ["comp", "mean"])
def test_every_node_has_at_least_its_childrens_visits_at_paper_settings(seed, backprop):
    backend = ScriptedBackend(noisy_model)
    config = SearchConfig(seed=seed, backprop=backprop)  # paper defaults: width 3, 20 simulations, ...
    result = drive(TreeSearch(problem(), build_messages("Q?", None), config).run(), backend)
    tree = result.tree
    assert len(tree.nodes) > 4
    for node in tree.nodes:
        assert node.visits >= sum(c.visits for c in tree.children(node)), (seed, node.index)
        assert node.visits >= 1 and 0.0 <= node.value <= 1.0
    # the root is never evaluated itself: exactly one visit per node created below it
    assert tree.root.visits == len(tree.nodes) - 1 - sum(1 for n in tree.nodes if n.split)


def budget_model(request, i) -> str:
    # every rollout is right, so each new step is finished at once; every completion is wrong and
    # split into two pieces plus the finish node
    return {"step": f"Idea {i}.", "rollout": "The answer is A.",
            "finish": " One.\n\nStep 8: Two.\n\nStep 9: Three. The answer is B."}[kind(request)]


def test_split_pieces_of_a_finish_grow_the_node_budget_by_default():
    # root + 2 ideas = 3 counted; finishing idea 0 adds 1 counted node (+2 split), idea 1 another
    result, _ = search(budget_model, width=2, max_nodes=5, refine_limit=0, post_process=False)
    tree = result.tree
    split = [n for n in tree.nodes if n.split]
    assert [n.text for n in split] == ["One.", "Two.", "One.", "Two."]
    assert result.stop_reason == "max_nodes"
    assert (len(tree.nodes), len(tree.nodes) - len(split)) == (9, 5)
    assert result.stats["split_nodes"] == 4


def test_split_pieces_can_be_counted_against_the_budget_instead():
    # every node counts: the first finish (3 nodes) already takes the tree from 3 to 6 >= 5
    result, _ = search(budget_model, width=2, max_nodes=5, refine_limit=0, post_process=False,
                       split_nodes_use_budget=True)
    assert result.stop_reason == "max_nodes" and len(result.tree.nodes) == 6
