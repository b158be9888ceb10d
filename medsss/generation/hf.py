"""The transformers backend: batched, left-padded generation that runs anywhere, CPU included.

All requests of a ``generate`` call share engine calls, whatever their settings (each row has its
own temperature, top-p, token limit, stop strings and choices); each request's ``n`` samples are
separate rows that share one prefill. Rows are sorted by prompt length before chunking so a
chunk pads little. The decode loop is our own (model forwards with a ``DynamicCache``) so it can
share prefills, drop finished rows and sample without sorting the vocabulary.

Seeds: each row draws its random numbers from a counter-based stream keyed by its request's seed
and its sample index (:class:`~medsss.generation.sampling.RowStreams`), so a request's samples
are the same alone or batched with any others. A request with ``seed=None`` gets a seed from the
backend's own stream, seeded once at construction (``seed``): such requests are reproducible
for the same sequence of ``generate`` calls on a fresh backend, not across different ones.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar, cast

import torch
from transformers import DynamicCache, StopStringCriteria
from transformers.cache_utils import DynamicLayer

from medsss.generation.base import (
    ChoiceTokens,
    Completion,
    FinishReason,
    GenerationRequest,
    GenerationStats,
    cut_at_stop,
)
from medsss.generation.dtype import choose_dtype
from medsss.generation.kv_cache import PreallocatedLayer, preallocated_cache
from medsss.generation.models import ModelSpec
from medsss.generation.sampling import RowStreams, sample_next_tokens

if TYPE_CHECKING:
    from transformers import PreTrainedModel

GROUPED_ATTENTION = "medsss_grouped_sdpa"

_K = TypeVar("_K")
_V = TypeVar("_V")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """A dtype name as a torch dtype, with ``auto`` decided without measuring. Used by the training
    stages (``stage.dtype``) and PRM scoring (``stage.prm.dtype``); the policy this backend loads
    goes through :func:`medsss.generation.dtype.choose_dtype` instead (the measured CPU probe)."""
    if name == "auto":
        # bfloat16 on GPUs; float32 on every CPU (unmeasured: bfloat16 attention is slow on some).
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"model.dtype '{name}' must be one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


class _LRU(OrderedDict[_K, _V]):
    """A dict that forgets its least recently written entries beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: _K, value: _V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


@dataclass
class _Prefix:
    """The KV cache of one conversation's chat prompt (batch 1, true positions 0..P-1)."""

    ids: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


