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
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger, WandbLogger

log = logging.getLogger(__name__)

# The W&B group of runs that belong together (conf/logger/wandb.yaml reads it): the jobs of a
# multirun set it to their sweep (medsss.run), the steps of an evolve run to that run.
RUN_GROUP_ENV = "MEDSSS_RUN_GROUP"

# Config keys whose values are never logged: credentials that may reach a config through an
# environment interpolation. Matches "token", "hf_token", "wandb_api_key"; not "max_tokens".
SECRET_KEY = re.compile(r"(^|[_.-])(api[_-]?key|token|secret|password|passwd|credentials?)$", re.IGNORECASE)
REDACTED = "<redacted>"


def sweep_group(sweep_dir: str | Path) -> str:
    """The group of a sweep's jobs (and of its summary): ``sweep-<sweep directory name>``."""
    return f"sweep-{Path(sweep_dir).name}"


@contextmanager
def joined_group(group: str) -> Iterator[None]:
    """``$MEDSSS_RUN_GROUP`` set to ``group`` (unless already set) while the block runs: the W&B runs
    of a stage (a summary joins its sweep's jobs) or of its steps (an evolve run's) share a group;
    the variable is as before afterwards."""
    earlier = os.environ.get(RUN_GROUP_ENV)
    if earlier is None:
        os.environ[RUN_GROUP_ENV] = group
    try:
        yield
    finally:
        if earlier is None:
            os.environ.pop(RUN_GROUP_ENV, None)


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
        for logger in self.loggers:
            _log_plain_table(logger, name, columns, rows)

    def log_html_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                       html_column: str, pages: Sequence[str]) -> None:
        """A table with one more column of HTML pages, one per row: W&B shows each page as a
        ``wandb.Html`` cell; other loggers get the plain columns (as :meth:`log_table`)."""
        if len(pages) != len(rows):
            raise ValueError(f"table {name}: {len(pages)} pages for {len(rows)} rows")
        for logger in self.loggers:
            if is_wandb(logger):
                import wandb

                # inject=False: the page is shown as written (W&B would add its own stylesheet).
                data = [[*row, wandb.Html(page, inject=False)] for row, page in zip(rows, pages, strict=True)]
                logger.log_table(key=name, columns=[*columns, html_column], data=data)
            else:
                _log_plain_table(logger, name, columns, rows)

    def log_image(self, name: str, path: str | Path) -> None:
        """An image file (a plot the stage wrote) as a ``wandb.Image`` under ``name``; loggers
        without media skip it (the file is in the run directory)."""
        for logger in self.loggers:
            if is_wandb(logger):
                logger.log_image(key=name, images=[str(path)])

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


def is_wandb(logger: Any) -> TypeGuard[WandbLogger]:
    from lightning.pytorch.loggers import WandbLogger

    return isinstance(logger, WandbLogger)


def _log_plain_table(logger: Any, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from lightning.pytorch.loggers import CSVLogger

    log_table = getattr(logger, "log_table", None)
    if callable(log_table):
        log_table(key=name, columns=list(columns), data=[list(row) for row in rows])
    elif isinstance(logger, CSVLogger):
        write_csv_table(logger, name, columns, rows)


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
