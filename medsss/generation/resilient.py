"""Generation that survives a faulty engine: retries with back-off, and halving on out-of-memory.

Every stage that builds a backend wraps it in :class:`ResilientBackend`
(:func:`medsss.stages.common.build_backend`, settings from the config's ``retry`` node):

- An engine call (``generate``, or a streaming backend's ``submit``) that raises is tried again, up
  to ``attempts`` tries in all, sleeping ``backoff_s``, then twice that, and so on (at most
  ``max_backoff_s``) between tries; each retry is a warning naming the exception. Nothing sleeps
  unless a call failed. When the tries are spent, :class:`RetriesExhausted` propagates, saying how
  many times the call was retried and carrying the last error's traceback: the scheduler then
  retries tree by tree and records only the problems whose requests fail, with that reason.
- An out-of-memory error (torch's ``OutOfMemoryError``, or ``MemoryError``) on a call of several
  requests is not retried as it is: the number of requests per engine call is halved, remembered
  (later calls are cut into chunks of that size too), logged once per halving, and the call goes
  on from the chunk that failed. A single request that still runs out of memory is an ordinary
  error: retried, then given up.
- Completions do not change: a seeded request's samples do not depend on what shares its engine
  call (see :mod:`medsss.generation.hf`). Requests without a seed draw theirs from the backend's
  stream, which a real call that failed part-way may already have advanced.
- Streaming: ``collect`` is passed through, not retried. A failure inside it (the engine crashed
  mid-decode) loses every ticket in flight, so it ends the run; the stores keep what finished, and
  rerunning the same command resumes.

The wrapper forwards everything else (``model_id``, ``stats``, ``close``, and attributes such as
``device`` or ``tokenizer``) to the backend it wraps. Its counters live in that backend's own
``stats`` (``retries``, ``gave_up``, ``oom_halvings``, ``batch_limit_after_oom``), so they reach
every stage's ``metrics.json`` with the other generation totals.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from medsss.generation.base import Backend, Completion, GenerationRequest, StreamingBackend

log = logging.getLogger(__name__)

_Result = TypeVar("_Result")


class RetriesExhausted(RuntimeError):
    """An engine call that failed on every try. Raised with the last error's traceback (and chained
    to it), so a failure report points where the engine failed."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says the engine ran out of memory (CUDA's, or the Python heap's)."""
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")  # a torch error needs torch loaded: never import it here
    return torch is not None and isinstance(error, torch.cuda.OutOfMemoryError)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _release_cuda_cache() -> None:
    """Hand the blocks the failed call cached back to the CUDA allocator before trying smaller."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class BackendWrapper:
    """A backend around another: every call and attribute goes to ``backend`` unless a subclass
    overrides it. ``streaming`` is true only when the wrapped backend streams."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.model_id = backend.model_id
        self.stats = backend.stats  # the same object: the wrapped backend keeps adding to it
        self.streaming = isinstance(backend, StreamingBackend) and bool(backend.streaming)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        return self.backend.generate(requests)

    def submit(self, requests: Sequence[GenerationRequest]) -> int:
        return self._streaming_backend().submit(requests)

    def collect(self) -> list[tuple[int, list[list[Completion]]]]:
        return self._streaming_backend().collect()

    def close(self) -> None:
        self.backend.close()

    def _streaming_backend(self) -> StreamingBackend:
        if not isinstance(self.backend, StreamingBackend):
            raise TypeError(f"{type(self.backend).__name__} does not stream: it has no submit/collect")
        return self.backend

    def __getattr__(self, name: str) -> Any:
        # Called only for attributes this object lacks; "backend" itself is missing only while
        # unpickling or before __init__, where forwarding would recurse.
        if name == "backend":
            raise AttributeError(name)
        return getattr(self.backend, name)


class ResilientBackend(BackendWrapper):
    """``backend`` with engine calls retried with exponential back-off, and batches halved when the
    engine runs out of memory (see the module docstring). ``sleep`` is how it waits (tests pass a
    recorder)."""

    def __init__(
        self,
        backend: Backend,
        attempts: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"retry attempts must be at least 1 (1: no retries), got {attempts}")
        if backoff_s < 0 or max_backoff_s < 0:
            raise ValueError(
                f"retry back-off must be >= 0 s, got backoff_s={backoff_s}, max_backoff_s={max_backoff_s}"
            )
        super().__init__(backend)
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.sleep = sleep
        self.batch_limit: int | None = None  # requests per engine call, once an OOM lowered it

    def delay(self, failed_tries: int) -> float:
        """Seconds to wait after the ``failed_tries``-th failed try: backoff_s, 2 x backoff_s, ...
        at most max_backoff_s."""
        return min(self.backoff_s * 2 ** (failed_tries - 1), self.max_backoff_s)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """The wrapped backend's completions, in request order, in chunks of at most
        ``batch_limit`` requests once an out-of-memory error set it."""
        pending = list(requests)
        results: list[list[Completion]] = []
        start = 0
        while start < len(pending):
            size = min(self.batch_limit or len(pending), len(pending) - start)
            chunk = pending[start : start + size]
            try:
                results.extend(self._tried(self.backend.generate, chunk, "generate", halvable=size > 1))
            except Exception as error:
                if size == 1 or not is_out_of_memory(error):
                    raise
                self._halve(size, error)
                continue  # the same chunk again, in smaller pieces
            start += size
        return results

    def submit(self, requests: Sequence[GenerationRequest]) -> int:
        """A streaming backend's ``submit``, retried like ``generate`` (a ticket is never split)."""
        return self._tried(self._streaming_backend().submit, list(requests), "submit", halvable=False)

    def _tried(
        self,
        call: Callable[[list[GenerationRequest]], _Result],
        requests: list[GenerationRequest],
        what: str,
        halvable: bool,
    ) -> _Result:
        """``call(requests)``, tried up to ``attempts`` times; an out-of-memory error propagates at
        once when the caller can halve the batch instead."""
        for tries in range(1, self.attempts + 1):
            try:
                return call(requests)
            except Exception as error:
                if halvable and is_out_of_memory(error):
                    raise
                if tries == self.attempts:
                    self.stats.gave_up += 1
                    cause = f"{type(error).__name__}: {error}"
                    raise RetriesExhausted(
                        f"{what} of {_count(len(requests), 'request')} failed {_count(tries, 'time')} "
                        f"(retried {_count(tries - 1, 'time')} with back-off): {cause}"
                    ).with_traceback(error.__traceback__) from error
                wait = self.delay(tries)
                self.stats.retries += 1
                log.warning(
                    "%s of %s failed (try %d of %d): %s: %s; retrying in %.3g s",
                    what,
                    _count(len(requests), "request"),
                    tries,
                    self.attempts,
                    type(error).__name__,
                    error,
                    wait,
                )
                if is_out_of_memory(error):
                    _release_cuda_cache()
                self.sleep(wait)
        raise AssertionError("unreachable: the last try returns or raises")

    def _halve(self, size: int, error: BaseException) -> None:
        self.batch_limit = (size + 1) // 2
        self.stats.oom_halvings += 1
        self.stats.batch_limit_after_oom = self.batch_limit
        log.warning(
            "out of memory generating %d requests in one engine call (%s: %s): halving the batch, "
            "at most %d requests per engine call from now on",
            size,
            type(error).__name__,
            error,
            self.batch_limit,
        )
        _release_cuda_cache()
