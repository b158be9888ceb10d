"""Kill anywhere (tests/kill_harness.py): a stage SIGKILLed at a seeded random moment and rerun
with the same command in the same directory loses nothing, stores nothing twice, changes nothing
already written, repairs a torn last record and ends where the uninterrupted run ended.

The integration tests kill each stage once, in its work (with a torn record planted where the
stage appends); the slow one kills each five more times, once in each fifth of its run.
``python tests/kill_harness.py --seeds 5`` prints the figures table."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from helpers import ScriptedBackend, problem
from kill_harness import (
    CASES,
    EVOLVE_ONE_ROUND,
    EXACT,
    Outcome,
    Reference,
    StageCase,
    append_only,
    kept_lines,
    kill_moment,
    reference_run,
    tear_last_record,
    tear_nothing,
    trial,
)

from medsss.evaluation.sampling import sample_and_score
from medsss.training.fit import is_complete_checkpoint, resolve_ckpt_path

# -- the harness's own rules, on hand-built files ----------------------------------------------------


def test_a_reader_keeps_the_newline_terminated_records_only():
    assert kept_lines(b'{"id": 1}\n{"id": 2}\n{"id"') == [b'{"id": 1}', b'{"id": 2}']
    assert kept_lines(b"") == []


def test_tearing_cuts_the_last_record_half_way_or_plants_half_a_first_one(tmp_path):
    store = tmp_path / "trees.jsonl"
    store.write_bytes(b'{"id": "a"}\n{"id": "bb"}\n')
    assert tear_last_record(store, b"unused") == "trees.jsonl: record 2 cut to 6 of 12 bytes"
    assert store.read_bytes() == b'{"id": "a"}\n{"id":'
    empty = tmp_path / "cache" / "medqa.jsonl"
    tear_last_record(empty, b'{"id": "0", "gold": "B"}')
    assert empty.read_bytes() == b'{"id": "0", '


def test_append_only_names_a_changed_or_lost_record_and_a_torn_tail():
    before = b'{"id": "a"}\n{"id": "b"}\n{"id": "c'
    assert append_only("s.jsonl", before, b'{"id": "a"}\n{"id": "b"}\n{"id": "c"}\n') == []
    assert append_only("s.jsonl", before, b'{"id": "a"}\n{"id": "B"}\n') == [
        "s.jsonl: records [2] stored before the kill changed or vanished"
    ]
    assert append_only("s.jsonl", before, b'{"id": "a"}\n') == [
        "s.jsonl: records [2] stored before the kill changed or vanished"
    ]
    assert append_only("s.jsonl", b"", b'{"id": "a"}\n{"id"') == [
        "s.jsonl: still ends in a torn record after the rerun"
    ]


def test_kill_moments_are_seeded_and_inside_the_reference_run():
    moments = [kill_moment("sft", seed, 12.0) for seed in range(20)]
    assert moments == [kill_moment("sft", seed, 12.0) for seed in range(20)]
    assert all(0.0 <= m <= 12.0 for m in moments) and len(set(moments)) == 20
    assert kill_moment("prm", 0, 12.0) != kill_moment("sft", 0, 12.0)


def test_five_strata_put_one_kill_in_each_fifth_of_the_run():
    moments = [kill_moment("curriculum", seed, 10.0, strata=5) for seed in range(5)]
    assert [int(m // 2.0) for m in moments] == [0, 1, 2, 3, 4]


# -- what the harness found, pinned where it was fixed ------------------------------------------------


def test_latest_skips_a_checkpoint_cut_short_and_takes_the_newest_whole_one(tmp_path):
    """Lightning writes a checkpoint to a temporary file and moves it into place; across file
    systems the move is a copy, and a kill in the middle of it leaves a truncated checkpoint, the
    newest one, that a resume would fail to load."""
    import os

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    whole = folder / "epoch=0-step=2.ckpt"
    torch.save({"global_step": 2}, whole)
    torn = folder / "last.ckpt"
    torch.save({"global_step": 3}, torn)
    torn.write_bytes(torn.read_bytes()[:200])
    os.utime(whole, ns=(1_000_000_000, 1_000_000_000))  # the torn one is the newest
    assert is_complete_checkpoint(whole) and not is_complete_checkpoint(torn)
    assert resolve_ckpt_path("latest", folder) == str(whole)
    whole.write_bytes(b"")  # nothing whole left: a fresh start
    assert resolve_ckpt_path("latest", folder) is None
    sharded = folder / "epoch=0-step=4.ckpt"  # deepspeed and sharded FSDP save folders: taken as they are
    sharded.mkdir()
    assert is_complete_checkpoint(sharded) and resolve_ckpt_path("latest", folder) == str(sharded)


def test_an_evaluation_resumed_from_its_cache_samples_each_item_with_its_own_seed(tmp_path):
    """An item's sampling seed is its position in the benchmark, not among the items still to
    sample: a resumed run samples the missing items as the uninterrupted run did."""
    backend = ScriptedBackend(lambda request, i: "Step 1: x\n\nThe answer is A.")
    problems = [problem(pid="a"), problem(pid="b"), problem(pid="c")]
    settings = dict(
        n=2,
        temperature=1.0,
        top_p=0.95,
        max_tokens=8,
        system_prompt=None,
        greedy=False,
        fallback=False,
        items_per_call=1,
        seed=10,
    )
    sample_and_score(problems, backend, None, tmp_path / "whole.jsonl", **settings)
    uninterrupted = [call[0].seed for call in backend.calls]
    cache = tmp_path / "resumed.jsonl"
    cache.write_text((tmp_path / "whole.jsonl").read_text().splitlines()[0] + "\n")  # "a" cached
    backend.calls.clear()
    sample_and_score(problems, backend, None, cache, **settings)
    assert uninterrupted == [10, 11, 12] and [call[0].seed for call in backend.calls] == [11, 12]


# -- kills on the tiny model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kill_anywhere")


@pytest.fixture(scope="module")
def references(workdir):
    """Each case's uninterrupted run, made once for this module's tests."""
    made: dict[str, Reference] = {}

    def reference(case: StageCase) -> Reference:
        if case.name not in made:
            made[case.name] = reference_run(case, workdir)
        return made[case.name]

    return reference


def _report(outcome: Outcome) -> str:
    return (
        f"{outcome.stage} seed {outcome.seed}: killed at {outcome.kill_after} s ({outcome.landed}): "
        + " | ".join(outcome.broken)
        + f" {json.dumps(outcome.details, default=str)}"
    )


def _assert_exact_training(outcome: Outcome) -> None:
    """A resumed training run ends with the uninterrupted run's weights and losses."""
    differences = {
        "final weights": outcome.details["final_weights_max_diff"],
        **outcome.details["loss_diffs"],
    }
    assert all(d <= EXACT for d in differences.values()), (
        f"{_report(outcome)}: the resumed run differs from the uninterrupted one by {differences}"
    )


