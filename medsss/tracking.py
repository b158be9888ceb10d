"""Experiment trackers behind one small interface: none, CSV, or Weights & Biases."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class Tracker:
    """The no-op tracker (``logger=none``); the others override what they support."""

    def start(self, config: dict[str, Any], run_dir: str | Path) -> None:
        pass

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        pass

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        pass

    def finish(self) -> None:
        pass


class NullTracker(Tracker):
    pass


class CSVTracker(Tracker):
    """Appends every ``log`` call as a row of ``<run_dir>/<filename>``; tables as their own CSV."""

    def __init__(self, filename: str = "log.csv") -> None:
        self.filename = filename
        self.run_dir: Path | None = None
        self._rows: list[dict[str, Any]] = []

    def start(self, config: dict[str, Any], run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._rows.append({"step": step, **metrics})
        self._flush()

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        assert self.run_dir is not None
        with open(self.run_dir / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows(rows)

    def _flush(self) -> None:
        assert self.run_dir is not None
        fields: list[str] = []
        for row in self._rows:
            fields.extend(k for k in row if k not in fields)
        with open(self.run_dir / self.filename, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self._rows)


class WandbTracker(Tracker):
    """Weights & Biases. ``mode`` defaults to ``$WANDB_MODE`` (tests and CI set ``offline``)."""

    def __init__(
        self,
        project: str = "medsss",
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
        mode: str | None = None,
    ) -> None:
        self.settings = {"project": project, "entity": entity, "name": name, "group": group, "tags": list(tags)}
        self.mode = mode or os.environ.get("WANDB_MODE")
        self.run = None

    def start(self, config: dict[str, Any], run_dir: str | Path) -> None:
        try:
            import wandb
        except ImportError as error:
            raise RuntimeError("logger=wandb needs the wandb package: pip install 'medsss[wandb]'") from error
        self._wandb = wandb
        self.run = wandb.init(config=config, dir=str(run_dir), mode=self.mode, **self.settings)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.run is not None:
            self.run.log({name: self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def lightning_logger(tracker: Tracker, run_dir: str | Path):
    """The Lightning logger matching a tracker (training stages log through Lightning)."""
    if isinstance(tracker, WandbTracker):
        from lightning.pytorch.loggers import WandbLogger

        settings = {k: v for k, v in tracker.settings.items() if v not in (None, [])}
        return WandbLogger(save_dir=str(run_dir), mode=tracker.mode, **settings)
    if isinstance(tracker, CSVTracker):
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="logs")
    return False
