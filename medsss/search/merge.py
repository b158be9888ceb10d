"""Merging the tree stores of sharded synthesis runs into one store.

Shards come from ``data.shard=i data.num_shards=n``: each searched every n-th problem into its own
run directory. Merging is only sound when the shards are the parts of ONE search: all n shards
present, the same search settings, data and system prompt, the same model, and trees that agree
where two shards hold the same problem (a shard re-run into a copy, say). Anything else is refused
with one line naming the offending shards; nothing is written then.

This module takes plain :class:`Shard` values; the merge stage reads them from the shards' run
directories (their ``.hydra/config.yaml``, ``trees.jsonl``, ``failures.jsonl`` and ``metrics.json``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsss.io import atomic_writer, write_jsonl
from medsss.search.store import FAILURES_FILE, TREES_FILE

# Fields of a stored tree that say when and how fast it was searched, not what it is: a tree
# stored by two shards counts as the same when everything else agrees.
RUN_FIELDS = ("finished_at",)

# metrics.json counts that add up over shards (rates and peaks do not).
SUMMED_METRICS = (
    "problems", "skipped_rows", "searched_this_run", "failed_this_run", "nodes_this_run",
    "unanswered_after_forcing", "search_seconds", "generation_calls", "generation_requests",
    "generated_sequences", "prompt_tokens", "cached_prompt_tokens", "generated_tokens", "generate_seconds",
    "generation_retries", "generation_calls_given_up", "oom_halvings", "injected_faults",
)

#: How many ids or keys a refusal names before it says how many more there are.
NAMED = 5


class MergeError(ValueError):
    """A set of shards that do not make one search; the message is one line naming them."""


@dataclass
class Shard:
    """One shard's run: where it is, which part of the problems it searched and how."""

    run_dir: Path
    shard: int
    num_shards: int
    model: str
    # What shapes the trees besides the model: search.* (less concurrent_trees), prompt.system and
    # data.* (less shard and num_shards), flattened to dotted keys.
    settings: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] | None = None


@dataclass
class Merged:
    records: list[dict[str, Any]]
    failures: list[dict[str, Any]]  # failures of problems that no shard stored, one per id
    identical_duplicates: int  # trees stored by more than one shard, kept once
    search_hashes: list[str]


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"search": {"width": 2}}`` -> ``{"search.width": 2}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _named(items: Sequence[str]) -> str:
    shown = ", ".join(items[:NAMED])
    return shown + (f" and {len(items) - NAMED} more" if len(items) > NAMED else "")


def check_shards(shards: Sequence[Shard]) -> None:
    """Raise :class:`MergeError` unless the shards are the complete parts of one search."""
    if not shards:
        raise MergeError("merge refused: no shards given (stage.runs)")
    first = shards[0]
    counts = {s.num_shards for s in shards}
    if len(counts) > 1:
        listed = [f"num_shards={s.num_shards} in {s.run_dir}" for s in shards]
        raise MergeError(f"merge refused: the shards disagree on data.num_shards: {_named(listed)}")
    present = {s.shard for s in shards}
    missing = [i for i in range(first.num_shards) if i not in present]
    if missing:
        raise MergeError(
            f"merge refused: missing shard{'s' if len(missing) > 1 else ''} "
            f"{', '.join(map(str, missing))} of data.num_shards={first.num_shards} "
            f"(given: {', '.join(f'shard {s.shard} in {s.run_dir}' for s in shards)})"
        )
    models = {s.model for s in shards} | {str(r["model"]) for s in shards for r in s.records if "model" in r}
    if len(models) > 1:
        listed = [f"'{m}' in {s.run_dir}" for s in shards
                  for m in sorted({s.model} | {str(r["model"]) for r in s.records if "model" in r})]
        raise MergeError(f"merge refused: the shards were searched with different models: {_named(listed)}")
    differences = []
    for shard in shards[1:]:
        for key in sorted(set(first.settings) | set(shard.settings)):
            ours, theirs = first.settings.get(key, "(unset)"), shard.settings.get(key, "(unset)")
            if ours != theirs:
                differences.append(f"{key}={ours!r} in {first.run_dir} but {theirs!r} in {shard.run_dir}")
    if differences:
        raise MergeError(f"merge refused: the shards were searched with different settings: "
                         f"{'; '.join(differences[:NAMED])}"
                         + (f" and {len(differences) - NAMED} more" if len(differences) > NAMED else ""))
    hashes: dict[str, Path] = {}
    for shard in shards:
        for record in shard.records:
            hashes.setdefault(str(record.get("search_hash")), shard.run_dir)
    if len(hashes) > 1:
        listed = [f"{h} in {d}" for h, d in hashes.items()]
        raise MergeError(f"merge refused: the shards' trees were searched with different settings "
                         f"(search_hash {_named(listed)})")


def _content(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in RUN_FIELDS}


def merge_records(shards: Sequence[Shard]) -> Merged:
    """Every problem once, shards in the order given and each shard's trees in store order; the
    failures of problems no shard stored. Checks the shards first (:func:`check_shards`)."""
    check_shards(shards)
    kept: dict[str, tuple[dict[str, Any], Path]] = {}
    conflicts: list[str] = []
    duplicates = 0
    for shard in shards:
        for record in shard.records:
            problem_id = str(record["id"])
            if problem_id not in kept:
                kept[problem_id] = (record, shard.run_dir)
            elif _content(kept[problem_id][0]) == _content(record):
                duplicates += 1
            else:
                conflicts.append(f"'{problem_id}' ({kept[problem_id][1]} and {shard.run_dir})")
    if conflicts:
        raise MergeError(f"merge refused: problem ids stored by more than one shard with different trees: "
                         f"{_named(conflicts)}")
    failures: dict[str, dict[str, Any]] = {}
    for shard in shards:
        for failure in shard.failures:
            if str(failure["id"]) not in kept:
                failures[str(failure["id"])] = failure  # the latest reason of each id
    hashes = sorted({str(r.get("search_hash")) for r, _ in kept.values()})
    return Merged([r for r, _ in kept.values()], list(failures.values()), duplicates, hashes)


def summed_metrics(shards: Sequence[Shard]) -> dict[str, Any]:
    """The additive counts of the shards' ``metrics.json`` files, summed (those present)."""
    totals: dict[str, Any] = {}
    for shard in shards:
        for key in SUMMED_METRICS:
            value = (shard.metrics or {}).get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                totals[key] = totals.get(key, 0) + value
    for key in ("search_seconds", "generate_seconds"):
        if key in totals:
            totals[key] = round(totals[key], 3)
    if totals.get("prompt_tokens"):
        totals["prefix_cache_hit_rate"] = totals.get("cached_prompt_tokens", 0) / totals["prompt_tokens"]
    return totals


def write_merged(merged: Merged, out_dir: Path) -> None:
    """The merged store (and the failures no shard resolved) into ``out_dir``, atomically; an
    existing store there is never overwritten."""
    path = out_dir / TREES_FILE
    if path.exists():
        raise MergeError(f"merge refused: {path} exists; merge into a new run directory (hydra.run.dir)")
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as handle:
        for record in merged.records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    if merged.failures:
        write_jsonl(out_dir / FAILURES_FILE, merged.failures)