def mid_run_seed(stage: str) -> int:
    """The first seed whose kill lands in the second half of the run, short of its last tenth: on
    the tiny model the first half or so is start-up (imports, model load), and a single kill
    should land in the stage's work."""
    return next(seed for seed in itertools.count() if 0.5 <= kill_moment(stage, seed, 1.0) <= 0.9)


# The short version: one kill per stage, a torn record planted where the stage appends, a
# one-round evolve run.
SHORT = {
    **{name: CASES[name] for name in ("synthesize", "evaluate", "sft", "prm", "curriculum")},
    "evolve": EVOLVE_ONE_ROUND,
}


@pytest.mark.integration
@pytest.mark.parametrize("stage", list(SHORT))
def test_a_stage_killed_at_a_random_moment_resumes_and_loses_nothing(stage, references, workdir):
    case = SHORT[stage]
    outcome = trial(references(case), mid_run_seed(case.name), workdir, torn=case.tear is not tear_nothing)
    assert outcome.killed, f"{_report(outcome)}: the run ended before its kill"
    assert outcome.lost_nothing, _report(outcome)
    if stage in ("sft", "prm"):
        _assert_exact_training(outcome)


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(CASES))
def test_a_stage_killed_at_five_random_moments_loses_nothing(stage, references, workdir):
    outcomes = [trial(references(CASES[stage]), seed, workdir, strata=5) for seed in range(5)]
    broken = [_report(o) for o in outcomes if not o.lost_nothing]
    assert not broken, "\n".join(broken)
    if stage in ("sft", "prm"):
        for outcome in outcomes:
            _assert_exact_training(outcome)
