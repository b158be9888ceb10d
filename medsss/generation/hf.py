"""The transformers backend: batched, left-padded generation that runs anywhere, CPU included.

Requests with the same sampling settings share engine calls; each request's ``n`` samples are
separate rows. Rows are sorted by prompt length before chunking so a chunk pads little.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Sequence

import torch

from medsss.generation.base import Completion, GenerationRequest, GenerationStats, cut_at_stop
from medsss.generation.models import ModelSpec

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        # bfloat16 is the fast path on GPUs and on CPUs with AMX/AVX512-BF16; float32 elsewhere.
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"model.dtype '{name}' must be one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


class HFBackend:
    """Generation with ``transformers``' ``generate``."""

    def __init__(
        self,
        model: ModelSpec,
        device: str = "auto",
        max_batch_size: int = 64,
        num_threads: int | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = device
        self.model_id = model.id
        self.max_batch_size = max_batch_size
        self.stats = GenerationStats()
        path = model.resolve()
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model.trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=resolve_dtype(model.dtype, device),
            trust_remote_code=model.trust_remote_code,
        ).to(device)
        self.model.eval()
        eos = self.model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self._eos_ids.add(self.tokenizer.eos_token_id)
        self._chat_cache: dict[tuple[tuple[str, str], ...], str] = {}

    # -- prompts ---------------------------------------------------------------------------------

    def prompt_text(self, request: GenerationRequest) -> str:
        """The exact text the model sees: chat template with an open assistant turn, then prefill."""
        key = tuple((m["role"], m["content"]) for m in request.messages)
        chat = self._chat_cache.get(key)
        if chat is None:
            chat = self.tokenizer.apply_chat_template(
                list(request.messages), tokenize=False, add_generation_prompt=True
            )
            self._chat_cache[key] = chat
        return chat + request.prefill

    # -- generation ------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        results: list[list[Completion | None]] = [[None] * r.n for r in requests]
        groups: dict[tuple, list[tuple[int, int, str]]] = defaultdict(list)
        for index, request in enumerate(requests):
            text = self.prompt_text(request)
            for sample in range(request.n):
                groups[request.sampling_key()].append((index, sample, text))
        self.stats.requests += len(requests)

        for key, rows in groups.items():
            rows.sort(key=lambda row: len(row[2]))
            for start in range(0, len(rows), self.max_batch_size):
                chunk = rows[start : start + self.max_batch_size]
                seeds = [requests[i].seed for i, _, _ in chunk]
                completions = self._generate_chunk([t for _, _, t in chunk], requests[chunk[0][0]], seeds)
                for (i, sample, _), completion in zip(chunk, completions):
                    results[i][sample] = completion
        return [[c for c in row if c is not None] for row in results]

    @torch.inference_mode()
    def _generate_chunk(
        self, texts: list[str], settings: GenerationRequest, seeds: list[int | None]
    ) -> list[Completion]:
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        encoded = encoded.to(self.device)
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
        if any(s is not None for s in seeds):
            # One generator per call: the chunk's samples are reproducible given its seeds.
            digest = hashlib.sha1(repr(seeds).encode()).digest()
            torch.manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)
        sampling = settings.temperature > 0
        kwargs = {
            "max_new_tokens": settings.max_tokens,
            "do_sample": sampling,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if sampling:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
        if settings.stop:
            kwargs.update(stop_strings=list(settings.stop), tokenizer=self.tokenizer)
        started = time.perf_counter()
        output = self.model.generate(**encoded, **kwargs)
        elapsed = time.perf_counter() - started

        new_tokens = output[:, encoded["input_ids"].shape[1] :].tolist()
        completions = []
        for tokens, prompt_length in zip(new_tokens, prompt_lengths):
            completions.append(self._completion(tokens, prompt_length, settings))
        self.stats.calls += 1
        self.stats.sequences += len(texts)
        self.stats.batch_sizes.append(len(texts))
        self.stats.prompt_tokens += int(sum(prompt_lengths))
        self.stats.generated_tokens += sum(c.generated_tokens for c in completions)
        self.stats.generate_seconds += elapsed
        return completions

    def _completion(self, tokens: list[int], prompt_length: int, settings: GenerationRequest) -> Completion:
        # Finished rows are padded with the pad id, which is often the eos id: the first eos (or
        # pad) ends the sample.
        end = next((i for i, t in enumerate(tokens) if t in self._eos_ids or t == self.tokenizer.pad_token_id), None)
        body = tokens if end is None else tokens[:end]
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, settings.stop)
        if stopped:
            reason = "stop"
        elif end is not None:
            reason = "eos"
        else:
            reason = "length"
        generated = len(body) + (1 if reason == "eos" else 0)
        return Completion(text=text, finish_reason=reason, prompt_tokens=prompt_length, generated_tokens=generated)

    def close(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
