"""Stage ``summarize``: the jobs of a ``--multirun`` sweep as one table with plots (:mod:`medsss.sweep`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medsss.io import write_json
from medsss.stages.common import tracked_stage
from medsss.sweep import write_summary
from medsss.tracking import joined_group, numeric, sweep_group

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    stage = cfg.stage
    sweep_dir = Path(str(stage.dir)).expanduser()
    axes = list(OmegaConf.to_container(stage.axes)) if stage.axes is not None else None  # type: ignore[arg-type]
    with joined_group(sweep_group(sweep_dir)), tracked_stage(cfg, run_dir) as tracking:
        summary = write_summary(sweep_dir, run_dir, axes=axes, value=stage.value, plots=bool(stage.plots))
        columns = list(dict.fromkeys(key for row in summary.rows for key in row))
        tracking.log_table("summary", columns, [[row.get(key) for key in columns] for row in summary.rows])
        for plot in summary.plots:
            tracking.log_image(f"summary/{plot.stem}", plot)
        metrics: dict[str, Any] = {
            "stage": "summarize",
            "dir": str(sweep_dir),
            "jobs": len(summary.rows),
            "jobs_done": sum(1 for row in summary.rows if row["status"] == "done"),
            "swept": summary.swept,
            "summary": str(summary.markdown),
            "plots": [str(plot) for plot in summary.plots],
            "wall_seconds": round(time.perf_counter() - started, 3),
        }
        write_json(run_dir / "metrics.json", metrics)
        tracking.log_metrics({f"summary/{k}": v for k, v in numeric(metrics).items()})
    log.info("sweep summary of %d jobs (%d done): %s", metrics["jobs"], metrics["jobs_done"],
             summary.markdown)
    return metrics
