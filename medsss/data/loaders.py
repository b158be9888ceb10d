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
instead. A row that repeats an earlier row's id is refused the same way (``dedupe="error"``), or
dropped with a count logged (``dedupe="first"``).

Files are UTF-8; a byte-order mark is dropped, and JSON Lines may end their lines with CRLF.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeGuard

from medsss.data.records import Problem, ProblemKind

log = logging.getLogger(__name__)

BUNDLED_MEDQA = "usmle_sample.jsonl"
# What a row that repeats an earlier row's id does (data.dedupe).
DEDUPE_CHOICES = ("error", "first")
# An option line in a question: "A. text", "A) text" or "(A) text". The text's trailing spaces are
# stripped afterwards: a lazy ``(\S.*?)\s*$`` is quadratic on a long line of spaces.
_OPTION_LINE = re.compile(r"^[ \t]*(?:\(([A-Z])\)|([A-Z])[.)])[ \t]+(\S.*)$")


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
    # A row repeating an earlier row's id: "error" refuses it, "first" keeps the first row of each id.
    dedupe: str = "error"


@dataclass
class LoadResult:
    problems: list[Problem]
    path: Path
    skipped: list[str] = field(default_factory=list)
    # Rows dropped by dedupe="first" for repeating an earlier row's id.
    duplicates: int = 0


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
    if spec.dedupe not in DEDUPE_CHOICES:
        raise DataError(f"data.dedupe={spec.dedupe!r} must be one of {list(DEDUPE_CHOICES)}")
    if spec.path is None:
        if spec.format != "medqa":
            raise DataError(f"data '{spec.name}' needs data.path (format {spec.format})")
        path = bundled_medqa_path()
    else:
        path = Path(spec.path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: data file not found (data.path)")
    if not path.is_file():
        raise DataError(f"{path}: not a file (data.path names a directory or a device)")

    problems: list[Problem] = []
    skipped: list[str] = []
    seen: dict[str, int] = {}
    duplicates = 0
    rows = 0
    for row_number, parsed in _READERS[spec.format](path, spec):
        rows += 1
        try:
            if isinstance(parsed, Exception):
                raise parsed
            problem = _validated(parsed)
            first = seen.get(problem.id)
            if first is not None and spec.dedupe == "first":
                duplicates += 1
                continue
            if first is not None:
                raise _DuplicateId(f"duplicate id {_shown(problem.id)} (first seen in row {first})")
            seen[problem.id] = row_number
        except (DataError, KeyError, TypeError, ValueError) as error:
            message = f"{path}: row {row_number}: {_describe(error)}"
            if not spec.skip_invalid:
                hint = "set data.skip_invalid=true to skip such rows"
                if isinstance(error, _DuplicateId):
                    hint = "set data.dedupe=first to keep the first row of each id, or " + hint
                raise DataError(f"{message} ({hint})") from None
            skipped.append(message)
            continue
        problems.append(problem)
    if rows == 0:
        raise DataError(f"{path}: no rows (an empty file or an empty JSON list)")
    if duplicates:
        log.warning("%s: dropped %d row(s) repeating an earlier row's id (data.dedupe=first keeps the first)",
                    path, duplicates)

    if spec.limit is not None:
        problems = problems[: spec.limit]
    problems = problems[spec.shard :: spec.num_shards]
    return LoadResult(problems=problems, path=path, skipped=skipped, duplicates=duplicates)


class _DuplicateId(DataError):
    """A valid row whose id an earlier row of the file already has."""


def _describe(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"missing field {error}"
    return str(error)


def _shown(value: object, limit: int = 60) -> str:
    """A value as an error message quotes it: repr (control characters and lone surrogates
    escaped, so the message can always be printed), cut to ``limit`` characters."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    shown = repr(value)
    return shown if len(shown) <= limit + 2 else f"{shown[:limit]}... ({len(shown)} characters)"


def _validated(problem: Problem) -> Problem:
    if not isinstance(problem.question, str) or not problem.question.strip():
        raise DataError("no question text")
    if not isinstance(problem.answer, str) or not problem.answer.strip():
        raise DataError("no gold answer")
    if problem.kind == "choice":
        letters = set(problem.options) if problem.options else set()
        if len(problem.answer.strip()) != 1:
            raise DataError(
                f"choice question with a gold answer {_shown(problem.answer)} that is not one letter"
            )
        if letters and problem.answer.strip().upper() not in letters:
            raise DataError(
                f"gold answer {_shown(problem.answer)} is not among the options {sorted(letters)}"
            )
    _check_unicode(problem)
    return problem


def _check_unicode(problem: Problem) -> None:
    """Refuse text that cannot be written as UTF-8: a lone surrogate (JSON's "\\ud800" escape)
    loads into a Python string but fails later, when a stage writes its records or tokenizes."""
    texts = [("id", problem.id), ("question", problem.question), ("answer", problem.answer),
             ("source", problem.source)]
    texts += [(f"option {letter}", text) for letter, text in (problem.options or {}).items()]
    texts.append(("meta", json.dumps(problem.meta, ensure_ascii=False)))
    for name, text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise DataError(
                f"{name} holds a lone surrogate {text[error.start]!r} at character {error.start} "
                "(not valid Unicode)"
            ) from None


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
            run = {"A": match.group(3).rstrip()}
        elif match and letter is not None and run and letter == chr(ord(max(run)) + 1):
            run[letter] = match.group(3).rstrip()
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
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        # utf-8-sig drops a byte-order mark: a file saved with one loads as if it had none.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


# JSON's own whitespace (str.isspace is wider: a U+00A0 before a value is bad JSON).
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


class _JSONText:
    """The rows of one JSON text, each decoded on its own so that a bad row is that row's error.

    An object that repeats a key is a row error: ``json`` would keep the last value without a word
    (``{"A": "x", "A": "y"}`` loses an option). A decode error in a JSON list or object ends the
    file (where the next row starts is unknown): it raises naming the row, line and column.
    """

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.text = text
        self._repeated: list[str] = []
        self._decoder = json.JSONDecoder(object_pairs_hook=self._object)

    def _object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        built: dict[str, Any] = {}
        for key, value in pairs:
            if key in built:
                self._repeated.append(key)
            built[key] = value
        return built

    def _checked(self, value: Any) -> Any:
        if self._repeated:
            return DataError(f"key {_shown(self._repeated[0])} appears twice in one JSON object")
        return value

    def _space(self, position: int) -> int:
        match = _JSON_SPACE.match(self.text, position)
        return match.end() if match else position

    def starts_with(self, character: str) -> bool:
        return self.text.startswith(character, self._space(0))

    def lines(self) -> Iterator[tuple[int, Any]]:
        """JSON Lines: a line ends at "\\n" or "\\r\\n" (the "\\r" is dropped, so an error's column
        is the same as in the LF file). Not ``str.splitlines``: it also breaks at U+2028, U+0085,
        ..., which ``json.dumps(..., ensure_ascii=False)`` leaves raw inside strings. A byte-order
        mark starting a line (files joined with ``cat``) is dropped."""
        for number, line in enumerate(self.text.split("\n"), start=1):
            line = line.removeprefix("\ufeff").removesuffix("\r")
            if not line.strip():
                continue
            self._repeated.clear()
            try:
                yield number, self._checked(self._decoder.decode(line))
            except json.JSONDecodeError as error:
                yield number, DataError(f"bad JSON: {error.msg} (column {error.colno})")
            except (ValueError, RecursionError) as error:  # an integer of 4300+ digits; deep nesting
                yield number, DataError(f"bad JSON: {_decode_failure(error)}")

    def list_items(self) -> Iterator[tuple[int, Any]]:
        """The items of a JSON list, numbered from 1."""
        position = self._space(self._space(0) + 1)  # after "["
        more = not self.text.startswith("]", position)
        position += 0 if more else 1
        number = 0
        while more:
            number += 1
            value, position = self._value(position, f"row {number}")
            yield number, value
            position, more = self._after(position, "]", number)
        self._end(position)

    def object_entries(self) -> Iterator[tuple[int, str, Any]]:
        """The (key, value) entries of a JSON object, numbered from 1; a repeated key comes twice."""
        position = self._space(self._space(0) + 1)  # after "{"
        more = not self.text.startswith("}", position)
        position += 0 if more else 1
        number = 0
        while more:
            number += 1
            key, position = self._value(position, f"row {number}")
            position = self._space(position)
            if not isinstance(key, str) or not self.text.startswith(":", position):
                raise self._broken(position, f"row {number}", "expected a quoted key and ':'")
            value, position = self._value(self._space(position + 1), f"row {number}")
            yield number, key, value
            position, more = self._after(position, "}", number)
        self._end(position)

    def _after(self, position: int, close: str, number: int) -> tuple[int, bool]:
        """Past what follows row ``number``: where the next row starts and True after a comma,
        past the closing bracket and False after that."""
        position = self._space(position)
        if self.text.startswith(",", position):
            return self._space(position + 1), True
        if self.text.startswith(close, position):
            return position + 1, False
        raise self._broken(position, f"row {number}", f"expected ',' or '{close}' after it")

    def _value(self, position: int, row: str) -> tuple[Any, int]:
        self._repeated.clear()
        try:
            value, end = self._decoder.raw_decode(self.text, position)
        except json.JSONDecodeError as error:
            raise self._broken(error.pos, row, error.msg) from None
        except (ValueError, RecursionError) as error:
            raise self._broken(position, row, _decode_failure(error)) from None
        return self._checked(value), end

    def _end(self, position: int) -> None:
        if self._space(position) < len(self.text):
            raise self._broken(self._space(position), "the end", "extra data after the top-level value")

    def _broken(self, position: int, row: str, reason: str) -> DataError:
        line = self.text.count("\n", 0, position) + 1
        column = position - self.text.rfind("\n", 0, position)
        return DataError(
            f"{self.path}: not valid JSON at {row} (line {line} column {column}): {reason}; "
            "the file cannot be read past this point"
        )


def _decode_failure(error: Exception) -> str:
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error)


def _rows_of(text: _JSONText) -> Iterator[tuple[int, Any]]:
    return text.list_items() if text.starts_with("[") else text.lines()


def _json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Rows of a JSON list or of a JSONL file; bad JSON in a JSONL line is that row's error."""
    return _rows_of(_JSONText(path, _read_text(path)))


def _each(path: Path, build: Callable[[int, Any], Problem]) -> Iterator[Row]:
    return _each_rows(_json_rows(path), build)


def _kind_of(gold: str) -> ProblemKind:
    return "choice" if len(gold.strip()) == 1 else "free_text"


# --- fields: the JSON type each one takes, checked (a list is no question text) -----------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "text" if isinstance(value, str) else type(value).__name__


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_text(value: Any, what: str) -> str:
    """Text, or a number taken as its text ("5" for 5); anything else is an error naming ``what``."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{what} must be text, got {_json_type(value)}")


def _text_field(item: dict[str, Any], key: str, default: str = "") -> str:
    """A text field; absent or null gives ``default``."""
    value = item.get(key)
    return default if value is None else _as_text(value, repr(key))


def _row_id(item: dict[str, Any], key: str, default: str | None) -> str:
    """The row's id: a string or an integer; absent or null gives ``default`` (None: required)."""
    value = item.get(key)
    if value is None:
        if default is None:
            raise DataError(f"missing field {key!r}")
        return default
    if not isinstance(value, str) and not _is_int(value):
        raise DataError(f"{key!r} must be a string or an integer, got {_json_type(value)}")
    text = str(value)
    if not text.strip():
        raise DataError(f"{key!r} is empty")
    return text


def _options(value: Any) -> dict[str, str]:
    """Letter -> text from a JSON object; the letters upper-cased, each one letter A-Z, once."""
    if not isinstance(value, dict):
        raise DataError(
            f"'options' must be an object mapping letters to option texts, got {_json_type(value)}"
        )
    options: dict[str, str] = {}
    names: dict[str, str] = {}  # letter -> the key that gave it
    for name, text in value.items():
        letter = name.strip().upper()
        if len(letter) != 1 or not "A" <= letter <= "Z":
            raise DataError(f"option {_shown(name)} is not a letter A-Z")
        if letter in names:
            raise DataError(f"option {letter} given twice (as {_shown(names[letter])} and {_shown(name)})")
        names[letter] = name
        options[letter] = _as_text(text, f"option {letter}")
    return options


def _stem_with_options(question: str, options: dict[str, str]) -> str:
    # A stem of spaces is no question: the options alone would pass for one.
    return _with_options(question, options) if question.strip() else ""


# --- readers ---------------------------------------------------------------------------------


def read_medsss(path: Path, spec: DataSpec) -> Iterator[Row]:
    def build(number: int, item: dict[str, Any]) -> Problem:
        conversations = item.get("conversations")
        if not conversations:
            raise DataError("no conversations")
        if not isinstance(conversations, list) or not isinstance(conversations[0], dict):
            raise DataError("'conversations' must be a list of turns {\"from\", \"value\"}")
        question = _text_field(conversations[0], "value")
        evaluation = item.get("eval")
        if evaluation is None:
            evaluation = {}
        if not isinstance(evaluation, dict):
            raise DataError(
                f"'eval' must be an object holding the gold 'answer', got {_json_type(evaluation)}"
            )
        gold = _text_field(evaluation, "answer").strip()
        extra = {k: v for k, v in evaluation.items() if k != "answer"}
        kind: ProblemKind = _kind_of(gold) if gold else "free_text"
        return Problem(
            id=_row_id(item, "id", f"{path.stem}-{number}"),
            question=question,
            answer=gold,
            kind=kind,
            source=_text_field(item, "dataset", path.stem),
            options=options_from_question(question) if kind == "choice" else None,
            meta=extra,
        )

    return _each(path, build)


def read_medqa(path: Path, spec: DataSpec) -> Iterator[Row]:
    def build(number: int, item: dict[str, Any]) -> Problem:
        if not item.get("options"):
            raise DataError("no options")
        options = _options(item["options"])
        meta: dict[str, Any] = {k: item[k] for k in ("meta_info", "topic", "answer") if k in item}
        return Problem(
            id=_row_id(item, "id", f"{path.stem}-{number}"),
            question=_stem_with_options(_text_field(item, "question"), options),
            answer=_text_field(item, "answer_idx").strip().upper(),
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
        numeric = {item.get("cop") for _, item in rows if isinstance(item, dict) and _is_int(item.get("cop"))}
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
        options = {letter: _as_text(item[key], repr(key))
                   for letter, key in zip("ABCD", ("opa", "opb", "opc", "opd"), strict=True)}
        cop = item.get("cop")
        if isinstance(cop, str) and cop.strip().upper() in options:
            gold = cop.strip().upper()
        elif _is_int(cop) and 0 <= cop - base < 4:
            gold = "ABCD"[cop - base]
        else:
            raise DataError(f"gold answer 'cop'={_shown(cop)} is not among the options A-D")
        return Problem(
            id=_row_id(item, "id", f"{path.stem}-{number}"),
            question=_stem_with_options(_text_field(item, "question"), options),
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
                raise DataError(f"expected a JSON object, got {_json_type(item)}")
            yield number, build(number, item)
        except (DataError, KeyError, TypeError, ValueError) as error:
            yield number, error
        except (AttributeError, IndexError) as error:  # a field of the wrong shape
            yield number, DataError(f"malformed row: {error}")


_PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}
# Fields of a PubMedQA row (the original release's and the Hugging Face layout's): a JSON object
# whose first key is one of them is a row, not the original release's table keyed by PMID.
_PUBMEDQA_ROW_FIELDS = frozenset({
    "id", "pubid", "question", "QUESTION", "answer", "final_decision", "context", "CONTEXTS",
    "contexts", "long_answer", "LONG_ANSWER", "LABELS", "MESHES", "YEAR", "reasoning_required_pred",
    "reasoning_free_pred",
})


def read_pubmedqa(path: Path, spec: DataSpec) -> Iterator[Row]:
    text = _JSONText(path, _read_text(path))
    rows: Iterable[tuple[int, Any]]
    if _keyed_by_pmid(text):  # the original release: one JSON object keyed by PMID
        rows = ((number, {"id": pmid, **item} if isinstance(item, dict) else item)
                for number, pmid, item in text.object_entries())
    else:  # JSONL rows (a one-row file is a single object too) or a JSON list
        rows = _rows_of(text)

    def build(number: int, item: dict[str, Any]) -> Problem:
        question = _text_field(item, "QUESTION" if "QUESTION" in item else "question")
        decision = _text_field(item, "final_decision" if "final_decision" in item else "answer")
        decision = decision.strip().lower()
        by_text = {v: k for k, v in _PUBMEDQA_OPTIONS.items()}
        if decision in by_text:
            gold = by_text[decision]
        elif decision.upper() in _PUBMEDQA_OPTIONS:
            gold = decision.upper()
        else:
            raise DataError(f"gold answer {_shown(decision)} is not one of yes / no / maybe")
        if spec.include_context and question.strip():
            question = "\n".join([*_pubmedqa_contexts(item), question])
        return Problem(
            id=_row_id(item, "id", None) if item.get("id") is not None
            else _row_id(item, "pubid", f"{path.stem}-{number}"),
            question=_stem_with_options(question, _PUBMEDQA_OPTIONS),
            answer=gold,
            kind="choice",
            source="pubmedqa",
            options=dict(_PUBMEDQA_OPTIONS),
        )

    return _each_rows(rows, build)


def _keyed_by_pmid(text: _JSONText) -> bool:
    """Whether a text is a JSON object whose first value is a row (an object, or one that repeats a
    key) under a key that is no row field: the original release's table keyed by PMID."""
    if not text.starts_with("{"):
        return False
    try:
        for _, key, value in text.object_entries():
            return isinstance(value, dict | DataError) and key not in _PUBMEDQA_ROW_FIELDS
    except DataError:  # not even its first entry parses: read as JSON Lines, whose rows say why
        return False
    return False


def _pubmedqa_contexts(item: dict[str, Any]) -> list[str]:
    """The abstract's contexts: ``CONTEXTS`` (the original release) or ``context.contexts``."""
    contexts = item.get("CONTEXTS")
    if contexts is None:
        context = item.get("context")
        if context is None:
            return []
        if not isinstance(context, dict):
            raise DataError(f"'context' must be an object holding 'contexts', got {_json_type(context)}")
        contexts = context.get("contexts")
    if contexts is None:
        return []
    if not isinstance(contexts, list):
        raise DataError(f"the contexts must be a list of texts, got {_json_type(contexts)}")
    return [_as_text(context, "each context") for context in contexts]


def read_jsonl(path: Path, spec: DataSpec) -> Iterator[Row]:
    def build(number: int, item: dict[str, Any]) -> Problem:
        gold = _text_field(item, "answer").strip()
        named = item.get("kind")
        if named is None or named == "":
            named = _kind_of(gold) if gold else "free_text"
        if named not in ("choice", "free_text"):
            raise DataError(f"kind {_shown(named)} must be 'choice' or 'free_text'")
        kind: ProblemKind = "choice" if named == "choice" else "free_text"
        meta = item.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise DataError(f"'meta' must be an object, got {_json_type(meta)}")
        question = _text_field(item, "question")
        return Problem(
            id=_row_id(item, "id", None),
            question=question,
            answer=gold,
            kind=kind,
            source=_text_field(item, "source", path.stem),
            options=_jsonl_options(item.get("options"), question, kind),
            meta=dict(meta or {}),
        )

    return _each(path, build)


def _jsonl_options(options: Any, question: str, kind: str) -> dict[str, str] | None:
    """The row's own options; for a choice row without them, the option lines of its question."""
    if options is not None and options != {}:
        return _options(options)
    return options_from_question(question) if kind == "choice" else None


_READERS: dict[str, Callable[[Path, DataSpec], Iterator[Row]]] = {
    "medsss": read_medsss,
    "medqa": read_medqa,
    "medmcqa": read_medmcqa,
    "pubmedqa": read_pubmedqa,
    "jsonl": read_jsonl,
}
