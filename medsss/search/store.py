"""The tree store: one JSON line per finished tree, flushed before the next starts.

A rerun into the same directory skips the ids already stored, so a killed run resumes with
nothing lost but the trees in flight and nothing duplicated. A torn last line (the process died
mid-write) is cut off on open. Failed problems go to ``failures.jsonl`` and are retried next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medsss import io

log = logging.getLogger(__name__)

TREES_FILE = "trees.jsonl"
FAILURES_FILE = "failures.jsonl"


class StoreError(RuntimeError):
    pass


def config_hash(values: dict[str, Any]) -> str:
    """A short, stable hash of the settings that shape a tree."""
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_jsonl(path: Path, repair_tail: bool = False) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file (:func:`medsss.io.read_jsonl`), its errors as :class:`StoreError`."""
    try:
        yield from io.read_jsonl(path, repair_tail=repair_tail)
    except io.JSONLError as error:
        raise StoreError(str(error)) from None


def _append_line(path: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


class TreeStore:
    """Append-only store of search trees in ``run_dir``."""

    def __init__(self, run_dir: str | Path, search_hash: str, allow_config_change: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / TREES_FILE
        self.failures_path = self.run_dir / FAILURES_FILE
        self.search_hash = search_hash
        self._done: set[str] = set()
        for record in read_jsonl(self.path, repair_tail=True):
            if record.get("search_hash") != search_hash and not allow_config_change:
                raise StoreError(
                    f"{self.path}: tree '{record.get('id')}' was searched with other settings "
                    f"(hash {record.get('search_hash')} vs {search_hash}); use a new run directory "
                    "or set stage.allow_config_change=true to mix them"
                )
            self._done.add(str(record["id"]))
        # Failures of earlier runs that have not succeeded since are retried.
        self.earlier_failures = {
            str(r["id"]): r.get("reason", "")
            for r in read_jsonl(self.failures_path, repair_tail=True)
            if str(r["id"]) not in self._done
        }

    def __contains__(self, problem_id: str) -> bool:
        return problem_id in self._done

    def __len__(self) -> int:
        return len(self._done)

    def append(self, record: dict[str, Any]) -> None:
        problem_id = str(record["id"])
        if problem_id in self._done:
            raise StoreError(f"{self.path}: tree '{problem_id}' is already stored")
        _append_line(self.path, {**record, "search_hash": self.search_hash})
        self._done.add(problem_id)

    def record_failure(self, problem_id: str, reason: str) -> None:
        _append_line(self.failures_path, {"id": problem_id, "reason": reason, "time": time.time()})

    def records(self) -> Iterator[dict[str, Any]]:
        return read_jsonl(self.path)
