"""PRM label rules on hand-written value chains: exact labels, step 0 never labelled."""

import json

import pytest
from helpers import build_tree

from medsss.io import write_jsonl
from medsss.labels import prm_labels
from medsss.labels.chains import chains_of, read_trees, sample_chain_table
from medsss.labels.views import prm_rows, sft_rows, step_weights

CHAIN = [0.4, 0.6, 0.3, 0.3, 1.0]  # values of steps 0..4


def test_soft_labels_are_the_values_of_steps_one_to_k():
    assert prm_labels(CHAIN, "soft") == [0.6, 0.3, 0.3, 1.0]


def test_hard_labels_threshold_strictly():
    assert prm_labels(CHAIN, "hard") == [1.0, 0.0, 0.0, 1.0]
    assert prm_labels([0.0, 0.5, 0.51], "hard", threshold=0.5) == [0.0, 1.0]
    assert prm_labels(CHAIN, "hard", threshold=0.25) == [1.0, 1.0, 1.0, 1.0]


def test_value_dynamics_leaves_step_one_and_shapes_later_steps_from_raw_values():
    # y_1 = V_1 (its predecessor, the root, is never rolled out); y_k = clip(V_k - (V_{k-1} - V_k), 0, 1)
    # step 1: 0.6;                      step 2: 0.3 - (0.6 - 0.3) = 0.0;
    # step 3: 0.3 - 0 = 0.3;            step 4: 1.0 - (0.3 - 1.0) = 1.7 -> 1.0
    assert prm_labels(CHAIN, "value_dynamics") == pytest.approx([0.6, 0.0, 0.3, 1.0])


def test_value_dynamics_can_shape_step_one_against_the_root():
    # step 1: 0.6 - (0.4 - 0.6) = 0.8; the rest as by default
    assert prm_labels(CHAIN, "value_dynamics", shape_step_one=True) == pytest.approx([0.8, 0.0, 0.3, 1.0])


def test_value_dynamics_factor_scales_the_change():
    # step 2: 0.3 - 0.5 * (0.6 - 0.3) = 0.15; with step 1 shaped: 0.6 - 0.5 * (0.4 - 0.6) = 0.7
    assert prm_labels([0.4, 0.6, 0.3], "value_dynamics", factor=0.5) == pytest.approx([0.6, 0.15])
    assert prm_labels([0.4, 0.6, 0.3], "value_dynamics", factor=0.5, shape_step_one=True) == pytest.approx(
        [0.7, 0.15])


def test_value_dynamics_is_not_a_recursion_on_labels():
    # With step 1 shaped to 0.8, a recursion y_k = clip(V_k - (y_{k-1} - V_k)) would give step 2 =
    # 0.5 - (0.8 - 0.5) = 0.2; from raw values step 2 = 0.5 - (0.6 - 0.5) = 0.4.
    assert prm_labels([0.4, 0.6, 0.5], "value_dynamics", shape_step_one=True) == pytest.approx([0.8, 0.4])


def test_a_single_step_chain_gets_one_label():
    assert prm_labels([0.2, 1.0], "soft") == [1.0]


@pytest.mark.parametrize("values, rule, message", [
    ([0.5], "soft", "at least one labelled step"),
    ([0.5, 1.2], "soft", "step 1 is 1.2"),
    ([0.5, 0.5], "linear", "must be one of"),
])
def test_bad_input_is_a_clear_error(values, rule, message):
    with pytest.raises(ValueError, match=message):
        prm_labels(values, rule)

# --- views over stored trees ------------------------------------------------------------------



def stored(tree, pid="p1"):
    return {"id": pid, "question": "Q?", "answer": "A", **tree.to_dict()}


