"""Choosing one candidate among N: greedy, self-consistency, best-of-N and PRM vote rules.

A candidate is ``(answer or None, step scores of steps 1..K)``. Candidates without an answer are
never chosen and never vote. Answers vote by :func:`answer_key`: on choice items by option letter,
so "C", "(C)" and "C. Acute pancreatitis" are one vote for C; on free-text items by their
normalised text, so "a high dose" is a vote for "a high dose", never for option A.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from medsss.data.verify import option_of
from medsss.decoding.aggregate import aggregate

SELECTIONS = ("greedy", "sc", "bon", "pvs", "vote_mean")
Candidate = tuple["str | None", Sequence[float]]

# Digit labels ("1", "(2)", "0 - false"): option_of reads letters only.
_LEADING_DIGIT = re.compile(r"^\W*(\d)(?:\D|$)")
_EDGE_PUNCTUATION = " \t.,;:*\"'`"


def normalise_text(answer: str) -> str:
    """The text vote of an answer: lower case, runs of spaces collapsed, edge punctuation dropped."""
    return " ".join(answer.lower().split()).strip(_EDGE_PUNCTUATION)


def option_letter(answer: str, options: Mapping[str, str] | None = None) -> str | None:
    """The option an answer names on a choice item (a letter, or a digit label such as HealthFact's
    "0"/"1"/"2"), or None when it names none or several."""
    letter = option_of(answer, options)
    if letter:
        return letter.upper()
    digit = _LEADING_DIGIT.match(answer.strip())
    return digit.group(1) if digit else None


def answer_key(answer: str, choice: bool = True, options: Mapping[str, str] | None = None) -> str:
    """The vote an answer casts.

    ``choice=True`` (the item has options or a one-character gold): its option letter when it names
    exactly one option, else its normalised text (so a hedge "B or C" is its own vote, not B's).
    ``choice=False`` (free text): always its normalised text.
    """
    return _answer_key(answer, choice, frozen_options(options))


def frozen_options(options: Mapping[str, str] | None) -> tuple[tuple[str, str], ...] | None:
    """``options`` in a hashable form, for memoised answer reading."""
    return tuple(sorted(options.items())) if options else None


# The grid reads the same answers once per strategy, N and subsample: memoised, because reading
# which option an answer names costs tens of microseconds.
@lru_cache(maxsize=1 << 16)
def _answer_key(answer: str, choice: bool, options: tuple[tuple[str, str], ...] | None) -> str:
    if choice:
        letter = option_letter(answer, dict(options) if options else None)
        if letter is not None:
            return letter
    return normalise_text(answer)


@dataclass(frozen=True)
class AnswerVote:
    """One answer's standing in a PRM vote."""

    key: str                # the vote (answer_key)
    members: tuple[int, ...]  # candidates casting it, in candidate order
    strength: float         # S(a) (pvs) or S(a) / count (vote_mean)
    best: int               # its best-scored candidate (ties: the lower index)
    best_score: float
    first_seen: int         # rank of first appearance among the answers


def rank_answers(candidates: Sequence[Candidate], aggregation: str = "min", *, mean: bool = False,
                 choice: bool = True, options: Mapping[str, str] | None = None) -> list[AnswerVote]:
    """Answers strongest first by the P-VS rule: S(a) = sum of the aggregated scores of the
    candidates answering a (divided by their count when ``mean``); ties go to the answer whose best
    single candidate scores highest, then to the answer that appears first.

    The one ranking behind ``select(..., "pvs" | "vote_mean")`` and the abstention diagnostic.
    """
    groups = _vote_groups(candidates, choice, options)
    scores = {i: aggregate(candidates[i][1], aggregation) for members in groups.values() for i in members}
    votes = []
    for order, (key, members) in enumerate(groups.items()):
        total = sum(scores[i] for i in members)
        best = max(members, key=lambda i: (scores[i], -i))
        votes.append(AnswerVote(key, tuple(members), total / len(members) if mean else total, best,
                                scores[best], order))
    return sorted(votes, key=lambda v: (-v.strength, -v.best_score, v.first_seen))


def _vote_groups(candidates: Sequence[Candidate], choice: bool,
                 options: Mapping[str, str] | None) -> dict[str, list[int]]:
    frozen = frozen_options(options)
    groups: dict[str, list[int]] = {}
    for i, (answer, _) in enumerate(candidates):
        if answer:  # dict insertion order = order of first appearance
            groups.setdefault(_answer_key(answer, choice, frozen), []).append(i)
    return groups


def select(candidates: Sequence[Candidate], rule: str, aggregation: str = "min", choice: bool = True,
           options: Mapping[str, str] | None = None) -> int | None:
    """The index of the chosen candidate, or None when no candidate has an answer.

    - ``greedy``: candidate 0 (the greedy sample) when it has an answer;
    - ``sc``: the majority answer (ties: the answer that appears first); its first candidate;
    - ``bon``: the best aggregated score (ties: the lower index);
    - ``pvs``: PRM vote-sum, S(a) = sum of aggregated scores of the candidates answering a;
    - ``vote_mean``: S(a) divided by the number of candidates answering a.
    For ``pvs``/``vote_mean``, ties between answers go to the answer whose best single candidate
    scores highest (then the one appearing first); the answer's best-scored candidate is returned.
    ``choice`` and ``options`` say how answers vote (see :func:`answer_key`).
    """
    if rule not in SELECTIONS:
        raise ValueError(f"selection '{rule}' must be one of {SELECTIONS}")
    answered = [i for i, (answer, _) in enumerate(candidates) if answer]
    if not answered:
        return None
    if rule == "greedy":
        return 0 if candidates[0][0] else None
    if rule == "sc":
        groups = _vote_groups(candidates, choice, options)
        return max(groups.values(), key=len)[0]  # max keeps the first of equal counts
    if rule == "bon":
        scores = {i: aggregate(candidates[i][1], aggregation) for i in answered}
        return max(answered, key=lambda i: (scores[i], -i))
    ranked = rank_answers(candidates, aggregation, mean=rule == "vote_mean", choice=choice, options=options)
    return ranked[0].best
