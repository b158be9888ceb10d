"""The transformers backend on the tiny model: parity with transformers' generate, counts, stops,
per-request seeds, constrained choices."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from medsss.data.prompts import FORCE_ANSWER_SUFFIX, STEP_ZERO, build_messages, continuation_prefill
from medsss.generation.base import ChoiceTokens, GenerationRequest

QUESTIONS = [
    "A 3-year-old has a barking cough. Most likely cause?\nA. RSV\nB. Parainfluenza virus",
    "Which vitamin deficiency causes scurvy?\nA. Vitamin A\nB. Vitamin C\nC. Vitamin D",
    "First-line drug for anaphylaxis?\nA. Epinephrine",
]


def greedy(question: str, prefill: str = "", max_tokens: int = 12, **kw) -> GenerationRequest:
    return GenerationRequest(build_messages(question, "Be brief."), prefill, n=1, temperature=0.0,
                             max_tokens=max_tokens, **kw)


def reference_greedy(backend, request: GenerationRequest) -> str:
    """transformers' own generate with its stock sdpa attention, one unpadded prompt at a time."""
    encoded = backend.tokenizer([backend.prompt_text(request)], return_tensors="pt", add_special_tokens=False)
    ours = backend.model.config._attn_implementation
    backend.model.set_attn_implementation("sdpa")
    try:
        with torch.inference_mode():
            out = backend.model.generate(**encoded, max_new_tokens=request.max_tokens, do_sample=False,
                                         pad_token_id=backend.tokenizer.pad_token_id)
    finally:
        backend.model.set_attn_implementation(ours)
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


def sampled(question: str, seed: int | None, prefill: str = "", n: int = 3,
            max_tokens: int = 10) -> GenerationRequest:
    return GenerationRequest(build_messages(question, None), prefill, n=n, temperature=1.0, top_p=0.95,
                             max_tokens=max_tokens, seed=seed)


def texts(rows) -> list[list[str]]:
    return [[c.text for c in row] for row in rows]


def test_a_requests_samples_are_the_same_alone_and_batched_with_others(tiny_backend):
    request = sampled(QUESTIONS[1], seed=21, prefill=continuation_prefill([STEP_ZERO]))
    others = [sampled(QUESTIONS[0], seed=3), sampled(QUESTIONS[2] * 3, seed=4, n=2),
              sampled(QUESTIONS[1], seed=21, prefill="Step 0: Scurvy"), sampled(QUESTIONS[0], seed=None)]
    [alone] = texts(tiny_backend.generate([request]))
    batched = texts(tiny_backend.generate([others[0], others[1], request, others[2], others[3]]))
    assert batched[2] == alone
    assert len(set(alone)) > 1  # the n samples of a request draw different numbers


def test_samples_do_not_depend_on_how_rows_are_chunked(tiny_model, tiny_backend):
    from medsss.generation.hf import HFBackend

    requests = [sampled(q, seed=i) for i, q in enumerate(QUESTIONS)]
    small_chunks = HFBackend(tiny_model, device="cpu", max_batch_size=2)
    assert texts(small_chunks.generate(requests)) == texts(tiny_backend.generate(requests))


def test_requests_with_different_settings_share_one_call_and_each_gets_what_it_gets_alone(tiny_backend):
    prefill = continuation_prefill([STEP_ZERO])
    free = tiny_backend.generate([greedy(QUESTIONS[2], prefill, max_tokens=16)])[0][0].text
    start = next(i for i, ch in enumerate(free) if i >= 4 and not ch.isspace())
    requests = [
        greedy(QUESTIONS[0], prefill, max_tokens=5),
        greedy(QUESTIONS[2], prefill, max_tokens=16, stop=(free[start : start + 3],)),
        sampled(QUESTIONS[1], seed=3, n=2, max_tokens=9),
        GenerationRequest(build_messages(QUESTIONS[0], None), "Step 0:", n=2, temperature=0.7, top_p=0.8,
                          max_tokens=12, stop=("\n",), seed=4),
        forced(QUESTIONS[1], PATHS[1], temperature=1.0, n=2, seed=5),
    ]
    def as_rows(rows):
        return [[(c.text, c.finish_reason, c.generated_tokens) for c in row] for row in rows]

    alone = [as_rows(tiny_backend.generate([r]))[0] for r in requests]
    calls = tiny_backend.stats.calls
    together = as_rows(tiny_backend.generate(requests))
    assert tiny_backend.stats.calls == calls + 1
    assert together == alone
    assert together[1][0][1] == "stop" and together[0][0][2] == 5


