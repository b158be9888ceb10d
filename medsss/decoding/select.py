"""Choosing one candidate among N: greedy, self-consistency, best-of-N and PRM vote rules.

A candidate is ``(answer or None, step scores of steps 1..K)``. Candidates without an answer are
never chosen and never vote. Answers vote by :func:`answer_key`, so "C", "(C)" and
"C. Acute pancreatitis" are one vote for C.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from medsss.decoding.aggregate import aggregate

SELECTIONS = ("greedy", "sc", "bon", "pvs", "vote_mean")
Candidate = tuple["str | None", Sequence[float]]

_LETTER = re.compile(r"^\W*([A-Za-z])(?:[^A-Za-z]|$)")


def answer_key(answer: str) -> str:
    """The vote an answer casts: its option letter when it leads with one, else its text."""
    match = _LETTER.match(answer.strip())
    return match.group(1).upper() if match else " ".join(answer.lower().split())


def select(candidates: Sequence[Candidate], rule: str, aggregation: str = "min") -> int | None:
    """The index of the chosen candidate, or None when no candidate has an answer.

    - ``greedy``: candidate 0 (the greedy sample) when it has an answer;
    - ``sc``: the majority answer (ties: the answer that appears first); its first candidate;
    - ``bon``: the best aggregated score (ties: the lower index);
    - ``pvs``: PRM vote-sum, S(a) = sum of aggregated scores of the candidates answering a;
    - ``vote_mean``: S(a) divided by the number of candidates answering a.
    For ``pvs``/``vote_mean``, ties between answers go to the answer whose best single candidate
    scores highest (then the one appearing first); the answer's best-scored candidate is returned.
    """
    if rule not in SELECTIONS:
        raise ValueError(f"selection '{rule}' must be one of {SELECTIONS}")
    answered = [i for i, (answer, _) in enumerate(candidates) if answer]
    if not answered:
        return None
    if rule == "greedy":
        return 0 if candidates[0][0] else None

    groups: dict[str, list[int]] = {}
    for i in answered:
        groups.setdefault(answer_key(candidates[i][0]), []).append(i)  # insertion order = first appearance

    if rule == "sc":
        best = max(groups.values(), key=len)  # max keeps the first of equal counts
        return best[0]

    scores = {i: aggregate(candidates[i][1], aggregation) for i in answered}
    if rule == "bon":
        return max(answered, key=lambda i: (scores[i], -i))

    def best_candidate(members: list[int]) -> int:
        return max(members, key=lambda i: (scores[i], -i))

    def strength(item: tuple[int, tuple[str, list[int]]]):
        order, (_, members) = item
        total = sum(scores[i] for i in members)
        value = total / len(members) if rule == "vote_mean" else total
        return (value, scores[best_candidate(members)], -order)

    _, (_, members) = max(enumerate(groups.items()), key=strength)
    return best_candidate(members)
