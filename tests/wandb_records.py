"""Reading an offline W&B run back in tests: its ``run-<id>.wandb`` transaction log.

The installed wandb (0.31, whose writer is the Go ``wandb-core``) ships no Python reader for it,
so this is one: the file is a LevelDB-style log (after a 7-byte header ``:W&B``, magic, version) of
32 KiB blocks; each record has a 7-byte header (CRC32C, length as 2 little-endian bytes, type:
1 full, 2 first, 3 middle, 4 last) and a body that is one serialized ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32768
FILE_HEADER = 7
RECORD_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    position, pending = FILE_HEADER, b""
    while position + RECORD_HEADER <= len(data):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < RECORD_HEADER:  # the writer pads a block's tail with zeros
            position += left_in_block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position:position + RECORD_HEADER])
        body = data[position + RECORD_HEADER:position + RECORD_HEADER + length]
        position += RECORD_HEADER + length
        if kind == FULL:
            yield body
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE:
            pending += body
        elif kind == LAST:
            yield pending + body
            pending = b""


@dataclass
class OfflineRun:
    """What one offline run logged: its group and job type, its config, the last value of every
    summary key (nested keys joined by ``/``), and its artifacts' file paths by artifact name."""

    directory: Path
    group: str = ""
    job_type: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, list[str]] = field(default_factory=dict)
    local_files: dict[str, str] = field(default_factory=dict)  # artifact entry path -> staged copy


def read_offline_run(directory: Path, timeout: float = 60.0) -> OfflineRun:
    """Parse ``<directory>/run-*.wandb`` (``directory``: a ``wandb/offline-run-*`` folder).

    ``run.finish()`` returns before wandb-core has written the log (the process's exit waits for
    it, a test in the same process does not): the log is read again until it ends with the run's
    ``exit`` record, for at most ``timeout`` seconds."""
    from wandb.proto import wandb_internal_pb2

    [log_file] = directory.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = []
        for raw in raw_records(log_file):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            records.append(record)
        if any(record.WhichOneof("record_type") == "exit" for record in records):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{log_file}: no exit record after {timeout} s ({len(records)} records)")
        time.sleep(0.2)
    run = OfflineRun(directory)
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.group, run.job_type = record.run.run_group, record.run.job_type
            _update(run.config, record.run.config.update)
        elif kind == "config":
            _update(run.config, record.config.update)
        elif kind == "summary":
            _update(run.summary, record.summary.update)
        elif kind == "history":
            _update(run.summary, record.history.item)
        elif kind == "artifact":
            paths = [entry.path for entry in record.artifact.manifest.contents]
            run.artifacts[record.artifact.name] = paths
            run.local_files.update({entry.path: entry.local_path for entry in record.artifact.manifest.contents})
    return run


def _update(target: dict[str, Any], items: Any) -> None:
    for item in items:
        key = "/".join(item.nested_key) if item.nested_key else item.key
        target[key] = json.loads(item.value_json)
