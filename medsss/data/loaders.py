"""Loaders: every supported input format becomes a list of :class:`Problem` records.

Formats (``data.format``):

- ``medsss``: the MedS3 "conversations" JSON list (the benchmark files the paper ships);
- ``medqa``: MedQA JSONL (``question``, ``options`` dict, ``answer_idx``);
- ``medmcqa``: MedMCQA JSON/JSONL (``question``, ``opa``..``opd``, ``cop``);
- ``pubmedqa``: PubMedQA, either the original JSON object keyed by PMID or JSONL rows;
- ``jsonl``: plain records ``{"id", "question", "answer"}`` with optional ``kind``, ``options``,
  ``source``, ``meta``.

Every choice item gets ``options`` (letter -> text): the format's own options, else the
"A. text" / "A) text" / "(A) text" lines of its question (:func:`options_from_question`), so
grading can read an answer given as an option's text.

Every row is validated before any generation starts. A malformed row raises :class:`DataError`
naming the file and the 1-based row number; with ``skip_invalid`` it is counted and reported
instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from medsss.data.records import Problem, ProblemKind

BUNDLED_MEDQA = "usmle_sample.jsonl"
# An option line in a question: "A. text", "A) text" or "(A) text".
_OPTION_LINE = re.compile(r"^[ \t]*(?:\(([A-Z])\)|([A-Z])[.)])[ \t]+(\S.*?)\s*$")


class DataError(ValueError):
    """A data file or one of its rows cannot be used."""


@dataclass
class DataSpec:
    """What to load. Built from the ``data=`` config group."""

    name: str = "medqa"
    format: str = "medqa"
    path: str | None = None
    limit: int | None = None
    shard: int = 0
    num_shards: int = 1
    skip_invalid: bool = False
    # MedMCQA ships ``cop`` 1-based in the original release and 0-based on the HF hub.
    cop_base: str | int = "auto"
    # PubMedQA: prepend the abstract contexts to the question.
    include_context: bool = False


@dataclass
class LoadResult:
    problems: list[Problem]
    path: Path
    skipped: list[str] = field(default_factory=list)


def bundled_medqa_path() -> Path:
    """The bundled set of original USMLE-style questions (MedQA JSONL layout)."""
    return Path(str(resources.files("medsss.data") / "bundled" / BUNDLED_MEDQA))


def load_problems(spec: DataSpec) -> LoadResult:
    """Load, validate, limit and shard the problems a data spec names."""
    if spec.num_shards < 1 or not 0 <= spec.shard < spec.num_shards:
        raise DataError(
            f"data.shard={spec.shard} must be in [0, data.num_shards={spec.num_shards})"
        )
    if spec.format not in _READERS:
        raise DataError(
            f"unknown data.format '{spec.format}'; choose one of {sorted(_READERS)}"
        )
    if spec.path is None:
        if spec.format != "medqa":
            raise DataError(f"data '{spec.name}' needs data.path (format {spec.format})")
        path = bundled_medqa_path()
    else:
        path = Path(spec.path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: data file not found (data.path)")

    problems: list[Problem] = []
    skipped: list[str] = []
    seen: dict[str, int] = {}
    for row_number, parsed in _READERS[spec.format](path, spec):
        try:
            if isinstance(parsed, Exception):
                raise parsed
            problem = _validated(parsed)
            if problem.id in seen:
                raise DataError(f"duplicate id '{problem.id}' (first seen in row {seen[problem.id]})")
            seen[problem.id] = row_number
        except (DataError, KeyError, TypeError, ValueError) as error:
            message = f"{path}: row {row_number}: {_describe(error)}"
            if not spec.skip_invalid:
                raise DataError(message + " (set data.skip_invalid=true to skip such rows)") from None
            skipped.append(message)
            continue
        problems.append(problem)

    if spec.limit is not None:
        problems = problems[: spec.limit]
    problems = problems[spec.shard :: spec.num_shards]
    return LoadResult(problems=problems, path=path, skipped=skipped)


def _describe(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"missing field {error}"
    return str(error)


def _validated(problem: Problem) -> Problem:
    if not isinstance(problem.question, str) or not problem.question.strip():
        raise DataError("no question text")
    if not isinstance(problem.answer, str) or not problem.answer.strip():
        raise DataError("no gold answer")
    if problem.kind == "choice":
        letters = set(problem.options) if problem.options else set()
        if len(problem.answer.strip()) != 1:
            raise DataError(f"choice question with a gold answer '{problem.answer}' that is not one letter")
        if letters and problem.answer.strip().upper() not in letters:
            raise DataError(
                f"gold answer '{problem.answer}' is not among the options {sorted(letters)}"
            )
    return problem


def options_from_question(question: str) -> dict[str, str] | None:
    """The options a question lists as lines "A. text" / "A) text" / "(A) text", or None.

    The options are the last run of such lines lettered A, B, C, ... in order (blank lines
    between them allowed): earlier lettered lines are part of the stem (a Roman-numeral list
    "I. ..." or a stray "V) ..." before the real options). A run needs two options.
    """
    found: dict[str, str] | None = None
    run: dict[str, str] = {}
    for line in question.splitlines():
        match = _OPTION_LINE.match(line)
        letter = (match.group(1) or match.group(2)) if match else None
        if match and letter == "A":
            found = _longer_run(found, run)
            run = {"A": match.group(3)}
        elif match and letter is not None and run and letter == chr(ord(max(run)) + 1):
            run[letter] = match.group(3)
        elif line.strip():
            found = _longer_run(found, run)
            run = {}
    found = _longer_run(found, run)
    return found


def _longer_run(found: dict[str, str] | None, run: dict[str, str]) -> dict[str, str] | None:
    # A later complete run replaces an earlier one: the options come after the stem.
    return dict(run) if len(run) >= 2 else found


def _with_options(question: str, options: dict[str, str]) -> str:
    lines = "\n".join(f"{letter}. {text}" for letter, text in options.items())
    return f"{question.strip()}\n{lines}"


# --- readers: each yields (row_number, Problem or the exception the row raised) ---------------

Row = tuple[int, "Problem | Exception"]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Rows of a JSON list or of a JSONL file; bad JSON in a JSONL line is that row's error."""
    text = _read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not valid JSON: {error}") from None
        yield from enumerate(items, start=1)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            yield number, DataError(f"bad JSON: {error.msg} (column {error.colno})")


