"""The one prompt format (docs/method.md#solution-format): rendering, prefill, splitting, messages."""

from __future__ import annotations

import pytest

from medsss.data.prompts import (
    REFLECT_OPENING,
    build_messages,
    continuation_prefill,
    render_steps,
    split_steps,
    truncate_at_step_marker,
)

Z = "Let's break down this problem step by step."

# --- rendering --------------------------------------------------------------------------------


def test_every_search_and_every_evaluation_sample_starts_from_the_fixed_step_zero(tmp_path):
    # The policy is always asked to continue "Step 0: <fixed text>\n\nStep 1:", in synthesis
    # (the tree's root) and in evaluation (the sampled candidates): the two must not drift apart.
    from helpers import ScriptedBackend, drive, problem

    from medsss.evaluation.sampling import sample_and_score
    from medsss.search.mcts import SearchConfig, TreeSearch

    backend = ScriptedBackend(lambda request, i: "The answer is A.")
    search = TreeSearch(problem(), build_messages("Q?", None), SearchConfig(width=1, max_nodes=2))
    result = drive(search.run(), backend)
    assert result.tree.root.text == Z
    assert backend.calls[0][0].prefill == f"Step 0: {Z}\n\nStep 1:"
    sampler = ScriptedBackend(lambda request, i: " The answer is A.")
    [row] = sample_and_score([problem()], sampler, None, tmp_path / "cache.jsonl", n=1, temperature=1.0,
                             top_p=0.95, max_tokens=8, system_prompt=None, greedy=False, fallback=False,
                             items_per_call=1, seed=0)
    assert sampler.calls[0][0].prefill == f"Step 0: {Z}\n\nStep 1:"
    assert row["candidates"][0]["steps"] == [Z, "The answer is A."]


def test_render_numbers_steps_from_zero_and_joins_with_a_blank_line():
    assert render_steps([Z, "Lipase is high.", "The answer is C."]) == (
        "Step 0: Let's break down this problem step by step.\n\n"
        "Step 1: Lipase is high.\n\n"
        "Step 2: The answer is C."
    )


def test_render_with_a_start_index_numbers_from_it():
    assert render_steps(["a", "b"], start=3) == "Step 3: a\n\nStep 4: b"


def test_render_of_no_steps_is_empty():
    assert render_steps([]) == ""


def test_render_keeps_newlines_inside_a_step():
    assert render_steps([Z, "line one\nline two"]) == f"Step 0: {Z}\n\nStep 1: line one\nline two"


# --- continuation prefill ---------------------------------------------------------------------


def test_prefill_after_step_zero_asks_for_step_one():
    assert continuation_prefill([Z]) == f"Step 0: {Z}\n\nStep 1:"


def test_prefill_renders_the_path_then_the_next_step_marker():
    assert continuation_prefill([Z, "Lipase is high."]) == f"Step 0: {Z}\n\nStep 1: Lipase is high.\n\nStep 2:"


def test_prefill_of_an_empty_path_is_the_step_zero_marker():
    assert continuation_prefill([]) == "Step 0:"


def test_prefill_with_the_reflect_opening_ends_with_but_wait():
    text = continuation_prefill([Z, "Lipase is high."], opening=REFLECT_OPENING)
    assert text == f"Step 0: {Z}\n\nStep 1: Lipase is high.\n\nStep 2: But wait, "
    assert text.endswith("Step 2: But wait, ")


def test_prefill_without_opening_ends_exactly_with_the_marker():
    for k in range(1, 6):
        path = [Z] + [f"step {i}" for i in range(1, k)]
        assert continuation_prefill(path).endswith(f"\n\nStep {k}:")


def test_prefill_extends_the_parent_prefill_byte_for_byte():
    # The prefix cache relies on a child's prompt starting with its parent's rendered path.
    parent = [Z, "a"]
    child = [Z, "a", "b"]
    assert continuation_prefill(child).startswith(render_steps(parent) + "\n\n")
    assert continuation_prefill(parent) + " b" == render_steps(child)


# --- splitting --------------------------------------------------------------------------------


def test_split_on_line_initial_step_markers():
    assert split_steps("Step 1: a\n\nStep 2: b\nStep 3: c") == ["a", "b", "c"]


def test_split_handles_multi_digit_step_numbers():
    assert split_steps("Step 9: a\n\nStep 10: b\n\nStep 11: c") == ["a", "b", "c"]


