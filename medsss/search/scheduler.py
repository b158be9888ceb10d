"""The cross-tree scheduler: many searches advance together, one batched engine call per tick.

Each live search is a generator (see :mod:`medsss.search.mcts`) parked on the requests it needs.
A tick gathers the parked requests of every live tree, sends them to the backend as one batch,
hands each tree its completions and parks it again. ``concurrent_trees=1`` is the
one-tree-at-a-time baseline.

With a streaming backend (vLLM) there are no ticks: each tree's requests go to the engine as soon
as the tree needs them, and a tree moves on as soon as its own completions are done, so short
step completions never wait for another tree's long rollouts and the engine's batch stays full.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from medsss.data.records import Problem
from medsss.generation.base import Backend, GenerationRequest, StreamingBackend
from medsss.search.mcts import Requests, Responses

log = logging.getLogger(__name__)

# A search-shaped generator: it yields the requests it needs, is sent their completions, and
# returns its result (a TreeSearch's SearchResult, the curriculum's PassRate, ...).
Process = Generator[Requests, Responses, Any]


@dataclass
class _Live:
    problem: Problem
    process: Process
    pending: Requests


def _describe(error: BaseException) -> str:
    frame = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    where = f" at {frame[0].filename}:{frame[0].lineno}" if frame else ""
    return f"{type(error).__name__}: {error}{where}"


def _started(
    problems: Iterable[Problem],
    start_search: Callable[[Problem], Process],
    on_failed: Callable[[Problem, str], None],
) -> Iterator[tuple[Problem, Process]]:
    """Searches started lazily, one per request; a problem whose search cannot start is failed."""
    for problem in problems:
        try:
            process = start_search(problem)
        except Exception as error:
            on_failed(problem, _describe(error))
            continue
        yield problem, process


def run_searches(
    problems: Iterable[Problem],
    start_search: Callable[[Problem], Process],
    backend: Backend,
    concurrent_trees: int,
    on_done: Callable[[Problem, Any], None],
    on_failed: Callable[[Problem, str], None],
    on_tick: Callable[[], None] | None = None,
) -> None:
    """Drive the searches of ``problems`` to completion, ``concurrent_trees`` at a time.

    A search that raises, or whose generation fails, is reported to ``on_failed`` and dropped;
    the others go on.
    """
    if isinstance(backend, StreamingBackend) and backend.streaming:
        _run_streaming(problems, start_search, backend, concurrent_trees, on_done, on_failed, on_tick)
        return
    searches = _started(problems, start_search, on_failed)
    live: list[_Live] = []

    def advance(problem: Problem, process: Process, reply: Responses | None) -> None:
        try:
            requests = process.send(reply)  # type: ignore[arg-type]  # send(None) starts a search
        except StopIteration as stop:
            on_done(problem, stop.value)
        except Exception as error:  # one bad problem never stops the run
            log.warning("search of '%s' failed: %s", problem.id, _describe(error))
            on_failed(problem, _describe(error))
        else:
            live.append(_Live(problem, process, requests))

    while True:
        while len(live) < concurrent_trees and (started := next(searches, None)) is not None:
            advance(*started, None)
        if not live:
            return
        ticking, live = _short_first(live)
        for item, replies in zip(ticking, _generate_isolated(backend, ticking), strict=True):
            if isinstance(replies, str):
                on_failed(item.problem, replies)
                item.process.close()
            else:
                advance(item.problem, item.process, replies)
        if on_tick is not None:
            on_tick()


def _horizon(item: _Live) -> int:
    """How many decode steps the tree's parked requests can take (a choice request takes one)."""
    return max((1 if r.choices else r.max_tokens for r in item.pending), default=0)


def _short_first(live: list[_Live]) -> tuple[list[_Live], list[_Live]]:
    """The trees to serve this tick, and those to keep parked.

    An engine call lasts as many decode steps as its longest row, so a tree that needs only a
    forced answer (one token) or a step (256 tokens) in the same call as another tree's rollout
    (1024) would wait for the rollout, and the rollout's last steps would decode a few rows at a
    time. Trees whose requests are at most half the longest horizon are served first, on their
    own (shortest job first); most then ask for longer completions and join the next call.
    Outcomes do not change: a row's samples do not depend on what else is in its batch.
    """
    horizons = [_horizon(item) for item in live]
    longest = max(horizons, default=0)
    short = [item for item, h in zip(live, horizons, strict=True) if h * 2 <= longest]
    if not short:
        return live, []
    return short, [item for item, h in zip(live, horizons, strict=True) if h * 2 > longest]


def _run_streaming(
    problems: Iterable[Problem],
    start_search: Callable[[Problem], Process],
    backend: StreamingBackend,
    concurrent_trees: int,
    on_done: Callable[[Problem, Any], None],
    on_failed: Callable[[Problem, str], None],
    on_tick: Callable[[], None] | None,
) -> None:
    searches = _started(problems, start_search, on_failed)
    in_flight: dict[int, _Live] = {}

    def advance(problem: Problem, process: Process, reply: Responses | None) -> None:
        try:
            requests = process.send(reply)  # type: ignore[arg-type]  # send(None) starts a search
            while not requests:  # nothing to generate: answer at once
                requests = process.send([])
        except StopIteration as stop:
            on_done(problem, stop.value)
            return
        except Exception as error:
            log.warning("search of '%s' failed: %s", problem.id, _describe(error))
            on_failed(problem, _describe(error))
            return
        try:
            ticket = backend.submit(requests)
        except Exception as error:  # the engine refused a request of this tree only
            on_failed(problem, f"generation failed: {_describe(error)}")
            process.close()
            return
        in_flight[ticket] = _Live(problem, process, requests)

    while True:
        while len(in_flight) < concurrent_trees and (started := next(searches, None)) is not None:
            advance(*started, None)
        if not in_flight:
            return
        for ticket, replies in backend.collect():
            item = in_flight.pop(ticket)
            advance(item.problem, item.process, replies)
        if on_tick is not None:
            on_tick()


def _generate_isolated(backend: Backend, items: list[_Live]) -> list[list | str]:
    """One batched call for all trees; if it fails, retry tree by tree so only the tree whose
    requests fail is dropped (its reason returned as a string)."""
    batch: list[GenerationRequest] = [r for item in items for r in item.pending]
    try:
        completions = backend.generate(batch)
    except Exception as error:
        if len(items) == 1:
            return [f"generation failed: {_describe(error)}"]
        log.warning("batched generation failed (%s); retrying tree by tree", _describe(error))
        return [_generate_isolated(backend, [item])[0] for item in items]
    out: list[list | str] = []
    cursor = 0
    for item in items:
        out.append(completions[cursor : cursor + len(item.pending)])
        cursor += len(item.pending)
    return out