def _each(path: Path, build: Callable[[int, Any], Problem]) -> Iterator[Row]:
    return _each_rows(_json_rows(path), build)


def _kind_of(gold: str) -> ProblemKind:
    return "choice" if len(gold.strip()) == 1 else "free_text"


def read_medsss(path: Path, spec: DataSpec) -> Iterator[Row]:
    def build(number: int, item: dict[str, Any]) -> Problem:
        conversations = item.get("conversations")
        if not conversations:
            raise DataError("no conversations")
        question = conversations[0].get("value", "")
        gold = str(item.get("eval", {}).get("answer", "") or "")
        extra = {k: v for k, v in item.get("eval", {}).items() if k != "answer"}
        kind: ProblemKind = _kind_of(gold) if gold.strip() else "free_text"
        return Problem(
            id=str(item.get("id", f"{path.stem}-{number}")),
            question=question,
            answer=gold.strip(),
            kind=kind,
            source=str(item.get("dataset", path.stem)),
            options=options_from_question(question) if kind == "choice" else None,
            meta=extra,
        )

    return _each(path, build)


def read_medqa(path: Path, spec: DataSpec) -> Iterator[Row]:
    def build(number: int, item: dict[str, Any]) -> Problem:
        options = item.get("options")
        if not isinstance(options, dict) or not options:
            raise DataError("no options")
        options = {str(k).strip().upper(): str(v) for k, v in options.items()}
        gold = str(item.get("answer_idx", "") or "").strip().upper()
        meta: dict[str, Any] = {k: item[k] for k in ("meta_info", "topic", "answer") if k in item}
        return Problem(
            id=str(item.get("id", f"{path.stem}-{number}")),
            question=_with_options(str(item.get("question", "")), options) if item.get("question") else "",
            answer=gold,
            kind="choice",
            source="medqa",
            options=options,
            meta=meta,
        )

    return _each(path, build)


def read_medmcqa(path: Path, spec: DataSpec) -> Iterator[Row]:
    rows = list(_json_rows(path))
    base = spec.cop_base
    if base == "auto":
        cops = {item.get("cop") for _, item in rows if isinstance(item, dict)}
        numeric = {c for c in cops if isinstance(c, int)}
        if 0 in numeric or not numeric:  # letters need no base
            base = 0
        elif 4 in numeric:
            base = 1
        else:
            raise DataError(
                f"{path}: cannot tell whether 'cop' is 0- or 1-based; set data.cop_base=0 or 1"
            )
    base = int(base)

    def build(number: int, item: dict[str, Any]) -> Problem:
        options = {letter: str(item[key])
                   for letter, key in zip("ABCD", ("opa", "opb", "opc", "opd"), strict=True)}
        cop = item.get("cop")
        if isinstance(cop, str) and cop.strip().upper() in options:
            gold = cop.strip().upper()
        elif isinstance(cop, int) and 0 <= cop - base < 4:
            gold = "ABCD"[cop - base]
        else:
            raise DataError(f"gold answer 'cop'={cop!r} is not among the options A-D")
        return Problem(
            id=str(item.get("id", f"{path.stem}-{number}")),
            question=_with_options(str(item.get("question", "")), options) if item.get("question") else "",
            answer=gold,
            kind="choice",
            source="medmcqa",
            options=options,
            meta={k: item[k] for k in ("subject_name", "topic_name", "exp") if k in item},
        )

    return _each_rows(rows, build)


