"""The one prompt format used by synthesis, training and evaluation (see
docs/method.md#solution-format).

A solution is a list of steps rendered as ``Step k: text`` joined by blank lines; step 0 is fixed.
Every function here is pure and byte-stable, so the engine's prefix cache sees identical prefixes
for every node that shares a path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

STEP_ZERO = "Let's break down this problem step by step."
STEP_SEPARATOR = "\n\n"
REFLECT_OPENING = "But wait, "
FORCE_ANSWER_SUFFIX = " The answer is"

# A step marker is "Step <n>:" at the start of a line; the bare word "Step" is not a marker.
_STEP_MARKER = re.compile(r"(?m)^[ \t]*Step[ \t]+(\d+)[ \t]*:[ \t]?")


def step_prefix(index: int) -> str:
    return f"Step {index}:"


def render_steps(steps: Sequence[str], start: int = 0) -> str:
    """``["a", "b"] -> "Step 0: a\\n\\nStep 1: b"``."""
    return STEP_SEPARATOR.join(f"{step_prefix(start + i)} {text}" for i, text in enumerate(steps))


def continuation_prefill(path: Sequence[str], opening: str = "") -> str:
    """The assistant text that asks for the step after ``path`` (a list of step texts from step 0).

    ``opening`` pre-fills the start of the new step (used by the reflect action).
    """
    rendered = render_steps(path)
    new_step = f"{step_prefix(len(path))} {opening}" if opening else step_prefix(len(path))
    return f"{rendered}{STEP_SEPARATOR}{new_step}" if rendered else new_step


def split_steps(text: str) -> list[str]:
    """Split generated solution text into step texts, on line-initial ``Step <n>:`` markers.

    Text before the first marker counts as the first step (a continuation generated after a
    pre-filled ``Step k:`` starts without its own marker). Empty steps are dropped.
    """
    pieces = _STEP_MARKER.split(text)
    # re.split with one group gives [head, n1, body1, n2, body2, ...].
    steps = [pieces[0]] + pieces[2::2]
    return [s.strip() for s in steps if s.strip()]


def truncate_at_step_marker(text: str) -> str:
    """The text up to the next line-initial step marker (for single-step generation)."""
    match = _STEP_MARKER.search(text)
    return text[: match.start()] if match else text


def build_messages(question: str, system_prompt: str | None) -> tuple[dict[str, str], ...]:
    messages: list[dict[str, str]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": question})
    return tuple(messages)
