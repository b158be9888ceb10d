"""Stage ``view``: the trees of one or more synthesis runs as one self-contained HTML page."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

from medsss.io import write_json
from medsss.viewer.html import ViewerError, load_run, problem_order, render_viewer

log = logging.getLogger(__name__)

PAGE_FILE = "trees.html"


def as_list(value: Any) -> list[str]:
    """One path or a list of them (``stage.runs=<dir>`` or ``stage.runs=[<dir>,<dir>]``)."""
    if value is None:
        return []
    if isinstance(value, (ListConfig, list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    stage = cfg.stage
    sources = as_list(stage.runs)
    if not sources:
        raise ViewerError("stage.runs is empty: name one or more synthesis run directories "
                          "(stage.runs=[outputs/synthesize/<run>,...])")
    labels = as_list(stage.labels)
    if labels and len(labels) != len(sources):
        raise ViewerError(f"stage.labels has {len(labels)} names for {len(sources)} runs")
    runs = [load_run(source, labels[i] if labels else None) for i, source in enumerate(sources)]
    page = render_viewer(runs, limit=stage.limit, title=stage.title)
    out = Path(stage.out).expanduser() if stage.out else run_dir / PAGE_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    page_bytes = len(page.encode("utf-8"))
    metrics: dict[str, Any] = {
        "stage": "view",
        "runs": [r.source for r in runs],
        "trees_stored": sum(len(r.records) for r in runs),
        "problems_shown": len(problem_order(runs, stage.limit)),
        "page": str(out),
        "page_bytes": page_bytes,
        "wall_seconds": round(time.perf_counter() - started, 3),
    }
    write_json(run_dir / "metrics.json", metrics)
    log.info("tree viewer written: %s (%d runs, %.1f MB); open %s in a browser",
             out, len(runs), page_bytes / 1e6, out.resolve().as_uri())
    return metrics
