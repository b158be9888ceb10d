"""The problem record every loader produces and every stage consumes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ProblemKind = Literal["choice", "free_text"]


@dataclass(frozen=True)
class Problem:
    """One question with its gold answer.

    ``question`` is the full prompt text (options included); ``answer`` is one letter for choice
    questions and free text otherwise.
    """

    id: str
    question: str
    answer: str
    kind: ProblemKind = "choice"
    source: str = ""
    options: dict[str, str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