def test_requests_without_a_seed_follow_the_backends_seeded_stream(tiny_model):
    from medsss.generation.hf import HFBackend

    request = sampled(QUESTIONS[0], seed=None)
    first, second = HFBackend(tiny_model, device="cpu", seed=5), HFBackend(tiny_model, device="cpu", seed=5)
    calls = [texts(first.generate([request])), texts(first.generate([request]))]
    assert calls[0] != calls[1]  # the stream moves on: a new seed per request
    assert [texts(second.generate([request])), texts(second.generate([request]))] == calls


# -- constrained choices -----------------------------------------------------------------------


class FakeTokenizer:
    """Six tokens; id 0 is special."""

    vocabulary = ["<|end|>", "A", " A", "A\n", " B", " AB", "Apple"]
    all_special_ids = [0]

    def __len__(self) -> int:
        return len(self.vocabulary)

    def batch_decode(self, rows: list[list[int]]) -> list[str]:
        return ["".join(self.vocabulary[i] for i in row) for row in rows]


def test_choice_tokens_are_the_tokens_whose_stripped_text_is_a_choice():
    tokens = ChoiceTokens(FakeTokenizer(), "fake")
    assert tokens.ids(["A"]) == [1, 2, 3]
    assert tokens.ids(["A", "B"]) == [1, 2, 3, 4]
    assert tokens.ids([" AB"]) == [5]
    with pytest.raises(ValueError, match=r"\['C', 'A B'\] are not single tokens of fake's vocabulary"):
        tokens.ids(["C", "A", "A B"])


def test_choices_must_be_a_tuple_of_non_blank_strings():
    with pytest.raises(ValueError, match="tuple of strings, got the string 'ABCD'"):
        GenerationRequest(build_messages("q", None), choices="ABCD")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="blank entries"):
        GenerationRequest(build_messages("q", None), choices=("A", " "))


LETTERS = ("A", "B", "C", "D")


def forced(question: str, path: list[str], temperature: float = 0.0, n: int = 1,
           seed: int = 0) -> GenerationRequest:
    return GenerationRequest(build_messages(question, None), continuation_prefill(path) + FORCE_ANSWER_SUFFIX,
                             n=n, temperature=temperature, top_p=0.95, max_tokens=8, stop=("\n",), seed=seed,
                             choices=LETTERS)


PATHS = [[STEP_ZERO], [STEP_ZERO, "Scurvy is vitamin C deficiency."], [STEP_ZERO, "Croup.", "So"]]


def test_choices_always_give_one_of_the_letters(tiny_backend):
    requests = [forced(q, p) for q in QUESTIONS for p in PATHS]
    requests += [forced(q, p, temperature=1.0, n=4, seed=i) for i, (q, p) in enumerate(zip(QUESTIONS, PATHS, strict=True))]
    free = tiny_backend.generate([GenerationRequest(r.messages, r.prefill, temperature=0.0, max_tokens=1)
                                  for r in requests])
    assert not any(row[0].text.strip() in LETTERS for row in free)  # the random model never picks one itself
    for row in tiny_backend.generate(requests):
        for completion in row:
            assert completion.text.strip() in LETTERS
            assert (completion.generated_tokens, completion.finish_reason) == (1, "stop")