def _each_rows(
    rows: Iterable[tuple[int, Any]], build: Callable[[int, Any], Problem]
) -> Iterator[Row]:
    for number, item in rows:
        if isinstance(item, Exception):
            yield number, item
            continue
        try:
            if not isinstance(item, dict):
                raise DataError(f"expected a JSON object, got {type(item).__name__}")
            yield number, build(number, item)
        except (DataError, KeyError, TypeError, ValueError) as error:
            yield number, error
        except (AttributeError, IndexError) as error:  # a field of the wrong shape
            yield number, DataError(f"malformed row: {error}")


_PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}


def read_pubmedqa(path: Path, spec: DataSpec) -> Iterator[Row]:
    text = _read_text(path)
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict) and whole and all(isinstance(v, dict) for v in whole.values()):
        # The original release: one JSON object keyed by PMID.
        rows: list[tuple[int, Any]] = [
            (number, {"id": pmid, **item}) for number, (pmid, item) in enumerate(whole.items(), start=1)
        ]
    else:  # JSONL rows (a one-row file parses as a single object too)
        rows = list(_json_rows(path))

    def build(number: int, item: dict[str, Any]) -> Problem:
        question = item.get("QUESTION", item.get("question", ""))
        decision = str(item.get("final_decision", item.get("answer", ""))).strip().lower()
        by_text = {v: k for k, v in _PUBMEDQA_OPTIONS.items()}
        if decision in by_text:
            gold = by_text[decision]
        elif decision.upper() in _PUBMEDQA_OPTIONS:
            gold = decision.upper()
        else:
            raise DataError(f"gold answer '{decision}' is not one of yes / no / maybe")
        if spec.include_context:
            contexts = item.get("CONTEXTS") or item.get("context", {}).get("contexts", [])
            question = "\n".join([*contexts, question]) if contexts else question
        return Problem(
            id=str(item.get("id", item.get("pubid", f"{path.stem}-{number}"))),
            question=_with_options(question, _PUBMEDQA_OPTIONS) if question else "",
            answer=gold,
            kind="choice",
            source="pubmedqa",
            options=dict(_PUBMEDQA_OPTIONS),
        )

    return _each_rows(rows, build)


def read_jsonl(path: Path, spec: DataSpec) -> Iterator[Row]:
    def build(number: int, item: dict[str, Any]) -> Problem:
        gold = str(item.get("answer", "") or "").strip()
        options = item.get("options")
        if options is not None and not isinstance(options, dict):
            raise DataError("'options' must be an object mapping letters to option texts")
        named = item.get("kind") or (_kind_of(gold) if gold else "free_text")
        if named not in ("choice", "free_text"):
            raise DataError(f"kind '{named}' must be 'choice' or 'free_text'")
        kind: ProblemKind = "choice" if named == "choice" else "free_text"
        if "id" not in item:
            raise DataError("missing field 'id'")
        return Problem(
            id=str(item["id"]),
            question=str(item.get("question", "") or ""),
            answer=gold,
            kind=kind,
            source=str(item.get("source", path.stem)),
            options=_jsonl_options(options, str(item.get("question", "") or ""), kind),
            meta=dict(item.get("meta", {})),
        )

    return _each(path, build)


def _jsonl_options(options: dict[str, Any] | None, question: str, kind: str) -> dict[str, str] | None:
    """The row's own options; for a choice row without them, the option lines of its question."""
    if options:
        return {str(k).strip().upper(): str(v) for k, v in options.items()}
    return options_from_question(question) if kind == "choice" else None


_READERS: dict[str, Callable[[Path, DataSpec], Iterator[Row]]] = {
    "medsss": read_medsss,
    "medqa": read_medqa,
    "medmcqa": read_medmcqa,
    "pubmedqa": read_pubmedqa,
    "jsonl": read_jsonl,
}
