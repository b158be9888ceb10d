"""Stored trees as a tracker table: one row per problem, its tree drawn by the viewer as one page.

Synthesis logs this table (``trees``) through :meth:`medsss.tracking.RunLoggers.log_html_table`: on
W&B every row's page is a ``wandb.Html`` cell, the same self-contained page ``stage=view`` writes,
holding that one problem's tree.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import Any

from medsss.viewer.html import ViewerRun, render_viewer, summary

TREE_TABLE_COLUMNS = ("id", "answer", "stop_reason", "outcome", "nodes", "correct_finishes", "wrong_finishes",
                      "max_depth", "generated_tokens")


def tree_table(records: Iterable[dict[str, Any]], limit: int, source: str = ""
               ) -> tuple[list[str], list[list[Any]], list[str]]:
    """The first ``limit`` stored trees as ``(columns, rows, pages)``: per tree its id, gold answer,
    stop reason, outcome (``both``, ``correct``, ``wrong``, ``none``), node and finish counts, depth
    and generated tokens, and the viewer page of that tree alone."""
    rows: list[list[Any]] = []
    pages: list[str] = []
    for record in islice(records, max(limit, 0)):
        counts = summary(record)
        stats = record.get("stats") or {}
        problem_id = str(record["id"])
        rows.append([problem_id, record.get("answer"), record.get("stop_reason"), counts["outcome"],
                     counts["nodes"], counts["correct"], counts["wrong"], stats.get("max_depth"),
                     stats.get("generated_tokens")])
        run = ViewerRun(label=problem_id, source=source, records=[record])
        pages.append(render_viewer([run], title=f"{problem_id}: search tree"))
    return list(TREE_TABLE_COLUMNS), rows, pages
