"""The cross-tree scheduler: batching across trees changes the calls, not the trees; failures stay local."""

from __future__ import annotations

from helpers import ScriptedBackend, StreamingScriptedBackend, problem

from medsss.data.prompts import build_messages
from medsss.search.mcts import SearchConfig, TreeSearch
from medsss.search.scheduler import run_searches

CONFIG = SearchConfig(width=2, simulations=4, min_rollouts=2, correct_nodes=2, max_nodes=9)


def respond(request, i):
    # Deterministic in the request's content, so a tree does not depend on what it was batched with.
    if request.stop:
        return f"Idea {i} at {len(request.prefill) % 7}."
    correct = (len(request.prefill) + i) % 3 == 0
    return "The answer is A." if correct else "The answer is B."


def synthesize(problems, trees: int, backend):
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


PROBLEMS = [problem(pid=f"q{k}") for k in range(6)]


def test_batching_across_trees_cuts_engine_calls_and_leaves_the_trees_unchanged():
    one_backend, many_backend = ScriptedBackend(respond), ScriptedBackend(respond)
    one, _ = synthesize(PROBLEMS, 1, one_backend)
    many, _ = synthesize(PROBLEMS, 4, many_backend)
    assert one == many and len(one) == 6
    assert len(many_backend.calls) < len(one_backend.calls) / 2
    assert max(len(call) for call in many_backend.calls) > max(len(call) for call in one_backend.calls)


def test_only_the_tree_whose_generation_fails_is_dropped():
    def poisoned(request, i):
        if "q3" in request.messages[-1]["content"]:
            raise RuntimeError("CUDA error: device-side assert")
        return respond(request, i)

    done, failed = synthesize(PROBLEMS, 4, ScriptedBackend(poisoned))
    assert set(done) == {"q0", "q1", "q2", "q4", "q5"}
    assert list(failed) == ["q3"] and "CUDA error" in failed["q3"]


def test_a_search_that_raises_is_reported_failed():
    def broken(request, i):
        return None if "q1" in request.messages[-1]["content"] else respond(request, i)  # not a string

    done, failed = synthesize(PROBLEMS[:3], 3, ScriptedBackend(broken))
    assert set(done) == {"q0", "q2"} and set(failed) == {"q1"}


def test_a_streaming_engine_gives_the_same_trees_without_waiting_for_other_trees():
    # q0's completions take 8 engine steps, everyone else's 1. In lockstep ticks q0's partner
    # waits for it every tick; streamed, the other trees all finish while q0 decodes, so the run
    # lasts exactly as long as q0's own chain of requests.
    def cost(request):
        return 8 if "q0" in request.messages[-1]["content"] else 1

    alone = ScriptedBackend(respond)
    synthesize(PROBLEMS[:1], 1, alone)
    ticks, streamed = ScriptedBackend(respond, cost), StreamingScriptedBackend(respond, cost)
    lockstep, _ = synthesize(PROBLEMS, 2, ticks)
    continuous, failed = synthesize(PROBLEMS, 2, streamed)
    assert continuous == lockstep and len(continuous) == 6 and not failed
    assert streamed.steps == 8 * len(alone.calls) < ticks.steps


def test_a_request_the_streaming_engine_refuses_fails_its_tree_only():
    def refused(request, i):
        if "q2" in request.messages[-1]["content"]:
            raise ValueError("prompt longer than max_model_len")
        return respond(request, i)

    done, failed = synthesize(PROBLEMS, 3, StreamingScriptedBackend(refused))
    assert set(done) == {"q0", "q1", "q3", "q4", "q5"}
    assert list(failed) == ["q2"] and "max_model_len" in failed["q2"]


def test_trees_with_short_requests_are_served_before_long_rollouts():
    # One engine call lasts as long as its longest row: a one-token forced answer or a 256-token
    # step batched with a 1024-token rollout would wait for the rollout. Short trees (at most half
    # the longest horizon) go first, on their own; the rollout tree stays parked for the next call.
    from medsss.generation.base import GenerationRequest
    from medsss.search.scheduler import _Live, _short_first

    messages = ({"role": "user", "content": "q"},)
    forced = _Live(problem(pid="f"), None, [GenerationRequest(messages, choices=("A", "B"))])
    rollout = _Live(problem(pid="r"), None, [GenerationRequest(messages, max_tokens=1024)])
    step = _Live(problem(pid="s"), None, [GenerationRequest(messages, max_tokens=256)])
    finish = _Live(problem(pid="x"), None, [GenerationRequest(messages, max_tokens=600)])
    assert _short_first([rollout, forced, step, finish]) == ([forced, step], [rollout, finish])
    # 600 is more than half of 1024: served with the rollout.
    assert _short_first([rollout, finish]) == ([rollout, finish], [])
    assert _short_first([]) == ([], [])