def test_the_bare_word_step_mid_line_is_not_a_marker():
    text = "Step 1: Take this Step 2: carefully.\n\nStep 2: Next step."
    assert split_steps(text) == ["Take this Step 2: carefully.", "Next step."]


def test_a_line_initial_step_without_a_colon_is_not_a_marker():
    text = "Step 1: First.\nStep 3 is what matters.\n\nStep 2: Second."
    assert split_steps(text) == ["First.\nStep 3 is what matters.", "Second."]


def test_a_line_initial_step_word_without_a_number_is_not_a_marker():
    assert split_steps("Step 1: a\nStep by step: b") == ["a\nStep by step: b"]


def test_text_before_the_first_marker_is_the_first_step():
    assert split_steps(" the lipase is high.\n\nStep 3: The answer is C.") == [
        "the lipase is high.",
        "The answer is C.",
    ]


def test_text_without_any_marker_is_one_step():
    assert split_steps("  just some reasoning\nover two lines  ") == ["just some reasoning\nover two lines"]


def test_empty_steps_are_dropped():
    assert split_steps("Step 1:\n\nStep 2:   \n\nStep 3: c") == ["c"]
    assert split_steps("\n\nStep 1: a") == ["a"]


@pytest.mark.parametrize("text", ["", "   ", "\n\n", "Step 1:", "Step 1:\n\nStep 2:"])
def test_text_with_no_content_splits_into_no_steps(text):
    assert split_steps(text) == []


def test_steps_are_stripped():
    assert split_steps("Step 1:    a   \n\n\nStep 2:\tb\n") == ["a", "b"]


@pytest.mark.parametrize(
    "steps",
    [
        [Z],
        [Z, "Lipase is high."],
        [Z, "Lipase is high.", "So it is pancreatitis.", "The answer is C."],
        [Z, "line one\nline two", "Take the next Step 2: mid-line is fine.", "The answer is B."],
        [Z] + [f"Reasoning {i}." for i in range(1, 15)],
    ],
)
def test_render_then_split_round_trips_including_step_zero(steps):
    assert split_steps(render_steps(steps)) == steps


def test_prefill_plus_generated_step_round_trips():
    path = [Z, "Lipase is high."]
    generated = " So the answer is C."
    assert split_steps(continuation_prefill(path) + generated) == [*path, "So the answer is C."]


def test_reflect_prefill_plus_generated_text_keeps_but_wait_in_the_new_step():
    path = [Z, "Lipase is high."]
    full = continuation_prefill(path, opening=REFLECT_OPENING) + "amylase is normal."
    assert split_steps(full) == [*path, "But wait, amylase is normal."]


# --- truncation -------------------------------------------------------------------------------


def test_truncate_cuts_before_the_next_line_initial_marker():
    assert truncate_at_step_marker(" Lipase is high.\n\nStep 3: The answer is C.") == " Lipase is high.\n\n"


def test_truncate_cuts_at_the_first_of_several_markers():
    assert truncate_at_step_marker("a\nStep 2: b\nStep 3: c") == "a\n"


def test_truncate_without_a_marker_keeps_everything():
    text = " Lipase is high.\nMore reasoning."
    assert truncate_at_step_marker(text) == text


def test_truncate_ignores_the_bare_word_step_and_markers_without_colon():
    text = " Take this Step 2: carefully.\nStep 3 matters.\nStep up: no."
    assert truncate_at_step_marker(text) == text


def test_truncate_of_empty_text_is_empty():
    assert truncate_at_step_marker("") == ""


# --- messages ---------------------------------------------------------------------------------


def test_messages_with_a_system_prompt_are_system_then_user():
    assert build_messages("What is the diagnosis?", "You are a careful physician.") == (
        {"role": "system", "content": "You are a careful physician."},
        {"role": "user", "content": "What is the diagnosis?"},
    )


@pytest.mark.parametrize("system_prompt", [None, ""])
def test_messages_without_a_system_prompt_are_the_user_turn_only(system_prompt):
    assert build_messages("What is the diagnosis?", system_prompt) == (
        {"role": "user", "content": "What is the diagnosis?"},
    )


def test_the_question_is_passed_through_unchanged():
    question = "  A 45-year-old man...\nA. one\nB. two\n"
    assert build_messages(question, None)[-1]["content"] == question
