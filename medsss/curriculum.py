"""The curriculum: which seed questions the current policy should search next.

The policy answers every candidate question ``k`` times with the prompt, sampling settings and
answer extraction of a synthesis rollout from the root (``Step 0`` pre-filled, answers forced where
none is stated, judged by :func:`medsss.data.verify.is_correct`). Its pass rate ``correct / k``
says how hard the question is for this policy. Questions inside a pass-rate band are kept (by
default the hard ones: at most 1 of 8 right), every source keeps at least a floor of questions
(the easiest-above-band ones fill it), and an optional cap per source balances the sources.

Everything here is plain: :func:`attempt_process` is a search-shaped generator the scheduler
drives (so the attempts of many questions share engine calls), the selection is a pure function.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from medsss.data.records import Problem
from medsss.data.verify import extract_answer, is_correct
from medsss.generation.base import Completion, GenerationRequest
from medsss.search.mcts import TreeSearch

Attempts = Generator[list[GenerationRequest], list[list[Completion]], "PassRate"]


@dataclass(frozen=True)
class PassRate:
    """How often the policy answered one question correctly."""

    id: str
    source: str
    correct: int
    attempts: int
    answers: tuple[str | None, ...] = ()

    @property
    def rate(self) -> float:
        return self.correct / self.attempts if self.attempts else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "correct": self.correct, "attempts": self.attempts,
                "pass_rate": self.rate, "answers": list(self.answers)}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> PassRate:
        return cls(str(row["id"]), str(row["source"]), int(row["correct"]), int(row["attempts"]),
                   tuple(row.get("answers", ())))


def attempt_process(search: TreeSearch, k: int) -> Attempts:
    """``k`` rollouts from the root of ``search``'s tree, exactly as synthesis rolls out a node
    (same request, seeds and forced answers), judged against the gold answer."""
    root = search.tree.root
    [row] = yield [search.completion_request(root, n=k, rollout=True)]
    texts = yield from search.force_answers([root] * len(row), [c.text for c in row])
    answers = tuple(extract_answer(text) for text in texts)
    problem = search.problem
    correct = sum(is_correct(a, problem.answer, options=problem.options) for a in answers)
    return PassRate(problem.id, problem.source, correct, len(answers), answers)


@dataclass(frozen=True)
class Band:
    """Which pass rates to keep: ``low <= rate <= high``; at least ``floor_per_source`` questions of
    every source (filled with the lowest pass rates above the band); at most ``max_per_source`` of
    any source (the lowest pass rates first; None: no cap)."""

    low: float = 0.0
    high: float = 0.125
    floor_per_source: int = 2
    max_per_source: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"curriculum band needs 0 <= low <= high <= 1, got low={self.low}, "
                             f"high={self.high}")
        if self.floor_per_source < 0 or (self.max_per_source is not None and self.max_per_source < 1):
            raise ValueError("curriculum floor_per_source must be >= 0 and max_per_source >= 1 (or null)")


def select_curriculum(rates: Iterable[PassRate], band: Band) -> list[PassRate]:
    """The kept questions, in their input order. Per source: the in-band questions, topped up to the
    floor with the hardest questions above the band, then capped (hardest kept first; ties keep the
    earlier question)."""
    by_source: dict[str, list[tuple[int, PassRate]]] = defaultdict(list)
    for order, rate in enumerate(rates):
        by_source[rate.source].append((order, rate))
    kept: list[tuple[int, PassRate]] = []
    for items in by_source.values():
        hardest_first = sorted(items, key=lambda item: (item[1].rate, item[0]))
        chosen = [item for item in hardest_first if band.low <= item[1].rate <= band.high]
        easier = [item for item in hardest_first if item[1].rate > band.high]
        chosen += easier[: max(0, band.floor_per_source - len(chosen))]
        if band.max_per_source is not None:
            chosen = chosen[: band.max_per_source]
        kept.extend(chosen)
    return [rate for _, rate in sorted(kept, key=lambda item: item[0])]


def seed_record(problem: Problem, rate: PassRate) -> dict[str, Any]:
    """A kept question as a plain medsss JSONL record (``data=jsonl`` reads it), its pass rate in
    ``meta``."""
    return {
        "id": problem.id, "question": problem.question, "answer": problem.answer, "kind": problem.kind,
        "options": problem.options, "source": problem.source,
        "meta": {**problem.meta, "pass_rate": rate.rate, "attempts": rate.attempts},
    }


TABLE_COLUMNS = ("source", "questions", "kept", "mean_pass_rate", "kept_mean_pass_rate")


def pass_rate_table(rates: Sequence[PassRate], kept: Sequence[PassRate], k: int) -> list[dict[str, Any]]:
    """Per source (and ``all``): questions, kept, mean pass rates, and how many questions were
    answered right j of k times (``j/k`` columns)."""
    kept_ids = {r.id for r in kept}
    rows = []
    groups: dict[str, list[PassRate]] = defaultdict(list)
    for rate in rates:
        groups[rate.source].append(rate)
    for source, members in [*sorted(groups.items()), ("all", list(rates))]:
        chosen = [r for r in members if r.id in kept_ids]
        row: dict[str, Any] = {
            "source": source,
            "questions": len(members),
            "kept": len(chosen),
            "mean_pass_rate": _mean([r.rate for r in members]),
            "kept_mean_pass_rate": _mean([r.rate for r in chosen]),
        }
        for j in range(k + 1):
            row[f"{j}/{k}"] = sum(1 for r in members if r.correct == j and r.attempts == k)
        rows.append(row)
    return rows


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None