class HFBackend:
    """Generation with ``transformers`` models through our own batched decode loop (not
    ``transformers``' ``generate``): prefix KV cache, per-row seeds, grouped-query decode attention;
    see docs/architecture.md#the-hf-backend."""

    def __init__(
        self,
        model: ModelSpec,
        device: str = "auto",
        max_batch_size: int = 64,
        num_threads: int | None = None,
        prefix_cache_size: int = 32,
        seed: int = 0,
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
        self._unseeded = random.Random(seed)  # seeds for requests without one, in arrival order
        path = model.resolve()
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model.trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=choose_dtype(model, device),
            trust_remote_code=model.trust_remote_code,
        )
        if model.adapter:
            from peft import PeftModel

            # Merged once at load: generation then runs at the base model's speed.
            self.model = PeftModel.from_pretrained(self.model, model.adapter).merge_and_unload()
        # transformers decorates PreTrainedModel.to with functools.wraps, which mistypes its parameters.
        self.model = self.model.to(device)  # type: ignore[arg-type]  # wraps() mistypes the device
        self.model.eval()
        use_grouped_attention(self.model)
        eos = self.model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self._eos_ids.add(self.tokenizer.eos_token_id)
        self._choice_tokens = ChoiceTokens(self.tokenizer, model.id)
        # Per-conversation caches are bounded: a long run sees every problem once.
        self._chat_cache: _LRU[tuple[tuple[str, str], ...], str] = _LRU(4096)
        self._chat_ids: _LRU[tuple[tuple[str, str], ...], list[int]] = _LRU(4096)
        self._split_exact: _LRU[tuple[str, str], bool] = _LRU(4096)
        self._stop_cache: dict[tuple[str, ...], StopStringCriteria] = {}
        self.prefix_cache_size = prefix_cache_size
        self._prefix_cache: OrderedDict[tuple[tuple[str, str], ...], _Prefix] = OrderedDict()
        # Splicing cached keys in, and pre-allocating room, assume plain full-attention layers
        # (no sliding windows or linear attention); other models use DynamicCache as it is.
        probe = DynamicCache(config=self.model.config)
        self._plain_attention = (all(type(layer) is DynamicLayer for layer in probe.layers)
                                 and bool(probe.layers))
        self._num_layers = len(probe.layers)

    # -- prompts ---------------------------------------------------------------------------------

    @staticmethod
    def _messages_key(request: GenerationRequest) -> tuple[tuple[str, str], ...]:
        return tuple((m["role"], m["content"]) for m in request.messages)

    def chat_text(self, request: GenerationRequest) -> str:
        """The chat template with an open assistant turn (cached per conversation)."""
        return self._chat(self._messages_key(request))

    def _chat(self, conversation: tuple[tuple[str, str], ...]) -> str:
        chat = self._chat_cache.get(conversation)
        if chat is None:
            messages = [{"role": role, "content": content} for role, content in conversation]
            # tokenize=False gives the text (transformers' return type covers every mode)
            chat = cast(str, self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                                add_generation_prompt=True))
            self._chat_cache[conversation] = chat
        return chat

    def prompt_text(self, request: GenerationRequest) -> str:
        """The exact text the model sees: the chat prompt, then the pre-filled assistant text."""
        return self.chat_text(request) + request.prefill

    # -- generation ------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """Every request shares the engine calls, whatever its sampling settings: each row
        carries its own temperature, top-p, token limit, stop strings and choices."""
        results: list[list[Completion | None]] = [[None] * r.n for r in requests]
        rows: list[tuple[int, int, str]] = []  # (request index, sample index, prompt text)
        seeds = [r.seed if r.seed is not None else self._unseeded.getrandbits(64) for r in requests]
        for index, request in enumerate(requests):
            if request.choices:  # fail before any engine work, naming the offending choices
                self._choice_tokens.ids(request.choices)
            text = self.prompt_text(request)
            rows.extend((index, sample, text) for sample in range(request.n))
        self.stats.requests += len(requests)

        # Sorting by prompt keeps a request's samples and a problem's requests together.
        rows.sort(key=lambda row: (len(row[2]), row[2]))
        for start in range(0, len(rows), self.max_batch_size):
            chunk = rows[start : start + self.max_batch_size]
            completions = self._generate_chunk(
                [t for _, _, t in chunk],
                [requests[i] for i, _, _ in chunk],
                RowStreams([seeds[i] for i, _, _ in chunk], [sample for _, sample, _ in chunk]),
            )
            for (i, sample, _), completion in zip(chunk, completions, strict=True):
                results[i][sample] = completion
        return [[c for c in row if c is not None] for row in results]

    @torch.inference_mode()
    def _generate_chunk(
        self, texts: list[str], settings: list[GenerationRequest], streams: RowStreams
    ) -> list[Completion]:
        """Decode one chunk of rows: ``texts[row]`` is its prompt, ``settings[row]`` its request
        (sampling settings, token limit, stop strings, choices) and ``streams`` its random stream.

        Identical prompts (the ``n`` samples of a request) are prefilled once, the chat prompt of
        each conversation comes from the prefix cache, finished rows are dropped from the batch
        as they accumulate, and sampling is sort-free (see :mod:`medsss.generation.sampling`).
        A row with choices gets exactly one token, one that spells one of its choices.
        """
        started = time.perf_counter()
        n_rows = len(texts)
        limits = [1 if r.choices else r.max_tokens for r in settings]
        stops = [() if r.choices else r.stop for r in settings]
        temperature = torch.tensor([r.temperature for r in settings], device=self.device)
        top_p = torch.tensor([r.top_p for r in settings], device=self.device)

        unique: dict[str, int] = {}
        row_prompt = [unique.setdefault(text, len(unique)) for text in texts]
        unique_conversations: list[tuple[tuple[str, str], ...]] = [()] * len(unique)
        for text, request in zip(texts, settings, strict=True):
            unique_conversations[unique[text]] = self._messages_key(request)
        cache, logits, prompt_lengths, mask, computed = self._prefill(
            list(unique), unique_conversations, max(limits)
        )
        select = torch.tensor(row_prompt, device=self.device)
        cache.batch_select_indices(select)
        logits = logits[select]
        mask = mask[select]
        next_position = prompt_lengths[select]
        if any(r.choices for r in settings):
            allowed = [self._choice_tokens.ids(r.choices) if r.choices else None for r in settings]
            logits = _only(logits, allowed)

        active = torch.arange(n_rows, device=self.device)  # original row of each batch slot
        tokens: list[list[int]] = [[] for _ in range(n_rows)]
        reasons: list[FinishReason] = ["length"] * n_rows
        done = [False] * n_rows
        generated = torch.empty(n_rows, 0, dtype=torch.long, device=self.device)
        eos = torch.tensor(sorted(self._eos_ids), device=self.device)

        for step in range(max(limits)):
            next_tokens = sample_next_tokens(logits, temperature, top_p, streams=streams, step=step)
            generated = torch.cat([generated, next_tokens[:, None]], dim=1)
            # One conversion per step; per-element tensor indexing would dominate small models.
            step_rows, step_tokens = active.tolist(), next_tokens.tolist()
            step_eos = torch.isin(next_tokens, eos).tolist()
            step_stop = self._stopped(generated, [stops[row] for row in step_rows])
            for slot, row in enumerate(step_rows):
                if done[row]:
                    continue
                tokens[row].append(step_tokens[slot])
                if step_eos[slot]:
                    reasons[row], done[row] = "eos", True
                elif step_stop[slot]:
                    reasons[row], done[row] = "stop", True
                elif len(tokens[row]) == limits[row]:
                    done[row] = True  # reason stays "length"
            live = torch.tensor([not done[row] for row in step_rows], device=self.device)
            if not live.any():
                break
            # Drop finished rows once they are a quarter of the batch: copying the cache costs
            # about as much as a few decode steps of the dead rows.
            if (~live).sum() * 4 >= live.numel():
                keep = torch.nonzero(live).flatten()
                cache.batch_select_indices(keep)
                active, next_tokens, mask = active[keep], next_tokens[keep], mask[keep]
                temperature, top_p, streams = temperature[keep], top_p[keep], streams.select(keep)
                next_position, generated = next_position[keep], generated[keep]
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            out = self.model(
                input_ids=next_tokens[:, None], attention_mask=mask, position_ids=next_position[:, None],
                past_key_values=cache, use_cache=True,
            )
            logits = out.logits[:, -1, :]
            next_position = next_position + 1

        completions = []
        for row, request in enumerate(settings):
            # One row of ids decodes to one text (transformers' return type covers batches too).
            reason: FinishReason
            if request.choices:  # one allowed token: never eos, never cut
                text, reason = cast(str, self.tokenizer.decode(tokens[row])), "stop"
            else:
                body = tokens[row][:-1] if reasons[row] == "eos" else tokens[row]
                decoded = cast(str, self.tokenizer.decode(body, skip_special_tokens=True))
                text, stopped = cut_at_stop(decoded, request.stop)
                reason = "stop" if stopped else reasons[row]
            completions.append(
                Completion(text=text, finish_reason=reason,
                           prompt_tokens=int(prompt_lengths[row_prompt[row]]),
                           generated_tokens=len(tokens[row]))
            )
        self.stats.calls += 1
        self.stats.sequences += n_rows
        self.stats.batch_sizes.append(n_rows)
        self.stats.prompt_tokens += sum(c.prompt_tokens for c in completions)
        # Prompt tokens not computed for a row: its chat prefix came from the prefix cache, or
        # another sample of the same prompt computed it.
        self.stats.cached_prompt_tokens += sum(c.prompt_tokens for c in completions) - computed
        self.stats.generated_tokens += sum(c.generated_tokens for c in completions)
        self.stats.generate_seconds += time.perf_counter() - started
        return completions

    def _stopped(self, generated: torch.Tensor, stops: list[tuple[str, ...]]) -> list[bool]:
        """Whether each batch row's tokens so far end in one of its own stop strings.

        Rows are checked in groups that share a set of stop strings (one vectorised check each)."""
        stopped = [False] * len(stops)
        groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for slot, stop in enumerate(stops):
            if stop:
                groups[stop].append(slot)
        for stop, slots in groups.items():
            if len(slots) == len(stops):
                rows = generated
            else:
                rows = generated[torch.tensor(slots, device=generated.device)]
            for slot, hit in zip(slots, self._stop_criteria(stop)(rows, None).tolist(), strict=True):
                stopped[slot] = hit
        return stopped

    def _prefix(self, conversations: list[tuple[tuple[str, str], ...]]) -> tuple[list[_Prefix | None], int]:
        """KV caches of the chat prompts of ``conversations``, computing the missing ones.

        Also returns how many prefix tokens had to be computed now."""
        if not self.prefix_cache_size or not self._plain_attention:
            return [None] * len(conversations), 0
        computed = 0
        missing = list(dict.fromkeys(c for c in conversations if c not in self._prefix_cache))
        if missing:
            texts = [self._chat(c) for c in missing]
            encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            ids, mask = encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)
            cache = DynamicCache(config=self.model.config)
            self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                       past_key_values=cache, use_cache=True, logits_to_keep=1)
            filled: list[tuple[torch.Tensor, torch.Tensor]] = []
            for layer in cache.layers:  # _plain_attention: DynamicLayers, filled by the forward above
                assert isinstance(layer, DynamicLayer) and layer.keys is not None and layer.values is not None
                filled.append((layer.keys, layer.values))
            for row, conversation in enumerate(missing):
                pad = int((mask[row] == 0).sum())
                self._prefix_cache[conversation] = _Prefix(
                    ids=ids[row, pad:].tolist(),
                    keys=[keys[row : row + 1, :, pad:].clone() for keys, _ in filled],
                    values=[values[row : row + 1, :, pad:].clone() for _, values in filled],
                )
                computed += len(self._prefix_cache[conversation].ids)
        found: list[_Prefix | None] = []
        for conversation in conversations:
            self._prefix_cache.move_to_end(conversation)
            found.append(self._prefix_cache[conversation])
        while len(self._prefix_cache) > max(self.prefix_cache_size, len(set(conversations))):
            self._prefix_cache.popitem(last=False)
        return found, computed

    def _tokenize(self, texts: list[str],
                  conversations: list[tuple[tuple[str, str], ...]]) -> list[list[int]]:
        """Token ids of whole prompts, tokenizing each chat prompt once and then only prefills.

        Splitting is exact when no pre-token spans the chat/prefill boundary, which depends only
        on the characters around it: each boundary shape is checked once against tokenizing the
        whole text, and shapes that differ (e.g. SentencePiece's leading space) fall back to it.
        """
        tokenize = self.tokenizer
        prefills = [text[len(self._chat(c)) :] for text, c in zip(texts, conversations, strict=True)]
        prefill_ids = tokenize(prefills, add_special_tokens=False)["input_ids"] if texts else []
        full = []
        for text, conversation, prefill, ids in zip(texts, conversations, prefills, prefill_ids, strict=True):
            chat = self._chat(conversation)
            chat_ids = self._chat_ids.get(conversation)
            if chat_ids is None:
                chat_ids = tokenize(chat, add_special_tokens=False)["input_ids"]
                self._chat_ids[conversation] = chat_ids
            boundary = (chat[-16:], prefill[:16])
            exact = self._split_exact.get(boundary)
            if exact is None:
                exact = self._split_exact[boundary] = (
                    tokenize(text, add_special_tokens=False)["input_ids"] == chat_ids + ids
                )
            full.append(chat_ids + ids if exact else tokenize(text, add_special_tokens=False)["input_ids"])
        return full

    def _prefill(self, texts: list[str], conversations: list[tuple[tuple[str, str], ...]],
                 max_new_tokens: int):
        """Run the prompts of ``texts`` through the model, reusing cached chat prefixes.

        The batch cache is laid out ``[pad][prefix][pad][suffix]`` per row: padding may sit in the
        middle because the attention mask and explicit position ids make it invisible, and the
        cached prefix keys were rotated at their true positions 0..P-1.
        Returns the cache, last-token logits, prompt lengths, the attention mask, and how many
        prompt tokens were computed (suffixes, plus prefixes missing from the cache).
        """
        full = self._tokenize(texts, conversations)
        prefixes, prefix_computed = self._prefix(conversations)
        # A prefix is usable when the whole prompt's tokens start with it and something follows.
        prefixes = [
            p if p is not None and len(ids) > len(p.ids) and ids[: len(p.ids)] == p.ids else None
            for p, ids in zip(prefixes, full, strict=True)
        ]
        prefix_lengths = [len(p.ids) if p else 0 for p in prefixes]
        suffixes = [ids[n:] for ids, n in zip(full, prefix_lengths, strict=True)]
        width_p, width_s = max(prefix_lengths), max(len(s) for s in suffixes)
        pad_id = self.tokenizer.pad_token_id
        batch = len(texts)

        suffix_ids = torch.full((batch, width_s), pad_id, dtype=torch.long)
        mask = torch.zeros(batch, width_p + width_s, dtype=torch.long)
        positions = torch.zeros(batch, width_s, dtype=torch.long)
        for row, (n, suffix) in enumerate(zip(prefix_lengths, suffixes, strict=True)):
            suffix_ids[row, width_s - len(suffix) :] = torch.tensor(suffix)
            mask[row, width_p - n : width_p] = 1
            mask[row, width_p + width_s - len(suffix) :] = 1
            positions[row, width_s - len(suffix) :] = torch.arange(n, n + len(suffix))
        suffix_ids, mask = suffix_ids.to(self.device), mask.to(self.device)
        positions = positions.to(self.device)

        cache = (
            preallocated_cache(self._num_layers, width_p + width_s + max_new_tokens)
            if self._plain_attention
            else DynamicCache(config=self.model.config)
        )
        if width_p:  # only when prefix caching is on, so the layers are PreallocatedLayer
            for index, layer in enumerate(cache.layers):
                assert isinstance(layer, PreallocatedLayer)
                layer.place_prefixes(
                    [p.keys[index] if p else None for p in prefixes],
                    [p.values[index] if p else None for p in prefixes],
                    width_p,
                )
        out = self.model(input_ids=suffix_ids, attention_mask=mask, position_ids=positions,
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        lengths = torch.tensor([len(ids) for ids in full], device=self.device)
        computed = sum(len(s) for s in suffixes) + prefix_computed
        return cache, out.logits[:, -1, :], lengths, mask, computed

    def _stop_criteria(self, stop: tuple[str, ...]):
        # Building the criteria embeds the whole vocabulary (~0.5 s for 49k tokens); it is
        # stateless across calls, so build it once per set of stop strings.
        criteria = self._stop_cache.get(stop)
        if criteria is None:
            criteria = StopStringCriteria(self.tokenizer, list(stop))
            self._stop_cache[stop] = criteria
        return criteria

    def close(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _only(logits: torch.Tensor, allowed: list[list[int] | None]) -> torch.Tensor:
    """``logits`` with every token outside its row's ``allowed`` ids at -inf (rows with None
    keep every token): argmax and sampling (temperature, top-p) then act on the allowed tokens'
    distribution alone."""
    keep = torch.zeros(logits.shape, dtype=torch.bool)
    for row, ids in enumerate(allowed):
        keep[row, slice(None) if ids is None else ids] = True
    return logits.masked_fill(~keep.to(logits.device), float("-inf"))


def grouped_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa`` attention without copying grouped KV heads.

    With a padding mask, transformers' sdpa expands each KV head to its query heads on every call
    (``repeat_kv``: a copy of the whole cache per layer and step). Decode steps (one query
    position) instead fold each KV head's query heads into query positions: ``(b, kv*g, 1, d)``
    becomes ``(b, kv, g, d)``, which attends to the ``kv`` heads as they are. The result is the
    same attention; on CPUs the folded form is also the fastest bf16 kernel shape (see
    ``benchmarks/hf_attention.py``). Longer queries (prefills) use SDPA's ``enable_gqa``, which
    measured as fast as the fold there.
    Returns ``(batch, q_len, heads, head_dim)`` as every transformers attention function does.
    """
    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    one_mask_per_row = attention_mask is None or attention_mask.shape[1] == 1
    if q_len == 1 and heads != kv_heads and dropout == 0.0 and one_mask_per_row:
        # One query position: the mask is (b, 1, 1, kv_len) and broadcasts over the folded heads.
        folded = query.reshape(batch, kv_heads, heads // kv_heads, head_dim)
        out = torch.nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=attention_mask,
                                                               scale=scaling)
        return out.reshape(batch, 1, heads, head_dim), None
    causal = q_len > 1 and attention_mask is None and (is_causal if is_causal is not None
                                                       else getattr(module, "is_causal", True))
    if causal and key.shape[2] > q_len:  # as transformers' sdpa: an empty static cache's tail
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=causal,
        enable_gqa=heads != kv_heads,
    )
    return out.transpose(1, 2).contiguous(), None


def use_grouped_attention(model: PreTrainedModel) -> bool:
    """Switch a model that transformers set up with ``sdpa`` to :func:`grouped_sdpa_attention`
    (same masks, same results); models on other attention implementations are left alone.
    Returns whether the model now uses it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(GROUPED_ATTENTION, grouped_sdpa_attention)
    AttentionMaskInterface.register(GROUPED_ATTENTION, sdpa_mask)
    model.set_attn_implementation(GROUPED_ATTENTION)
    return model.config._attn_implementation == GROUPED_ATTENTION
