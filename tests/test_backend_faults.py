"""Engine faults survive: a call that raises is retried with back-off, then only the problems whose
requests fail are recorded as failed; an out-of-memory error halves the batch and the run goes on.

Faults are injected by the real ``MEDSSS_FAULT_GENERATE`` rules (medsss/faults.py) in front of the
scripted backends of the scheduler tests or the tiny model."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import compose
from helpers import ScriptedBackend, StreamingScriptedBackend, problem

from medsss.config_schema import ConfigKeyAddedError
from medsss.data.prompts import build_messages
from medsss.faults import (
    FAULT_GENERATE_ENV,
    FaultInjectingBackend,
    inject_generation_faults,
    parse_fault_rules,
)
from medsss.generation.base import GenerationRequest, GenerationStats
from medsss.generation.resilient import ResilientBackend, RetriesExhausted
from medsss.search.mcts import SearchConfig, TreeSearch
from medsss.search.scheduler import run_searches

CONFIG = SearchConfig(width=2, simulations=4, min_rollouts=2, correct_nodes=2, max_nodes=9)
PROBLEMS = [problem(pid=f"q{k}") for k in range(6)]
MESSAGES = ({"role": "user", "content": "Which organ makes insulin?"},)


def respond(request, i):
    # Deterministic in the request's content (as in tests/test_scheduler.py).
    if request.stop:
        return f"Idea {i} at {len(request.prefill) % 7}."
    return "The answer is A." if (len(request.prefill) + i) % 3 == 0 else "The answer is B."


def faulty(backend, rules: str, waits: list[float], **retry) -> ResilientBackend:
    """``backend`` behind the injected ``rules`` and the retrying wrapper, its waits recorded."""
    return ResilientBackend(
        FaultInjectingBackend(backend, parse_fault_rules(rules)), sleep=waits.append, **retry
    )


def synthesize(problems, backend, trees: int = 4):
    done, failed = {}, {}
    run_searches(
        problems,
        lambda p: TreeSearch(p, build_messages(p.question, None), CONFIG).run(),
        backend,
        trees,
        on_done=lambda p, result: done.__setitem__(p.id, result.tree.to_dict()),
        on_failed=lambda p, reason: failed.__setitem__(p.id, reason),
    )
    return done, failed


def texts(results) -> list[list[str]]:
    return [[c.text for c in row] for row in results]


# --- retries ------------------------------------------------------------------------------------


def test_a_call_that_raises_twice_then_succeeds_returns_the_clean_results_after_two_backoffs(caplog):
    requests = [GenerationRequest(MESSAGES, prefill="x" * k, n=2, seed=k) for k in range(3)]
    clean = ScriptedBackend(respond).generate(requests)
    waits: list[float] = []
    backend = faulty(ScriptedBackend(respond), "raise@1x2", waits)
    with caplog.at_level(logging.WARNING, logger="medsss.generation.resilient"):
        assert texts(backend.generate(requests)) == texts(clean)
    assert waits == [1.0, 2.0]
    stats = backend.stats
    assert (stats.retries, stats.gave_up, stats.injected_faults, stats.oom_halvings) == (2, 0, 2, 0)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and all("InjectedFault" in w for w in warnings)
    assert "try 1 of 3" in warnings[0] and "retrying in 1 s" in warnings[0] and "try 2 of 3" in warnings[1]
    # later calls are not slowed down
    backend.generate(requests)
    assert waits == [1.0, 2.0] and stats.retries == 2


def test_backoff_doubles_up_to_its_cap_and_gives_up_after_the_last_attempt():
    waits: list[float] = []
    request = GenerationRequest(MESSAGES, seed=1)
    backend = faulty(
        ScriptedBackend(respond), "raise@1x4", waits, attempts=5, backoff_s=0.5, max_backoff_s=1.5
    )
    backend.generate([request])
    assert waits == [0.5, 1.0, 1.5, 1.5] and backend.stats.retries == 4

    waits.clear()
    backend = faulty(ScriptedBackend(respond), "raise@1x3", waits, attempts=3)
    with pytest.raises(RetriesExhausted) as failure:
        backend.generate([request])
    assert str(failure.value).startswith(
        "generate of 1 request failed 3 times (retried 2 times with back-off): "
        "InjectedFault: injected by MEDSSS_FAULT_GENERATE rule 'raise@1x3' "
        "on engine call 3"
    )
    assert waits == [1.0, 2.0] and (backend.stats.retries, backend.stats.gave_up) == (2, 1)


@pytest.mark.parametrize("settings", [{"attempts": 0}, {"backoff_s": -1.0}, {"max_backoff_s": -0.5}])
def test_impossible_retry_settings_are_refused(settings):
    with pytest.raises(ValueError, match="retry"):
        ResilientBackend(ScriptedBackend(respond), **settings)


def test_only_the_tree_whose_requests_always_fail_is_recorded_failed_with_its_retry_count():
    clean, _ = synthesize(PROBLEMS, ScriptedBackend(respond))
    waits: list[float] = []
    backend = faulty(ScriptedBackend(respond), "raise~Question q3?", waits)
    done, failed = synthesize(PROBLEMS, backend)
    assert done == {pid: tree for pid, tree in clean.items() if pid != "q3"}
    assert list(failed) == ["q3"]
    assert failed["q3"].startswith(
        "generation failed: RetriesExhausted: generate of 1 request failed 3 times "
        "(retried 2 times with back-off): InjectedFault: injected by "
        "MEDSSS_FAULT_GENERATE rule 'raise~Question q3?'"
    )
    # the batched call gave up, then q3's own call: each after two back-offs
    assert waits == [1.0, 2.0, 1.0, 2.0]
    assert (backend.stats.retries, backend.stats.gave_up, backend.stats.injected_faults) == (4, 2, 6)


def test_a_streaming_submit_is_retried_and_a_poisoned_tree_fails_alone():
    clean, _ = synthesize(PROBLEMS, StreamingScriptedBackend(respond), trees=3)
    waits: list[float] = []
    # call 1 is q0's first submit: it fails twice and succeeds on its third try
    backend = faulty(StreamingScriptedBackend(respond), "raise@1x2,raise~Question q2?", waits)
    assert backend.streaming
    done, failed = synthesize(PROBLEMS, backend, trees=3)
    assert done == {pid: tree for pid, tree in clean.items() if pid != "q2"}
    assert list(failed) == ["q2"] and "submit of 1 request failed 3 times (retried 2 times" in failed["q2"]
    assert waits == [1.0, 2.0, 1.0, 2.0] and (backend.stats.retries, backend.stats.gave_up) == (4, 1)


def test_an_engine_crash_inside_collect_ends_the_run_unretried():
    class CrashingEngine(StreamingScriptedBackend):
        def collect(self):
            raise RuntimeError("engine core died")

    backend = faulty(CrashingEngine(respond), "", [])
    with pytest.raises(RuntimeError, match="engine core died"):
        synthesize(PROBLEMS[:2], backend)
    assert backend.stats.retries == 0


def test_a_backend_that_does_not_stream_is_driven_in_ticks_behind_the_wrapper():
    backend = ResilientBackend(ScriptedBackend(respond))
    assert not backend.streaming and backend.model_id == "scripted"
    with pytest.raises(TypeError, match="ScriptedBackend does not stream"):
        backend.submit([GenerationRequest(MESSAGES)])
    assert backend.steps == 0  # other attributes are the wrapped backend's


# --- out of memory ------------------------------------------------------------------------------


def test_out_of_memory_halves_the_batch_until_it_fits_and_completions_do_not_change(
    tiny_backend, monkeypatch, caplog
):
    monkeypatch.setattr(tiny_backend, "stats", GenerationStats())
    requests = [
        GenerationRequest(MESSAGES, prefill=f"Step {k}:", n=2, temperature=1.0, max_tokens=6, seed=k)
        for k in range(6)
    ]
    clean = texts(tiny_backend.generate(requests))
    monkeypatch.setattr(tiny_backend, "stats", GenerationStats())
    waits: list[float] = []
    backend = faulty(tiny_backend, "oom>2", waits)  # the engine fits two requests per call
    with caplog.at_level(logging.WARNING, logger="medsss.generation.resilient"):
        assert texts(backend.generate(requests)) == clean
    stats = backend.stats
    assert (stats.oom_halvings, stats.batch_limit_after_oom, stats.injected_faults, stats.retries) == (
        2,
        2,
        2,
        0,
    )
    assert waits == []  # halving is not a retry: no back-off
    assert stats.batch_sizes == [4, 4, 4]  # 6 -> 3 -> 2 requests a call: three calls of 2 x n=2 rows
    halvings = [r.getMessage() for r in caplog.records]
    assert len(halvings) == 2 and all("halving the batch" in line for line in halvings)
    assert "generating 6 requests" in halvings[0] and "at most 3 requests per engine call" in halvings[0]
    assert "generating 3 requests" in halvings[1] and "at most 2 requests per engine call" in halvings[1]
    # later calls are cut at the remembered size at once
    assert texts(backend.generate(requests[:5])) == clean[:5]
    assert stats.batch_sizes[3:] == [4, 4, 2] and stats.oom_halvings == 2
    assert {k: v for k, v in stats.as_dict().items() if k in ("oom_halvings", "batch_limit_after_oom")} == {
        "oom_halvings": 2,
        "batch_limit_after_oom": 2,
    }


def test_a_single_request_that_still_runs_out_of_memory_is_retried_then_given_up():
    import torch

    waits: list[float] = []
    backend = faulty(ScriptedBackend(respond), "oom>0", waits, attempts=2)
    requests = [GenerationRequest(MESSAGES, seed=k) for k in range(4)]
    with pytest.raises(
        RetriesExhausted, match=r"generate of 1 request failed 2 times \(retried 1 time"
    ) as failure:
        backend.generate(requests)
    assert isinstance(failure.value.__cause__, torch.cuda.OutOfMemoryError)
    assert (backend.stats.oom_halvings, backend.batch_limit, waits) == (2, 1, [1.0])


def test_memory_error_is_out_of_memory_too():
    class HeapLimited(ScriptedBackend):
        def generate(self, requests):
            if len(requests) > 1:
                raise MemoryError("no room for the batch")
            return super().generate(requests)

    backend = ResilientBackend(HeapLimited(respond), sleep=lambda s: None)
    requests = [GenerationRequest(MESSAGES, prefill=str(k), seed=k) for k in range(3)]
    assert texts(backend.generate(requests)) == texts(ScriptedBackend(respond).generate(requests))
    assert (backend.stats.oom_halvings, backend.batch_limit, backend.stats.retries) == (2, 1, 0)


# --- the fault rules and the config --------------------------------------------------------------


def test_fault_rules_are_read_from_the_environment_variable():
    rules = parse_fault_rules("raise@3x2, oom>8,raise~Question q3?,oom@2")
    assert [(r.kind, r.calls, r.text, r.above) for r in rules] == [
        ("raise", range(3, 5), None, None),
        ("oom", None, None, 8),
        ("raise", None, "Question q3?", None),
        ("oom", range(2, 3), None, None),
    ]
    backend = ScriptedBackend(respond)
    assert inject_generation_faults(backend, {}) is backend
    assert isinstance(
        inject_generation_faults(backend, {FAULT_GENERATE_ENV: "raise@1"}), FaultInjectingBackend
    )
    for bad in ("boom@1", "raise@0", "raise@2x0", "oom>", "raise~"):
        with pytest.raises(ValueError, match=f"MEDSSS_FAULT_GENERATE=.*{bad}"):
            parse_fault_rules(bad)


def test_retry_is_a_typed_root_node_whose_defaults_are_the_wrappers():
    import inspect

    from omegaconf import OmegaConf

    cfg = compose([])
    assert OmegaConf.get_type(cfg.retry).__name__ == "RetrySchema"
    defaults = inspect.signature(ResilientBackend).parameters
    assert dict(cfg.retry) == {
        key: defaults[key].default for key in ("attempts", "backoff_s", "max_backoff_s")
    }
    assert compose(["stage=evaluate", "retry.attempts=5"]).retry.attempts == 5
    with pytest.raises(ConfigKeyAddedError, match="retry.jitter"):
        compose(["+retry.jitter=0.1"])
    with pytest.raises(Exception, match="attempts"):
        compose(["retry.attempts=often"])


# --- a stage run ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_synthesis_run_survives_injected_faults_and_the_rerun_searches_only_the_failed(
    tmp_path, monkeypatch, caplog
):
    from hydra.utils import instantiate

    from medsss.data.loaders import load_problems
    from medsss.stages.synthesize import run as synthesize_stage

    overrides = [
        "model=tiny",
        "search=tiny",
        "logger=none",
        "backend=hf",
        "data.limit=3",
        "retry.backoff_s=0.01",
    ]
    first, second, third = load_problems(instantiate(compose(overrides).data)).problems
    poison = max(second.question.split(","), key=len).strip()[:40].strip()  # a rule's text has no comma
    assert poison not in first.question and poison not in third.question
    # Engine call 1 (the three trees' first steps) and its first retry raise; the second retry runs
    # out of memory (3 requests, the engine fits 2): halved, the first chunk holds the poisoned
    # problem and fails its 3 tries; tree by tree, only the poisoned tree fails (3 more tries).
    monkeypatch.setenv(FAULT_GENERATE_ENV, f"raise@1x2,oom>2,raise~{poison}")
    with caplog.at_level(logging.WARNING, logger="medsss.generation.resilient"):
        metrics = synthesize_stage(compose(overrides), tmp_path)
    assert (metrics["searched_this_run"], metrics["failed_this_run"], metrics["stored_trees"]) == (2, 1, 2)
    written = json.loads((tmp_path / "metrics.json").read_text())
    counters = (
        "generation_retries",
        "generation_calls_given_up",
        "oom_halvings",
        "batch_limit_after_oom",
        "injected_faults",
    )
    assert {key: written[key] for key in counters} == {
        "generation_retries": 6,
        "generation_calls_given_up": 2,
        "oom_halvings": 1,
        "batch_limit_after_oom": 2,
        "injected_faults": 9,
    }
    assert sum("halving the batch" in r.getMessage() for r in caplog.records) == 1
    [failure] = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert failure["id"] == second.id
    assert "failed 3 times (retried 2 times with back-off): InjectedFault" in failure["reason"]
    stored = (tmp_path / "trees.jsonl").read_text()
    assert sorted(json.loads(line)["id"] for line in stored.splitlines()) == sorted([first.id, third.id])

    monkeypatch.delenv(FAULT_GENERATE_ENV)
    again = synthesize_stage(compose(overrides), tmp_path)
    assert (again["searched_this_run"], again["failed_this_run"], again["stored_trees"]) == (1, 0, 3)
    assert again["injected_faults"] == again["generation_retries"] == again["oom_halvings"] == 0
    after = (tmp_path / "trees.jsonl").read_text()
    assert after.startswith(stored) and json.loads(after.splitlines()[-1])["id"] == second.id
