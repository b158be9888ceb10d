"""JSON and JSONL files: reading, and atomic writing (readers never see a half-written file).

Atomic writes go to a temporary file in the target's directory (``os.replace`` is atomic only
within one file system) and replace the target when complete; on error the target is untouched.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


class JSONLError(RuntimeError):
    """A JSONL file that cannot be read; the message names the file and line."""


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[IO[str]]:
    """A text handle whose content replaces ``path`` when the block ends without error."""
    path = Path(path)
    # The process id keeps two processes writing the same file from sharing a temporary file.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    """``data`` as indented JSON with sorted keys, atomically."""
    with atomic_writer(path) as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_jsonl(path: str | Path, repair_tail: bool = False) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file (none when it does not exist). A bad line is an error naming the
    file and line, except a torn final line (no newline), which ``repair_tail`` cuts off: it is the
    record an interrupted run was writing."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    if tail.strip():
        if not repair_tail:
            raise JSONLError(f"{path}: line {len(lines)}: record not terminated (torn write)")
        log.warning("%s: dropping a torn final record (%d bytes) left by an interrupted run", path, len(tail))
        with open(path, "r+b") as handle:
            handle.truncate(len(data) - len(tail))
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as error:
            raise JSONLError(f"{path}: line {number}: not valid JSON ({error.msg})") from None


def write_jsonl(path: str | Path, records: Iterable[Any]) -> Path:
    """One JSON line per record (non-ASCII kept as is), atomically."""
    path = Path(path)
    with atomic_writer(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
