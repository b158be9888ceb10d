"""The transformers backend on the tiny model: parity with transformers' generate, counts, stops, seeds."""

from __future__ import annotations

import pytest
import torch

from medsss.data.prompts import STEP_ZERO, build_messages, continuation_prefill
from medsss.generation.base import GenerationRequest

QUESTIONS = [
    "A 3-year-old has a barking cough. Most likely cause?\nA. RSV\nB. Parainfluenza virus",
    "Which vitamin deficiency causes scurvy?\nA. Vitamin A\nB. Vitamin C\nC. Vitamin D",
    "First-line drug for anaphylaxis?\nA. Epinephrine",
]


def greedy(question: str, prefill: str = "", max_tokens: int = 12, **kw) -> GenerationRequest:
    return GenerationRequest(build_messages(question, "Be brief."), prefill, n=1, temperature=0.0,
                             max_tokens=max_tokens, **kw)


def reference_greedy(backend, request: GenerationRequest) -> str:
    """transformers' own generate, one unpadded prompt at a time."""
    encoded = backend.tokenizer([backend.prompt_text(request)], return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = backend.model.generate(**encoded, max_new_tokens=request.max_tokens, do_sample=False,
                                     pad_token_id=backend.tokenizer.pad_token_id)
    return backend.tokenizer.decode(out[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)


def test_batched_greedy_matches_transformers_generate_token_for_token(tiny_backend):
    prefill = continuation_prefill([STEP_ZERO])
    requests = [greedy(q, prefill) for q in QUESTIONS] + [greedy(QUESTIONS[0], prefill + " The")]
    ours = [row[0].text for row in tiny_backend.generate(requests)]
    assert ours == [reference_greedy(tiny_backend, r) for r in requests]


def test_prefix_cache_hits_give_the_same_tokens_and_count_as_cached(tiny_backend):
    requests = [greedy(q, continuation_prefill([STEP_ZERO, "Think."])) for q in QUESTIONS]
    first = [row[0].text for row in tiny_backend.generate(requests)]
    cached_before = tiny_backend.stats.cached_prompt_tokens
    second = [row[0].text for row in tiny_backend.generate(requests)]
    assert first == second
    chat_tokens = [len(tiny_backend.tokenizer(tiny_backend.chat_text(r), add_special_tokens=False)["input_ids"])
                   for r in requests]
    assert tiny_backend.stats.cached_prompt_tokens - cached_before == sum(chat_tokens)


def test_n_samples_and_token_counts(tiny_backend):
    request = GenerationRequest(build_messages(QUESTIONS[1], None), "Step 0:", n=3, temperature=1.0,
                                top_p=0.95, max_tokens=7, seed=11)
    [samples] = tiny_backend.generate([request])
    prompt_tokens = len(tiny_backend.tokenizer(tiny_backend.prompt_text(request), add_special_tokens=False)["input_ids"])
    assert len(samples) == 3
    for sample in samples:
        assert sample.prompt_tokens == prompt_tokens
        if sample.finish_reason == "length":
            assert sample.generated_tokens == 7
        else:
            assert sample.finish_reason == "eos" and 1 <= sample.generated_tokens <= 7


def test_stop_strings_cut_the_text_before_the_stop(tiny_backend):
    prefill = continuation_prefill([STEP_ZERO])
    free = tiny_backend.generate([greedy(QUESTIONS[2], prefill, max_tokens=16)])[0][0].text
    start = next(i for i, ch in enumerate(free) if i >= 4 and not ch.isspace())
    stop = free[start : start + 3]
    cut = tiny_backend.generate([greedy(QUESTIONS[2], prefill, max_tokens=16, stop=(stop,))])[0][0]
    assert cut.finish_reason == "stop"
    assert cut.text == free[: free.index(stop)]
    assert stop not in cut.text


def test_seeds_make_sampling_reproducible(tiny_backend):
    def sample(seed):
        request = GenerationRequest(build_messages(QUESTIONS[0], None), "", n=2, temperature=1.0, top_p=0.9,
                                    max_tokens=10, seed=seed)
        return [c.text for c in tiny_backend.generate([request])[0]]

    assert sample(5) == sample(5)
    assert sample(5) != sample(6)


def test_stats_accumulate_calls_sequences_and_batch_sizes(tiny_backend):
    before = (tiny_backend.stats.calls, tiny_backend.stats.sequences)
    requests = [GenerationRequest(build_messages(q, None), "", n=2, temperature=0.7, max_tokens=3, seed=1)
                for q in QUESTIONS]
    tiny_backend.generate(requests)
    assert tiny_backend.stats.calls == before[0] + 1  # one sampling setting: one engine call
    assert tiny_backend.stats.sequences == before[1] + 6
    assert tiny_backend.stats.batch_sizes[-1] == 6


@pytest.mark.slow
def test_embedded_model_greedy_matches_transformers_generate():
    from medsss.generation.hf import HFBackend
    from medsss.generation.models import EMBEDDED_SMOLLM2, ModelSpec

    backend = HFBackend(ModelSpec(id="smollm2", source=EMBEDDED_SMOLLM2, dtype="float32"), device="cpu")
    requests = [greedy(q, continuation_prefill([STEP_ZERO]), max_tokens=16) for q in QUESTIONS]
    assert [row[0].text for row in backend.generate(requests)] == [reference_greedy(backend, r) for r in requests]
