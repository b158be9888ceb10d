"""Stage ``merge``: the tree stores of sharded synthesis runs as one store.

Each shard's run directory says what it is in the config Hydra saved there (``.hydra/config.yaml``):
``data.shard`` of ``data.num_shards``, the search settings, the model and the system prompt.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from medsss.io import JSONLError, read_json, read_jsonl, write_json
from medsss.search.export import write_trajectories
from medsss.search.merge import MergeError, Shard, flatten, merge_records, summed_metrics, write_merged
from medsss.search.store import FAILURES_FILE, TREES_FILE
from medsss.stages.view import as_list

log = logging.getLogger(__name__)

SAVED_CONFIG = Path(".hydra") / "config.yaml"
MULTIRUN_FILE = "multirun.yaml"
# Settings that change how a shard ran, not what its trees are.
SCHEDULING_KEYS = ("search.concurrent_trees", "search._target_", "data._target_")


def read_shard(run_dir: str | Path) -> Shard:
    """A shard as its run directory holds it: saved config, stored trees, failures, metrics."""
    run_dir = Path(run_dir).expanduser()
    config_path = run_dir / SAVED_CONFIG
    if not config_path.is_file():
        raise MergeError(f"merge refused: {config_path} not found: "
                         f"{run_dir} is not a synthesis run directory")
    try:
        config = cast(DictConfig, OmegaConf.load(config_path))
        stage = OmegaConf.select(config, "stage.name")
        if stage != "synthesize":
            raise MergeError(f"merge refused: {config_path}: stage.name is {stage!r}, not a synthesis run")
        parts = {key: OmegaConf.to_container(config[key], resolve=True)
                 for key in ("search", "data", "model") if key in config}
        system_prompt = OmegaConf.select(config, "prompt.system", default=None)
    except OmegaConfBaseException as error:
        raise MergeError(f"merge refused: {config_path}: cannot read the saved config "
                         f"({type(error).__name__}: {str(error).splitlines()[0]})") from None
    for key in ("search", "data", "model"):
        if not isinstance(parts.get(key), dict):
            raise MergeError(f"merge refused: {config_path}: no '{key}' settings (not a synthesis run)")
    data = cast(dict[str, Any], parts["data"])
    model = cast(dict[str, Any], parts["model"])
    if "id" not in model:
        raise MergeError(f"merge refused: {config_path}: no model.id")
    settings = flatten({"search": parts["search"],
                        "data": {k: v for k, v in data.items() if k not in ("shard", "num_shards")}})
    settings["prompt.system"] = system_prompt
    for key in SCHEDULING_KEYS:
        settings.pop(key, None)
    try:
        records = list(read_jsonl(run_dir / TREES_FILE))
        failures = list(read_jsonl(run_dir / FAILURES_FILE))
    except JSONLError as error:
        raise MergeError(f"merge refused: {error}") from None
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict) or "id" not in record or "nodes" not in record:
            raise MergeError(f"merge refused: {run_dir / TREES_FILE}: record {number} is not a stored tree")
    metrics_path = run_dir / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.is_file() else None
    return Shard(run_dir=run_dir, shard=int(data.get("shard", 0)), num_shards=int(data.get("num_shards", 1)),
                 model=str(model["id"]), settings=settings, records=records, failures=failures,
                 metrics=metrics)


def shard_dirs(sources: list[str]) -> list[Path]:
    """The run directories named, where a multirun's sweep directory (it holds ``multirun.yaml``)
    stands for the run directories of all its jobs; a directory named twice counts once."""
    dirs: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if not (path / SAVED_CONFIG).is_file() and (path / MULTIRUN_FILE).is_file():
            named = sorted(p for p in path.iterdir() if (p / SAVED_CONFIG).is_file())
            if not named:
                raise MergeError(f"merge refused: the sweep directory {path} holds no run directories")
        else:
            named = [path]
        for candidate in named:
            if candidate.resolve() not in {d.resolve() for d in dirs}:
                dirs.append(candidate)
    return dirs


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    # In shard order (stable: two copies of one shard keep the order given).
    shards = sorted((read_shard(d) for d in shard_dirs(as_list(cfg.stage.runs))), key=lambda s: s.shard)
    merged = merge_records(shards)
    for shard in shards:
        if shard.metrics is None:
            log.warning("%s has no metrics.json: did that shard's run finish?", shard.run_dir)
        elif shard.metrics.get("stored_trees", len(shard.records)) + len(shard.failures) < shard.metrics.get(
                "problems", 0):
            log.warning("%s stored %d of its %d problems (%d failed): was it killed?", shard.run_dir,
                        len(shard.records), shard.metrics["problems"], len(shard.failures))
    write_merged(merged, run_dir)
    counts = write_trajectories(merged.records, run_dir)
    metrics = {
        **summed_metrics(shards),
        "stage": "merge",
        "model": shards[0].model,
        "shards": [str(s.run_dir) for s in shards],
        "num_shards": shards[0].num_shards,
        "search_hash": merged.search_hashes[0] if len(merged.search_hashes) == 1 else None,
        "stored_trees": len(merged.records),
        "identical_duplicates": merged.identical_duplicates,
        "unresolved_failures": len(merged.failures),
        "nodes": sum(len(r["nodes"]) for r in merged.records),
        **{f"trajectories_{k}": v for k, v in counts.items()},
        "wall_seconds": round(time.perf_counter() - started, 3),
    }
    write_json(run_dir / "metrics.json", metrics)
    log.info("merged %d shards into %s: %d trees (%d identical duplicates kept once), "
             "%d unresolved failures; train on it with data.trees=%s", len(shards), run_dir / TREES_FILE,
             len(merged.records), merged.identical_duplicates, len(merged.failures), run_dir)
    return metrics
