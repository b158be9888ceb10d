"""The backend protocol: batched generation with per-request sampling settings and token counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

Message = dict[str, str]
FinishReason = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt and how to sample from it.

    ``messages`` is a chat (the backend applies the model's chat template and opens an assistant
    turn); ``prefill`` is assistant text already written, which the completion continues.
    ``n`` independent samples are returned for the request.
    """

    messages: tuple[Message, ...]
    prefill: str = ""
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def sampling_key(self) -> tuple[float, float, int, tuple[str, ...]]:
        """Requests with equal keys can share one engine call."""
        return (self.temperature, self.top_p, self.max_tokens, self.stop)


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