def two_answer_tree():
    #            root
    #        a (0.5, 4 rollouts)        b (0.2, 2 rollouts)
    #   right (finish, 1)  wrong (finish, 0)     m (copied 0.2) -> right2 (finish, 1)
    return build_tree({
        "root": {"visits": 3, "value": 0.4},
        "a": {"parent": "root", "visits": 2, "value": 0.5, "rollout_total": 4, "rollout_correct": 2},
        "b": {"parent": "root", "visits": 2, "value": 0.2, "rollout_total": 2, "rollout_correct": 0},
        "right. The answer is A.": {"parent": "a", "kind": "finish", "visits": 1, "value": 1.0, "correct": True},
        "wrong. The answer is B.": {"parent": "a", "kind": "finish", "visits": 1, "value": 0.0, "correct": False},
        "m": {"parent": "b", "visits": 1, "value": 0.2},
        "right again. The answer is A.": {"parent": "m", "kind": "finish", "visits": 1, "value": 1.0, "correct": True},
    })


def test_chains_are_root_to_finish_leaf_paths_with_their_values():
    chains = chains_of(stored(two_answer_tree()))
    assert [(c.steps[1:], c.values[1:], c.correct) for c in chains] == [
        (["a", "right. The answer is A."], [0.5, 1.0], True),
        (["a", "wrong. The answer is B."], [0.5, 0.0], False),
        (["b", "m", "right again. The answer is A."], [0.2, 0.2, 1.0], True),
    ]


def test_chains_carry_each_steps_fields_as_trajectories_jsonl_writes_them():
    from medsss.search.export import trajectories

    record = stored(two_answer_tree())
    line = trajectories(record)
    exported = [*line["pos"], *line["neg"]]
    ours = sorted(chains_of(record), key=lambda c: not c.correct)  # pos first, as the export
    assert [[s["text"] for s in steps] for steps in exported] == [c.steps for c in ours]
    assert [[s["value"] for s in steps] for steps in exported] == [c.values for c in ours]
    assert [[s["rollout_total"] for s in steps] for steps in exported] == [c.rollouts for c in ours]
    assert [[s["kind"] for s in steps] for steps in exported] == [c.kinds for c in ours]


def test_the_sample_table_shows_the_first_correct_and_incorrect_chain_of_each_tree():
    records = [stored(two_answer_tree(), "p1"), stored(two_answer_tree(), "p2")]
    columns, rows = sample_chain_table(records, limit=3)
    assert columns == ["id", "answer", "correct", "min_value", "solution"]
    assert [row[:4] for row in rows] == [["p1", "A", True, 0.5], ["p1", "A", False, 0.0], ["p2", "A", True, 0.5]]
    assert rows[0][4] == ("Step 0: Let's break down this problem step by step.\n\nStep 1: a\n\n"
                          "Step 2: right. The answer is A.")


def test_sft_keeps_distinct_correct_chains_best_minimum_value_first():
    rows = sft_rows([stored(two_answer_tree())])
    assert [r["steps"][-1] for r in rows] == ["right. The answer is A.", "right again. The answer is A."]
    assert [r["min_value"] for r in rows] == [0.5, 0.2]
    assert [r["steps"][-1] for r in sft_rows([stored(two_answer_tree())], top_k=1)] == ["right. The answer is A."]


def test_prm_rows_label_every_step_after_step_zero():
    rows = prm_rows([stored(two_answer_tree())], rule="hard")
    assert [r["labels"] for r in rows] == [[0.0, 1.0], [0.0, 0.0], [0.0, 0.0, 1.0]]
    assert [len(r["labels"]) for r in rows] == [len(r["steps"]) - 1 for r in rows]


def test_prm_rows_skip_problems_without_both_outcomes_unless_asked():
    only_right = build_tree({"a": {"parent": "root", "kind": "finish", "visits": 1, "value": 1.0, "correct": True}})
    records = [stored(only_right, "easy"), stored(two_answer_tree(), "mixed")]
    assert {r["id"] for r in prm_rows(records)} == {"mixed"}
    assert {r["id"] for r in prm_rows(records, require_both=False)} == {"easy", "mixed"}


