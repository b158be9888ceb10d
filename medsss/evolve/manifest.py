"""``manifest.json`` of an evolve run: per step its stage, inputs, overrides, config hash, outputs,
status and metrics. Written atomically after every change, so a run killed at any moment leaves a
manifest that says which steps finished (``done``) and which one was under way (``running``)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medsss.io import read_json, write_json

MANIFEST_FILE = "manifest.json"
STATUSES = ("running", "done", "failed", "replaced")


@dataclass
class StepRecord:
    step: str  # rounds/<k>/<name>, also the step's directory relative to the evolve run
    stage: str
    round: int
    overrides: list[str]
    config_hash: str
    inputs: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    outputs: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    finished: float | None = None
    attempts: int = 1
    error: str | None = None


class Manifest:
    """The steps of one evolve run, keyed by ``rounds/<k>/<name>``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / MANIFEST_FILE
        self.steps: dict[str, StepRecord] = {}
        if self.path.exists():
            try:
                data = read_json(self.path)
                self.steps = {row["step"]: StepRecord(**row) for row in data["steps"]}
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{self.path}: not an evolve manifest ({error})") from None

    def get(self, step: str) -> StepRecord | None:
        return self.steps.get(step)

    def start(self, record: StepRecord) -> StepRecord:
        """Mark ``record`` running (an interrupted step started again counts one more attempt)."""
        earlier = self.steps.get(record.step)
        if earlier is not None and earlier.status in ("running", "failed"):
            record.attempts = earlier.attempts + 1
            record.started = earlier.started
        else:
            record.started = time.time()
        record.status, record.error, record.finished = "running", None, None
        self.steps[record.step] = record
        self.save()
        return record

    def finish(self, step: str, outputs: list[str], metrics: dict[str, Any]) -> None:
        record = self.steps[step]
        record.status, record.outputs, record.metrics, record.finished = "done", outputs, metrics, time.time()
        self.save()

    def fail(self, step: str, error: str) -> None:
        record = self.steps[step]
        record.status, record.error = "failed", error
        self.save()

    def replace(self, step: str, moved_to: str) -> None:
        """A finished step about to run again: its record is kept under the folder it moved to."""
        record = self.steps.pop(step)
        record.status, record.step = "replaced", moved_to
        self.steps[moved_to] = record
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, {"steps": [asdict(r) for r in self.steps.values()]})
