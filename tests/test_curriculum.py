"""The curriculum: pass rates from synthesis-shaped rollouts, the kept set of a pass-rate band,
and the stage's seed file (resumable) on the tiny model."""

from __future__ import annotations

import json

import pytest
from conftest import compose
from helpers import ScriptedBackend, drive, problem

from medsss.curriculum import Band, PassRate, attempt_process, pass_rate_table, select_curriculum
from medsss.data.prompts import STEP_ZERO
from medsss.search.mcts import SearchConfig, TreeSearch


def rate(pid: str, source: str, correct: int, attempts: int = 8) -> PassRate:
    return PassRate(pid, source, correct, attempts)


RATES = [
    rate("a1", "medqa", 0), rate("a2", "medqa", 1), rate("a3", "medqa", 5), rate("a4", "medqa", 8),
    rate("a5", "medqa", 0),
    rate("b1", "pubmedqa", 6), rate("b2", "pubmedqa", 3), rate("b3", "pubmedqa", 7),
    rate("c1", "bioasq", 2),
]


def ids(rates):
    return [r.id for r in rates]


def test_the_hard_band_keeps_at_most_one_in_eight_and_a_floor_of_the_hardest_easier_ones():
    kept = select_curriculum(RATES, Band(low=0.0, high=0.125, floor_per_source=2))
    # medqa: a1, a2, a5 are in the band (0/8, 1/8, 0/8); pubmedqa has none, so its two hardest
    # (b2 at 3/8, b1 at 6/8) fill the floor; bioasq's only question fills its floor. Input order.
    assert ids(kept) == ["a1", "a2", "a5", "b1", "b2", "c1"]


def test_a_cap_per_source_balances_sources_hardest_first():
    kept = select_curriculum(RATES, Band(low=0.0, high=0.125, floor_per_source=1, max_per_source=2))
    # medqa's in-band a1 (0/8), a5 (0/8), a2 (1/8): the cap keeps the two hardest, ties by order.
    assert ids(kept) == ["a1", "a5", "b2", "c1"]


def test_a_middle_band_without_floor():
    kept = select_curriculum(RATES, Band(low=0.25, high=0.75, floor_per_source=0))
    assert ids(kept) == ["a3", "b1", "b2", "c1"]  # 5/8, 6/8, 3/8, 2/8; b3 (7/8) is above


def test_band_limits_are_checked():
    with pytest.raises(ValueError, match="low <= high"):
        Band(low=0.5, high=0.25)


def test_pass_rate_table_counts_by_source_and_outcome():
    kept = select_curriculum(RATES, Band())
    table = pass_rate_table(RATES, kept, 8)
    by_source = {row["source"]: row for row in table}
    assert [row["source"] for row in table] == ["bioasq", "medqa", "pubmedqa", "all"]
    assert (by_source["medqa"]["questions"], by_source["medqa"]["kept"]) == (5, 3)
    assert by_source["medqa"]["0/8"] == 2 and by_source["medqa"]["8/8"] == 1
    assert by_source["all"]["mean_pass_rate"] == pytest.approx(round(32 / 72, 4))
    assert by_source["pubmedqa"]["kept_mean_pass_rate"] == pytest.approx(round((6 / 8 + 3 / 8) / 2, 4))


def test_attempts_are_a_root_rollout_of_synthesis_with_forced_answers():
    """k samples of one request pre-filled with step 0; an attempt without an answer is forced to
    an option letter (greedily, one token) and then judged, as synthesis judges a rollout."""
    seen = []

    def respond(request, i):
        seen.append(request)
        if request.choices:  # the forced answer of the attempt that stated none
            return "B"
        return ["Step 1: so. The answer is A.", "Step 1: hmm, unclear", "The answer is B."][i]

    config = SearchConfig(seed=3)
    search = TreeSearch(problem("A"), ({"role": "user", "content": "Q?"},), config)
    result = drive(attempt_process(search, 3), ScriptedBackend(respond))
    assert (result.correct, result.attempts, result.answers) == (1, 3, ("A", "B", "B"))
    first = seen[0]
    assert first.n == 3 and first.prefill == f"Step 0: {STEP_ZERO}\n\nStep 1:"
    assert (first.temperature, first.top_p, first.max_tokens) == (config.rollout_temperature,
                                                                  config.rollout_top_p,
                                                                  config.max_rollout_tokens)
    assert seen[-1].choices == ("A", "B") and seen[-1].max_tokens == 1


CURRICULUM = ["stage=curriculum", "model=tiny", "search=tiny", "backend=hf", "logger=none", "data.limit=6",
              "stage.k=4"]


@pytest.mark.integration
def test_curriculum_stage_writes_seeds_the_jsonl_loader_reads_and_resumes(tmp_path):
    from medsss.data.loaders import DataSpec, load_problems
    from medsss.run import run_stage

    metrics = run_stage(compose([*CURRICULUM, "stage.band.high=1.0", "stage.floor_per_source=0"]), tmp_path)
    rates = [json.loads(line) for line in (tmp_path / "pass_rates.jsonl").read_text().splitlines()]
    assert len(rates) == 6 and all(r["attempts"] == 4 and len(r["answers"]) == 4 for r in rates)
    assert metrics["kept"] == 6 and metrics["answered"] == 6
    # One request of k=4 samples per question, plus one single-sample forced answer per attempt
    # that stated none.
    forced = metrics["generation_requests"] - 6
    assert metrics["generated_sequences"] == 6 * 4 + forced
    seeds = load_problems(DataSpec(name="seeds", format="jsonl", path=str(tmp_path / "seeds.jsonl"))).problems
    assert [p.id for p in seeds] == [r["id"] for r in rates]
    assert all(p.options and p.meta["attempts"] == 4 for p in seeds)
    assert "| all |" in (tmp_path / "pass_rates.md").read_text()

    # A rerun answers nothing again; a torn line (a killed run's last write) is dropped and redone.
    with open(tmp_path / "pass_rates.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"id": "torn", "sou')
    again = run_stage(compose([*CURRICULUM, "stage.band.high=0.0", "stage.floor_per_source=0"]), tmp_path)
    assert "generation_requests" not in again and again["answered"] == 6  # no engine was started
    assert len((tmp_path / "pass_rates.jsonl").read_text().splitlines()) == 6
    kept = [json.loads(line)["id"] for line in (tmp_path / "seeds.jsonl").read_text().splitlines()]
    assert kept == [r["id"] for r in rates if r["correct"] == 0]