def test_weights_grow_with_rollouts_are_exact_for_outcomes_and_follow_copied_values():
    chain = chains_of(stored(two_answer_tree()))[2]  # root, b (2 rollouts), m (copied), finish
    assert step_weights(chain, full_rollouts=4) == [0.5, 0.5, 1.0]
    rows = prm_rows([stored(two_answer_tree())], weight_rollouts=4)
    assert rows[0]["weights"] == [1.0, 1.0]


def test_views_read_stores_and_write_datasets_loadable_jsonl(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "trees.jsonl").write_text(json.dumps(stored(two_answer_tree())) + "\n")
    rows = prm_rows(read_trees([run]), rule="soft")
    path = write_jsonl(tmp_path / "prm.jsonl", rows)
    load_dataset = pytest.importorskip("datasets", reason="the optional train extra's datasets").load_dataset

    loaded = load_dataset("json", data_files=str(path), split="train")
    assert loaded.num_rows == 3 and loaded[0]["labels"] == [0.5, 1.0]


# --- the reference's pos/neg chain files ----------------------------------------------------------


REFERENCE_RECORD = {
    "question": "Which drug?\nA. x\nB. y",
    "answer": "A",
    "pos": [[["Step 1: Think about x.", 0.75, 0.8], ["Step 2: So x. The answer is A.", 1.0, 1.0]]],
    "neg": [[["Step 1: Think about y.", 0.25, 0.2], ["Step 2: So y. The answer is B.", 0.0, 0.0]],
            [["Step 1: Think about x.", 0.75, 0.8], ["Step 2: But y. The answer is B.", 0.0, 0.0]]],
}


def test_reference_pos_neg_chain_files_load_as_chains(tmp_path):
    path = tmp_path / "reference.json"
    path.write_text(json.dumps([REFERENCE_RECORD]))
    chains = [c for record in read_trees([path]) for c in chains_of(record)]
    assert [c.correct for c in chains] == [True, False, False]
    first = chains[0]
    # "Step k:" prefixes removed; step 0 prepended (with step 1's value: it is never labelled)
    assert first.steps == ["Let's break down this problem step by step.", "Think about x.", "So x. The answer is A."]
    assert first.values == [0.75, 0.75, 1.0]
    assert (first.question, first.answer, first.kinds[-1]) == ("Which drug?\nA. x\nB. y", "A", "finish")


def test_sft_and_prm_views_read_reference_chains_like_trees(tmp_path):
    path = tmp_path / "reference.jsonl"
    path.write_text(json.dumps({"id": "r1", **REFERENCE_RECORD}) + "\n")
    sft = sft_rows(read_trees([path]))
    assert [r["steps"][1:] for r in sft] == [["Think about x.", "So x. The answer is A."]]
    prm = prm_rows(read_trees([path]), rule="hard")
    assert [r["labels"] for r in prm] == [[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]
    assert {r["id"] for r in prm} == {"r1"}


def test_our_trajectories_file_loads_as_a_chain_source(tmp_path):
    from medsss.search.export import trajectories

    record = stored(two_answer_tree())
    (tmp_path / "trajectories.jsonl").write_text(json.dumps(trajectories(record)) + "\n")
    from_file = [(c.steps, c.values, c.correct) for c in chains_of(next(read_trees([tmp_path])))]
    from_tree = sorted(((c.steps, c.values, c.correct) for c in chains_of(record)), key=lambda c: not c[2])
    assert from_file == from_tree


def test_a_malformed_reference_step_is_an_error_naming_the_record_and_step(tmp_path):
    path = tmp_path / "bad.jsonl"
    bad = {**REFERENCE_RECORD, "neg": [[["Step 1: fine", 0.5, 0.5], ["Step 2: value missing"]]]}
    path.write_text(json.dumps(REFERENCE_RECORD) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: record 2: neg\[0\] step 1"):
        [chains_of(record) for record in read_trees([path])]
