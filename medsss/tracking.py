"""One tracking layer for every stage: Lightning's logger objects (``CSVLogger``, ``WandbLogger``).

The training stages hand the loggers to the Lightning Trainer; synthesis and evaluation log through
the same objects with :class:`RunLoggers`. :func:`tracked_run` logs the resolved config as
hyperparameters (secrets redacted) and finalizes every logger when the stage ends, with status
``"failed"`` when it raised. With no loggers (``logger=none``) nothing here imports Lightning, so
synthesis and evaluation run without the training extra.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

log = logging.getLogger(__name__)

# Config keys whose values are never logged: credentials that may reach a config through an
# environment interpolation. Matches "token", "hf_token", "wandb_api_key"; not "max_tokens".
SECRET_KEY = re.compile(r"(^|[_.-])(api[_-]?key|token|secret|password|passwd|credentials?)$", re.IGNORECASE)
REDACTED = "<redacted>"


def redact_secrets(value: Any) -> Any:
    """A copy of a nested config container with the values of secret-looking keys replaced."""
    if isinstance(value, Mapping):
        return {k: REDACTED if SECRET_KEY.search(str(k)) else redact_secrets(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_secrets(v) for v in value]
    return value


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The entries loggers take: numbers (strings, lists and None stay in ``metrics.json`` only)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


class RunLoggers:
    """The loggers of one stage run, behind the calls every stage makes."""

    def __init__(self, loggers: Sequence[Logger] = ()) -> None:
        self.loggers: list[Logger] = list(loggers)

    def log_hyperparams(self, config: Mapping[str, Any]) -> None:
        params = redact_secrets(config)
        for logger in self.loggers:
            logger.log_hyperparams(params)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        values = numeric(metrics)
        for logger in self.loggers:
            logger.log_metrics(values, step=step)

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A table: a ``wandb.Table`` for W&B (any logger with ``log_table``), ``<name>.csv`` in the
        log directory of a CSV logger; other loggers skip it."""
        if not self.loggers:
            return
        from lightning.pytorch.loggers import CSVLogger

        for logger in self.loggers:
            log_table = getattr(logger, "log_table", None)
            if callable(log_table):
                log_table(key=name, columns=list(columns), data=[list(row) for row in rows])
            elif isinstance(logger, CSVLogger):
                write_csv_table(logger, name, columns, rows)

    def finalize(self, status: str) -> None:
        """Finalize every logger (one failing does not keep the others open) and end W&B runs."""
        errors: list[BaseException] = []
        for logger in self.loggers:
            try:
                logger.finalize(status)
                finish_wandb_run(logger, status)
            except Exception as error:  # noqa: BLE001 - the others must still be closed
                log.exception("finalizing %s failed", type(logger).__name__)
                errors.append(error)
        if errors and status == "success":
            raise errors[0]


def write_csv_table(logger: Any, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    # One process writes, as for the logger's own files.
    if rank_zero_only.rank != 0:  # type: ignore[attr-defined]  # set on the function by Lightning
        return
    directory = Path(logger.log_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


def finish_wandb_run(logger: Any, status: str) -> None:
    """``WandbLogger.finalize`` leaves its run open (Lightning reuses it), and a later run in this
    process would then log into it: finish it, marked failed unless the stage succeeded."""
    from lightning.pytorch.loggers import WandbLogger

    # ``_experiment``, not ``experiment``: the property would start a run just to finish it.
    run = getattr(logger, "_experiment", None) if isinstance(logger, WandbLogger) else None
    if run is not None and callable(getattr(run, "finish", None)):
        run.finish(exit_code=0 if status == "success" else 1)


@contextmanager
def tracked_run(loggers: Sequence[Logger], config: Mapping[str, Any]) -> Iterator[RunLoggers]:
    """The run's loggers, with ``config`` logged as hyperparameters; finalized on exit, with status
    ``"failed"`` when the block raised."""
    run = RunLoggers(loggers)
    status = "failed"
    try:
        run.log_hyperparams(config)
        yield run
        status = "success"
    finally:
        run.finalize(status)
