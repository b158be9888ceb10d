"""What a cached evaluation item says about itself: its kind, its options, how an answer scores.

A cached item is ``{"id", "gold", "kind", "options", "candidates": [{"answer", "step_scores", ...}],
"greedy": {"answer", ...} or absent}``. Cache rows written before ``kind``/``options`` were stored
lack them: their kind is derived from the gold (a one-character gold is a choice item).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from medsss.data.verify import is_correct
from medsss.decoding import select
from medsss.decoding.select import Candidate, frozen_options


def is_choice(item: Mapping[str, Any]) -> bool:
    """Whether answers to ``item`` vote by option letter (it has options or a one-character gold)."""
    kind = item.get("kind")
    if kind is not None:
        if kind not in ("choice", "free_text"):
            raise ValueError(f"cached item {item.get('id')!r}: kind {kind!r} must be 'choice' or 'free_text'")
        return kind == "choice"
    return bool(item.get("options")) or len(str(item.get("gold", "")).strip()) == 1


def options_of(item: Mapping[str, Any]) -> dict[str, str] | None:
    return item.get("options") or None


def answer_correct(item: Mapping[str, Any], answer: str | None) -> bool:
    """The verifier's verdict on ``answer`` for ``item`` (its options included)."""
    return _verdict(answer, item["gold"], frozen_options(options_of(item)))


# Memoised: the grid grades the same chosen answers once per strategy, N and subsample.
@lru_cache(maxsize=1 << 16)
def _verdict(answer: str | None, gold: str, options: tuple[tuple[str, str], ...] | None) -> bool:
    return is_correct(answer, gold, options=dict(options) if options else None)


def as_candidates(pool: Sequence[Mapping[str, Any]]) -> list[Candidate]:
    """``(answer, step scores)`` pairs; a candidate the PRM did not score counts as scored 0."""
    return [(c["answer"], c.get("step_scores") or [0.0]) for c in pool]


def choose(item: Mapping[str, Any], pool: Sequence[Mapping[str, Any]], rule: str,
           aggregation: str = "min") -> Mapping[str, Any] | None:
    """The candidate of ``pool`` that ``rule`` picks for ``item``, or None when none answered."""
    chosen = select(as_candidates(pool), rule, aggregation, choice=is_choice(item), options=options_of(item))
    return pool[chosen] if chosen is not None else None


def decoded(item: Mapping[str, Any], rule: str, aggregation: str, n: int) -> Mapping[str, Any] | None:
    """What a decoding strategy answers for ``item``: the greedy sample for ``greedy``, else the pick
    of ``rule`` among the first ``n`` candidates in their sampled order. ``predictions/`` and the
    results table both come from here, so they decide ties on the same candidate order."""
    if rule == "greedy":
        return item.get("greedy")
    return choose(item, item["candidates"][:n], rule, aggregation)
