"""Rule-based answer extraction and correctness (DESIGN.md section 2).

Both functions accept any string and never raise: search and evaluation call them on raw model
output, which can be empty, truncated or nonsensical.
"""

from __future__ import annotations

import re

# In priority order: the first pattern that occurs anywhere in the text decides, and its last
# occurrence wins (a solution that revises itself states its final answer last).
_ANSWER_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"the answer is", re.IGNORECASE),
    re.compile(r"the correct answer is", re.IGNORECASE),
    re.compile(r"final answer(?:\s+is|\s*:)", re.IGNORECASE),
)

_STRIP_CHARS = " \t:*\"'`“”‘’"


def extract_answer(text: str | None) -> str | None:
    """The answer a solution states, or None when it states none.

    Takes the rest of the line after the last match of the first pattern that matches, then strips
    spaces, colons, asterisks, quotes and trailing periods.
    """
    if not text:
        return None
    for pattern in _ANSWER_PATTERNS:
        last = None
        for last in pattern.finditer(text):
            pass
        if last is None:
            continue
        lines = text[last.end():].splitlines()
        rest = lines[0] if lines else ""
        answer = _clean(rest)
        return answer or None
    return None


def _clean(fragment: str) -> str:
    previous = None
    answer = fragment
    # Strip until stable: "**C**." needs the period removed before the asterisks.
    while answer != previous:
        previous = answer
        answer = answer.strip().strip(_STRIP_CHARS).rstrip(".")
    return answer


def is_correct(pred: str | None, gold: str | None) -> bool:
    """Whether a predicted answer matches the gold one.

    A one-letter gold is matched by the first letter of the prediction (after brackets and
    emphasis), upper-cased; a longer gold by case-insensitive containment.
    """
    if not pred or not gold:
        return False
    gold = gold.strip()
    if not gold:
        return False
    if len(gold) == 1:
        match = re.search(r"[A-Za-z]", pred)
        return match is not None and match.group(0).upper() == gold.upper()
    return gold.lower() in pred.lower()
