"""The tree viewer: the stored trees of one or more synthesis runs as ONE self-contained HTML page.

The page needs no server and no network: the template (``viewer.html`` beside this module) holds
all its CSS and JavaScript, and the trees are embedded as JSON in a
``<script type="application/json">`` tag. Node texts are model output, so every ``<`` in the JSON
is written as ``\\u003c`` (a text can neither close the tag nor open a comment inside it) and the
page's script puts texts into the document with ``textContent`` only, never as markup.

Several runs (say, the synthesis runs of successive self-evolution rounds) are shown side by side:
one tree per run for the same problem id.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from medsss.io import JSONLError, read_jsonl
from medsss.search.store import TREES_FILE
from medsss.search.tree import Tree

TEMPLATE = "viewer.html"
DATA_PLACEHOLDER = "/*__VIEWER_DATA__*/"
TITLE_PLACEHOLDER = "__VIEWER_TITLE__"
DATA_ELEMENT_ID = "viewer-data"


class ViewerError(ValueError):
    """A run the viewer cannot show; the message names the file and record."""


@dataclass(frozen=True)
class ViewerRun:
    """One run's stored trees, in store order, and the name its column is shown under."""

    label: str
    source: str
    records: list[dict[str, Any]]


def store_path(source: str | Path) -> Path:
    """The tree store of a run directory, or the store file itself."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / TREES_FILE
    if not path.is_file():
        raise ViewerError(f"{path}: no tree store here (stage.runs takes synthesis run directories "
                          f"or their {TREES_FILE})")
    return path


def default_label(source: str | Path) -> str:
    """The last two parts of the run directory (``synthesize/2026-01-01_10-00-00``,
    ``round_1/synthesize``): short, and distinct for the usual layouts."""
    path = Path(source).expanduser().resolve()
    if path.name == TREES_FILE:
        path = path.parent
    return "/".join(path.parts[-2:])


def load_run(source: str | Path, label: str | None = None) -> ViewerRun:
    """Read and check one run's tree store (a run directory or its ``trees.jsonl``)."""
    path = store_path(source)
    records: list[dict[str, Any]] = []
    first_seen: dict[str, int] = {}
    try:
        for number, record in enumerate(read_jsonl(path), start=1):
            where = f"{path}: record {number}"
            _check_record(record, where)
            problem_id = str(record["id"])
            if problem_id in first_seen:
                raise ViewerError(f"{where}: problem id '{problem_id}' is stored twice "
                                  f"(first in record {first_seen[problem_id]})")
            first_seen[problem_id] = number
            records.append(record)
    except JSONLError as error:
        raise ViewerError(str(error)) from None
    return ViewerRun(label=label or default_label(source), source=str(path), records=records)


def _check_record(record: Any, where: str) -> None:
    """A tree record the page can draw: an id, and nodes whose links point at each other."""
    if not isinstance(record, dict):
        raise ViewerError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("id", "nodes"):
        if key not in record:
            raise ViewerError(f"{where}: no '{key}' field (is this a tree store? "
                              f"trajectories.jsonl holds chains, not trees)")
    nodes = record["nodes"]
    if not isinstance(nodes, list) or not nodes:
        raise ViewerError(f"{where}: 'nodes' must be a non-empty list")
    try:
        tree = Tree.from_dict({"problem_id": str(record["id"]), "nodes": nodes})
    except TypeError as error:  # a missing or unknown node field
        raise ViewerError(f"{where}: a node does not match the tree format ({error})") from None
    for position, node in enumerate(tree.nodes):
        if node.index != position:
            raise ViewerError(f"{where}: node {position} has index {node.index}")
        if (node.parent is None) != (position == 0):
            raise ViewerError(f"{where}: node {position}: only node 0 (the root) has no parent")
        for child in node.children:
            if not 0 < child < len(tree.nodes) or tree.nodes[child].parent != position:
                raise ViewerError(f"{where}: node {position} lists child {child}, whose parent is not it")


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """What the problem list shows and filters on.

    ``outcome``: ``both`` (correct and wrong finishes), ``correct`` (only correct ones), ``wrong``
    (only wrong ones) or ``none`` (no finish node). Every finish node counts, also a wrong one that
    a reflection continued below.
    """
    finishes = [node for node in record["nodes"] if node["kind"] == "finish"]
    correct = sum(1 for node in finishes if node.get("correct") is True)
    wrong = len(finishes) - correct
    outcome = {(True, True): "both", (True, False): "correct", (False, True): "wrong"}.get(
        (correct > 0, wrong > 0), "none")
    return {"nodes": len(record["nodes"]), "correct": correct, "wrong": wrong, "outcome": outcome}


def problem_order(runs: Sequence[ViewerRun], limit: int | None = None) -> list[str]:
    """The problem ids the page lists: every id of the first run in store order, then the ids
    only later runs hold; the first ``limit`` of them."""
    if limit is not None and limit < 0:
        raise ViewerError(f"stage.limit must be >= 0 or null, got {limit}")
    order: list[str] = []
    listed: set[str] = set()
    for run in runs:
        for record in run.records:
            problem_id = str(record["id"])
            if problem_id not in listed:
                listed.add(problem_id)
                order.append(problem_id)
    return order if limit is None else order[:limit]


def viewer_data(runs: Sequence[ViewerRun], limit: int | None = None) -> dict[str, Any]:
    """The page's data: the problem ids in order (the first run's first; at most ``limit``) and,
    per run, the stored record and :func:`summary` of each of those problems it holds."""
    shown = problem_order(runs, limit)
    kept = set(shown)
    return {
        "order": shown,
        "runs": [
            {
                "label": run.label,
                "source": run.source,
                "problems": {
                    str(record["id"]): {**record, "summary": summary(record)}
                    for record in run.records
                    if str(record["id"]) in kept
                },
            }
            for run in runs
        ],
    }


def embed_json(data: Any) -> str:
    """``data`` as JSON that is safe inside a ``<script>`` element: no ``<`` at all."""
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError as error:  # NaN or infinity: the browser's JSON.parse would reject the page
        raise ViewerError(f"a tree holds a value JSON cannot carry ({error})") from None
    return text.replace("<", "\\u003c")


def render_viewer(runs: Sequence[ViewerRun], limit: int | None = None,
                  title: str = "medsss search trees") -> str:
    """The whole page: the template with the runs' trees embedded."""
    template = resources.files("medsss.viewer").joinpath(TEMPLATE).read_text(encoding="utf-8")
    head, data_slot, tail = template.partition(DATA_PLACEHOLDER)
    if not data_slot:
        raise ViewerError(f"{TEMPLATE}: the data placeholder {DATA_PLACEHOLDER} is missing")
    escaped_title = html.escape(title)
    return (head.replace(TITLE_PLACEHOLDER, escaped_title) + embed_json(viewer_data(runs, limit))
            + tail.replace(TITLE_PLACEHOLDER, escaped_title))