def test_greedy_choice_is_the_most_probable_allowed_token(tiny_backend):
    allowed = ChoiceTokens(tiny_backend.tokenizer).ids(LETTERS)
    for request in [forced(q, p) for q in QUESTIONS for p in PATHS]:
        ids = tiny_backend.tokenizer(tiny_backend.prompt_text(request), return_tensors="pt",
                                     add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = tiny_backend.model(input_ids=ids).logits[0, -1]
        best = allowed[int(logits[allowed].argmax())]
        assert tiny_backend.generate([request])[0][0].text == tiny_backend.tokenizer.decode([best])


def test_requests_with_different_choices_share_one_engine_call(tiny_backend):
    option_sets = [("A", "B"), ("C", "D"), ("E",), ("B", "D")]
    requests = [replace(forced(QUESTIONS[i % 3], PATHS[i % 3], temperature=1.0, n=2, seed=i), choices=options)
                for i, options in enumerate(option_sets)]
    calls = tiny_backend.stats.calls
    rows = tiny_backend.generate(requests)
    assert tiny_backend.stats.calls == calls + 1
    for options, row in zip(option_sets, rows, strict=True):
        assert [c.text.strip() in options for c in row] == [True, True]


def test_a_choice_that_is_not_one_token_is_refused_by_name(tiny_backend):
    request = GenerationRequest(build_messages(QUESTIONS[0], None), FORCE_ANSWER_SUFFIX,
                                choices=("A", "Parainfluenza virus"))
    with pytest.raises(ValueError, match="'Parainfluenza virus'\\] are not single tokens of tiny-llama"):
        tiny_backend.generate([request])


# -- grouped-query attention -------------------------------------------------------------------


class GroupedHeads(torch.nn.Module):
    """What transformers' sdpa reads from an attention module: 6 query heads over 2 KV heads."""

    num_key_value_groups = 3
    is_causal = True


@pytest.mark.parametrize("q_len,padded", [(1, True), (1, False), (5, True), (5, False)])
def test_grouped_attention_equals_transformers_sdpa(q_len, padded):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from medsss.generation.hf import grouped_sdpa_attention

    torch.manual_seed(0)
    batch, kv_len = 3, 9
    query = torch.randn(batch, 6, q_len, 16)
    key, value = torch.randn(batch, 2, kv_len, 16), torch.randn(batch, 2, kv_len, 16)
    key_buffer = torch.cat([key, torch.randn(batch, 2, 4, 16)], dim=2)  # a cache view with spare room
    mask = None
    if padded:  # row 1 has two pad positions in front; every row causal over its own tail
        causal = torch.ones(q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len)
        mask = causal.expand(batch, 1, q_len, kv_len).clone()
        mask[1, :, :, :2] = False
    elif q_len > 1:
        key, value = key[:, :, :q_len], value[:, :, :q_len]  # causal without a mask: no cached past
        key_buffer = key_buffer[:, :, : q_len + 4]
    expected, _ = sdpa_attention_forward(GroupedHeads(), query, key, value, mask, scaling=0.25)
    ours, _ = grouped_sdpa_attention(GroupedHeads(), query, key_buffer[:, :, : key.shape[2]], value, mask,
                                     scaling=0.25)
    assert ours.shape == expected.shape == (batch, q_len, 6, 16)
    assert torch.allclose(ours, expected, atol=1e-6)


def test_a_grouped_query_model_decodes_as_transformers_generate(tiny_model):
    from medsss.generation.hf import GROUPED_ATTENTION, HFBackend

    heads = {"num_attention_heads": 4, "num_key_value_heads": 2}
    grouped = replace(tiny_model, tiny={**tiny_model.tiny, **heads})
    backend = HFBackend(grouped, device="cpu")
    assert backend.model.config._attn_implementation == GROUPED_ATTENTION
    prefill = continuation_prefill([STEP_ZERO])
    requests = [greedy(q, prefill) for q in QUESTIONS] + [greedy(QUESTIONS[0], prefill + " The")]
    ours = [row[0].text for row in backend.generate(requests)]
    assert ours == [reference_greedy(backend, r) for r in requests]


@pytest.mark.slow
def test_embedded_model_greedy_matches_transformers_generate():
    from medsss.generation.hf import HFBackend
    from medsss.generation.models import EMBEDDED_SMOLLM2, ModelSpec

    backend = HFBackend(ModelSpec(id="smollm2", source=EMBEDDED_SMOLLM2, dtype="float32"), device="cpu")
    requests = [greedy(q, continuation_prefill([STEP_ZERO]), max_tokens=16) for q in QUESTIONS]
    assert [row[0].text for row in backend.generate(requests)] == [reference_greedy(backend, r) for r in requests]
