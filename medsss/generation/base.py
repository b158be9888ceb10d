"""The backend protocol: batched generation with per-request sampling settings and token counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Message = dict[str, str]
FinishReason = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt and how to sample from it.

    ``messages`` is a chat (the backend applies the model's chat template and opens an assistant
    turn); ``prefill`` is assistant text already written, which the completion continues.
    ``n`` independent samples are returned for the request.

    ``seed`` makes the request's samples reproducible: a sample depends only on the request and
    its seed (and, in ``hf``, its sample index), never on what else shares the engine call.

    ``choices`` non-empty means the completion is exactly one of these strings, each a single
    token of the vocabulary (with or without a leading space: the choice "A" allows both " A"
    and "A"). Backends generate one token restricted to those spellings; ``temperature`` 0 picks
    the most probable allowed token, otherwise it is sampled among them with ``top_p``.
    ``max_tokens`` and ``stop`` do not apply. The completion's text is the decoded token (" A"),
    with ``finish_reason`` "stop". Used to force an option letter after " The answer is".
    """

    messages: tuple[Message, ...]
    prefill: str = ""
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.choices, str):  # "ABCD" would silently mean four one-letter choices
            raise ValueError(
                f"GenerationRequest.choices must be a tuple of strings, got the string {self.choices!r}"
            )
        object.__setattr__(self, "choices", tuple(self.choices))  # a list would make the request unhashable
        blank = [c for c in self.choices if not c.strip()]
        if blank:
            raise ValueError(f"GenerationRequest.choices has blank entries {blank!r}: {self.choices!r}")


@dataclass
class Completion:
    """One sample: the text after the prefill (cut before any stop string) and its token counts."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    generated_tokens: int
    cached_prompt_tokens: int = 0


@dataclass
class GenerationStats:
    """Running totals a backend keeps; stages report them in ``metrics.json``."""

    calls: int = 0  # engine calls (one batched forward loop each)
    requests: int = 0
    sequences: int = 0  # sampled sequences (requests x n)
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)
    # Faults survived or not (medsss.generation.resilient, medsss.faults)
    retries: int = 0  # engine calls tried again after an exception
    gave_up: int = 0  # engine calls that failed on every try (the error went to the caller)
    oom_halvings: int = 0  # times an out-of-memory error halved the requests per engine call
    batch_limit_after_oom: int = 0  # requests per engine call since the last halving (0: none)
    injected_faults: int = 0  # errors raised on purpose by MEDSSS_FAULT_GENERATE

    @property
    def mean_batch_size(self) -> float:
        return sum(self.batch_sizes) / len(self.batch_sizes) if self.batch_sizes else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "generation_calls": self.calls,
            "generation_requests": self.requests,
            "generated_sequences": self.sequences,
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "generate_seconds": round(self.generate_seconds, 3),
            "mean_batch_size": round(self.mean_batch_size, 2),
            "prefix_cache_hit_rate": round(self.cached_prompt_tokens / self.prompt_tokens, 4)
            if self.prompt_tokens
            else 0.0,
            "generation_retries": self.retries,
            "generation_calls_given_up": self.gave_up,
            "oom_halvings": self.oom_halvings,
            "batch_limit_after_oom": self.batch_limit_after_oom,
            "injected_faults": self.injected_faults,
        }


@runtime_checkable
class Backend(Protocol):
    """What every generation backend provides."""

    model_id: str
    stats: GenerationStats

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """For each request, its ``n`` completions, in request order."""
        ...

    def close(self) -> None:
        """Free the engine (GPU memory, worker processes)."""
        ...


@runtime_checkable
class StreamingBackend(Backend, Protocol):
    """A backend that also takes requests while it decodes others (continuous batching).

    The scheduler submits each tree's requests as one ticket and collects whichever tickets
    finish, so a tree waiting on short completions never waits for another tree's long ones.
    ``streaming`` false makes the scheduler fall back to one ``generate`` call per tick.
    """

    streaming: bool

    def submit(self, requests: Sequence[GenerationRequest]) -> int:
        """Queue ``requests``; return a ticket that ``collect`` reports once all of them finished."""
        ...

    def collect(self) -> list[tuple[int, list[list[Completion]]]]:
        """Decode until at least one ticket has finished; return those tickets with, for each of
        their requests, its ``n`` completions in request order."""
        ...


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one occurred."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class ChoiceTokens:
    """The token ids that spell each answer choice, for one tokenizer.

    A token spells a choice when its decoded text, stripped of surrounding whitespace, equals the
    choice: for "A" that is typically " A" and "A" (and e.g. "A\n" where the vocabulary has it).
    Special tokens never count. The vocabulary is decoded once, on the first request with choices.
    """

    def __init__(self, tokenizer: Any, model_id: str = "the model") -> None:
        self._tokenizer = tokenizer
        self._model_id = model_id
        self._by_text: dict[str, list[int]] | None = None

    def _index(self) -> dict[str, list[int]]:
        if self._by_text is None:
            special = set(self._tokenizer.all_special_ids)
            ids = [i for i in range(len(self._tokenizer)) if i not in special]
            texts = self._tokenizer.batch_decode([[i] for i in ids])
            by_text: dict[str, list[int]] = {}
            for token_id, text in zip(ids, texts, strict=True):
                if text.strip():
                    by_text.setdefault(text.strip(), []).append(token_id)
            self._by_text = by_text
        return self._by_text

    def ids(self, choices: Sequence[str]) -> list[int]:
        """Sorted ids of every token that spells one of ``choices``.

        Raises ValueError naming the choices that no single token spells (multi-token choices
        are not supported: a one-token completion could not complete them)."""
        index = self._index()
        missing = [c for c in choices if c.strip() not in index]
        if missing:
            raise ValueError(
                f"choices {missing!r} are not single tokens of {self._model_id}'s vocabulary; "
                "constrained answers support one-token choices only (e.g. option letters)"
            )
        return sorted({i for c in choices for i in index[c.strip()]})
