"""Kill anywhere: SIGKILL a stage's process at a seeded random moment, rerun the same command in
the same run directory, and check that nothing was lost, duplicated or changed.

Per stage case: one uninterrupted reference run, whose wall time bounds the kill moments; then per
seed a run killed ``uniform(0, reference wall time)`` seconds after its process started (during
imports, model loading, the middle of a JSONL line or a checkpoint: wherever that lands), a
snapshot of its run directory right after the kill, and a rerun of the same command to the end.
The stage's checker compares the snapshot, the rerun and the reference and names every broken
invariant; an empty list is a resume that lost nothing.

A ``torn`` trial also tears what the killed run was writing, as a kill in the middle of that
write leaves it: half a record at the end of every append-only JSONL file (tree store, failures,
evaluation cache, curriculum pass rates), or the newest training checkpoint cut to half its size.

As a script it runs every case for several seeds and prints the figures table::

    .venv/bin/python tests/kill_harness.py --seeds 5
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_BENCHMARKS = ROOT / "tests" / "data" / "medical_benchmarks"
USMLE_SAMPLE = ROOT / "medsss" / "data" / "bundled" / "usmle_sample.jsonl"
# medsss.faults' deterministic kill point and generation faults: never inherited here.
FAULT_ENVS = ("MEDSSS_KILL_AT", "MEDSSS_FAULT_GENERATE")
# Exactness of a resumed training run against the uninterrupted one (weights and losses).
EXACT = 1e-6


# -- files -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Every file of a run directory: content and modification time, by relative path."""

    files: dict[str, bytes]
    mtimes: dict[str, int]

    @classmethod
    def of(cls, run_dir: Path) -> Snapshot:
        paths = [p for p in sorted(run_dir.rglob("*")) if p.is_file()] if run_dir.exists() else []
        return cls(
            {str(p.relative_to(run_dir)): p.read_bytes() for p in paths},
            {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in paths},
        )

    def get(self, name: str) -> bytes:
        return self.files.get(name, b"")

    def under(self, folder: str) -> dict[str, tuple[bytes, int]]:
        prefix = folder.rstrip("/") + "/"
        return {k: (v, self.mtimes[k]) for k, v in self.files.items() if k.startswith(prefix)}


def kept_lines(data: bytes) -> list[bytes]:
    """The records a reader keeps: every newline-terminated line (a torn tail is dropped)."""
    return [line for line in data.split(b"\n")[:-1] if line.strip()]


def torn_tail(data: bytes) -> bytes:
    return data.split(b"\n")[-1]


def records(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in kept_lines(data)]


def tear_last_record(path: Path, spare: bytes) -> str:
    """Leave ``path`` as a kill in the middle of writing its last record would: that record cut
    half-way, no newline. A file without a record gets the first half of ``spare`` (a record the
    reference run wrote there) instead. Returns what was torn."""
    data = path.read_bytes() if path.exists() else b""
    lines = kept_lines(data)
    if lines:
        body = data[: len(data) - len(torn_tail(data))]  # any torn tail the kill left goes first
        last = lines[-1]
        path.write_bytes(body[: len(body) - len(last) - 1] + last[: len(last) // 2])
        return f"{path.name}: record {len(lines)} cut to {len(last) // 2} of {len(last)} bytes"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(spare[: len(spare) // 2])
    return f"{path.name}: half a first record ({len(spare) // 2} bytes)"


def append_only(name: str, at_kill: bytes, final: bytes) -> list[str]:
    """Broken invariants of an append-only JSONL file: every record kept at the kill is still
    there, unchanged and in place; no torn record is left."""
    broken = []
    before, after = kept_lines(at_kill), kept_lines(final)
    changed = [k + 1 for k, line in enumerate(before) if k >= len(after) or after[k] != line]
    if changed:
        broken.append(f"{name}: records {changed[:5]} stored before the kill changed or vanished")
    if torn_tail(final).strip():
        broken.append(f"{name}: still ends in a torn record after the rerun")
    return broken


def without(record: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in keys}


# -- running a stage ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    returncode: int
    seconds: float
    log_tail: str


def command(overrides: list[str], run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "medsss.run", *overrides, f"hydra.run.dir={run_dir}"]


def environment() -> dict[str, str]:
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }
    for name in FAULT_ENVS:
        env.pop(name, None)
    return env


def run_to_end(overrides: list[str], run_dir: Path, timeout: float) -> Run:
    started = time.perf_counter()
    done = subprocess.run(
        command(overrides, run_dir),
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(done.returncode, time.perf_counter() - started, done.stderr[-3000:])


def run_and_kill(overrides: list[str], run_dir: Path, after: float, log: Path) -> tuple[bool, int | None]:
    """Start the command and SIGKILL it ``after`` seconds later. Returns whether it was killed, and
    its exit status when it ended first."""
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            command(overrides, run_dir), cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL, stderr=handle
        )
        try:
            try:
                return False, process.wait(timeout=after)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True, None
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


# -- cases ----------------------------------------------------------------------------------------


@dataclass
class Trial:
    """What a checker sees: the reference run, the killed run's directory as the kill left it
    (torn records included) and as the rerun left it."""

    reference: Path
    run_dir: Path
    at_kill: Snapshot
    final: Snapshot
    details: dict[str, Any] = field(default_factory=dict)  # measured figures a checker reports


@dataclass(frozen=True)
class StageCase:
    name: str
    overrides: Callable[
        [Path], list[str]
    ]  # the command's overrides; builds its inputs under the folder given
    check: Callable[[Trial], list[str]]  # broken invariants
    landing: Callable[[Snapshot, Path], str]  # where the kill landed, from the snapshot (and the reference)
    tear: Callable[[Path, Path], list[str]]  # tears the records being written (run dir, reference)
    timeout: float = 600.0


@dataclass
class Outcome:
    stage: str
    seed: int
    torn: bool
    kill_after: float  # seconds after the process started
    killed: bool  # False: the run ended before its kill moment
    landed: str
    broken: list[str]
    rerun_seconds: float
    details: dict[str, Any]

    @property
    def lost_nothing(self) -> bool:
        return not self.broken


def _start_landing(snapshot: Snapshot) -> str | None:
    """Before Hydra wrote the run's config: still importing and composing."""
    return None if any(k.startswith(".hydra/") for k in snapshot.files) else "start-up (imports, compose)"


# synthesize --------------------------------------------------------------------------------------

SYNTH_PROBLEMS = 6


def synthesize_overrides(inputs: Path) -> list[str]:
    # Two trees at a time spread the store's appends over the run: kills land between them.
    return [
        "model=tiny",
        "search=tiny",
        "logger=none",
        "backend=hf",
        f"data.limit={SYNTH_PROBLEMS}",
        "search.concurrent_trees=2",
    ]


def trees_by_id(data: bytes) -> dict[str, dict[str, Any]]:
    """Stored trees by id, without the moment each was stored (the only field a rerun changes)."""
    return {str(r["id"]): without(r, "finished_at") for r in records(data)}


def check_synthesize(trial: Trial) -> list[str]:
    from medsss.io import JSONLError, read_jsonl

    final = trial.final.get("trees.jsonl")
    broken = append_only("trees.jsonl", trial.at_kill.get("trees.jsonl"), final)
    ids = [str(r["id"]) for r in records(final)]
    twice = sorted(i for i, n in Counter(ids).items() if n > 1)
    reference = trees_by_id((trial.reference / "trees.jsonl").read_bytes())
    missing = sorted(set(reference) - set(ids))
    if twice:
        broken.append(f"trees.jsonl: stored more than once: {twice}")
    if missing:
        broken.append(f"trees.jsonl: never stored: {missing}")
    differ = sorted(i for i, tree in trees_by_id(final).items() if tree != reference.get(i))
    if differ:
        broken.append(f"trees {differ} differ from the uninterrupted run's")
    try:
        list(read_jsonl(trial.run_dir / "failures.jsonl"))
    except JSONLError as error:
        broken.append(f"failures.jsonl: {error}")
    trajectories = {r["id"]: r for r in records(trial.final.get("trajectories.jsonl"))}
    if trajectories != {r["id"]: r for r in records((trial.reference / "trajectories.jsonl").read_bytes())}:
        broken.append("trajectories.jsonl differs from the uninterrupted run's")
    return broken


def landing_synthesize(snapshot: Snapshot, reference: Path) -> str:
    stored = len(kept_lines(snapshot.get("trees.jsonl")))
    torn = " + torn record" if torn_tail(snapshot.get("trees.jsonl")).strip() else ""
    if "metrics.json" in snapshot.files:
        return "after the last tree (trajectories, metrics)"
    if stored == 0 and not torn:
        return _start_landing(snapshot) or "before the first tree"
    return f"{stored} of {SYNTH_PROBLEMS} trees stored{torn}"


def tear_synthesize(run_dir: Path, reference: Path) -> list[str]:
    spare = (reference / "trees.jsonl").read_bytes().split(b"\n")[0]
    failure = json.dumps({"id": "planted", "reason": "a kill mid-write", "time": 0.0}).encode()
    return [
        tear_last_record(run_dir / "trees.jsonl", spare),
        tear_last_record(run_dir / "failures.jsonl", failure),
    ]


# evaluate ----------------------------------------------------------------------------------------

EVAL_ITEMS = 2  # per benchmark of the bundled suite (7 benchmarks)


def evaluate_overrides(inputs: Path) -> list[str]:
    prm = inputs / "random_prm"
    if not (prm / "prm_config.json").exists():
        _save_random_prm(prm)
    # One item per engine call: the cache grows item by item, so kills land between items.
    return [
        "+experiment=eval_bench",
        "model=tiny",
        "backend=hf",
        f"paths.data_dir={BUNDLED_BENCHMARKS}",
        f"stage.prm.path={prm}",
        f"stage.limit={EVAL_ITEMS}",
        "stage.n=4",
        "stage.max_tokens=12",
        "stage.bootstrap=50",
        "stage.subsample_rounds=5",
        "stage.items_per_call=1",
        "logger=none",
    ]


def _save_random_prm(out: Path) -> None:
    """The tiny model with a seeded random value head: a PRM whose scores go into the cache."""
    import torch
    from hydra.utils import instantiate
    from transformers import AutoTokenizer

    from medsss.config_schema import compose
    from medsss.training.prm_model import ProcessRewardModel

    path = instantiate(compose(["model=tiny"]).model).resolve()
    torch.manual_seed(0)
    ProcessRewardModel.from_causal_lm(path).save(out)
    AutoTokenizer.from_pretrained(path).save_pretrained(out)


def _caches(folder: Path) -> list[str]:
    return sorted(f"cache/{p.name}" for p in (folder / "cache").glob("*.jsonl"))


def check_evaluate(trial: Trial) -> list[str]:
    broken: list[str] = []
    uncached = 0
    for name in _caches(trial.reference):
        final = trial.final.get(name)
        broken += append_only(name, trial.at_kill.get(name), final)
        ids = [str(r["id"]) for r in records(final)]
        if len(ids) != len(set(ids)):
            broken.append(
                f"{name}: an item cached twice: {sorted(i for i, n in Counter(ids).items() if n > 1)}"
            )
        reference = {str(r["id"]): r for r in records((trial.reference / name).read_bytes())}
        if {str(r["id"]): r for r in records(final)} != reference:
            broken.append(f"{name}: cached samples or scores differ from the uninterrupted run's")
        uncached += len(reference) - len(kept_lines(trial.at_kill.get(name)))
    # stage.items_per_call=1: one engine call per item the cache did not hold at the kill.
    metrics = json.loads(trial.final.get("metrics.json"))
    trial.details["generated_again"] = metrics["generation_calls"] - uncached
    if metrics["generation_calls"] != uncached:
        broken.append(
            f"the rerun made {metrics['generation_calls']} generation calls for {uncached} "
            "items missing from the cache (cached items generated again)"
        )
    for name in (
        "results.csv",
        "grid.csv",
        *sorted(f"predictions/{p.name}" for p in (trial.reference / "predictions").glob("*.jsonl")),
    ):
        if trial.final.get(name) != (trial.reference / name).read_bytes():
            broken.append(f"{name} differs from the uninterrupted run's")
    return broken


def landing_evaluate(snapshot: Snapshot, reference: Path) -> str:
    cached = sum(len(kept_lines(snapshot.get(name))) for name in _caches(reference))
    total = sum(len(kept_lines((reference / name).read_bytes())) for name in _caches(reference))
    if "metrics.json" in snapshot.files:
        return "after the results (metrics written)"
    if cached == 0:
        return _start_landing(snapshot) or "before the first cached item"
    return f"{cached} of {total} items cached" if cached < total else "all items cached (tables, plots)"


def tear_evaluate(run_dir: Path, reference: Path) -> list[str]:
    """The cache being written at the kill: the newest cache file (the first benchmark's without one)."""
    written = (
        sorted((run_dir / "cache").glob("*.jsonl"), key=lambda p: p.stat().st_mtime_ns)
        if (run_dir / "cache").exists()
        else []
    )
    name = f"cache/{written[-1].name}" if written else _caches(reference)[0]
    spare = (reference / name).read_bytes().split(b"\n")[0]
    return [tear_last_record(run_dir / name, spare)]


# sft and prm ------------------------------------------------------------------------------------


TRAINING_PROBLEMS = 12  # stored trees, one right and one wrong chain each
TRAINING_EPOCHS = 4


def training_overrides(experiment: str) -> Callable[[Path], list[str]]:
    def overrides(inputs: Path) -> list[str]:
        trees = inputs / "training_trees"
        if not (trees / "trees.jsonl").exists():
            from helpers import write_training_trees

            write_training_trees(trees, problems=TRAINING_PROBLEMS)
        # A checkpoint after every step, all kept (the reference's are what a resumed run's are
        # compared with); several epochs of one chain a step, so that training is a good share of
        # the run and kills land in epochs, at their boundaries and in checkpoint writes.
        return [
            f"+experiment={experiment}",
            f"data.trees={trees}",
            "model=tiny",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "stage.batch_size=1",
            "stage.dtype=float32",
            f"trainer.max_epochs={TRAINING_EPOCHS}",
            "stage.checkpoint_every=1",
            "stage.callbacks.model_checkpoint.save_top_k=-1",
            "stage.ckpt_path=latest",
        ]

    return overrides


def _checkpoint(data: bytes) -> dict[str, Any] | None:
    """A checkpoint file's content, or None when it is torn (or empty)."""
    import torch

    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception:  # noqa: BLE001 - any unreadable file is a torn checkpoint here
        return None


def _step_checkpoints(snapshot: Snapshot) -> dict[str, dict[str, Any] | None]:
    return {
        name: _checkpoint(data)
        for name, data in snapshot.files.items()
        if name.startswith("checkpoints/") and name.endswith(".ckpt")
    }


def _max_difference(a: Any, b: Any) -> float:
    """The largest absolute difference between two nested structures of tensors and numbers
    (infinite when their layouts differ)."""
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return float("inf")
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return float("inf")
        return max((_max_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return float("inf")
        return max((_max_difference(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b))
    return 0.0 if a == b else float("inf")


def _training_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What a resume restores: the trained weights and the optimizer's state (and the step)."""
    return {
        "global_step": checkpoint["global_step"],
        "state_dict": checkpoint["state_dict"],
        "optimizer_states": checkpoint["optimizer_states"],
    }


def _by_step(folder: Path) -> dict[int, dict[str, Any]]:
    """The complete step checkpoints of a run by global step (a torn one left by a kill is kept
    beside them: Lightning saves that step again under ``-v1``)."""
    found = {}
    for path in (folder / "checkpoints").glob("*step=*.ckpt"):
        checkpoint = _checkpoint(path.read_bytes())
        if checkpoint is not None:
            found[int(checkpoint["global_step"])] = checkpoint
    return found


def _final_weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return {
        str(p.relative_to(folder)): load_file(p) for p in sorted((folder / "final").rglob("*.safetensors"))
    }


def check_training(trial: Trial) -> list[str]:
    broken = []
    metrics = json.loads(trial.final.get("metrics.json"))
    reference_metrics = json.loads((trial.reference / "metrics.json").read_text())
    readable = {name: c for name, c in _step_checkpoints(trial.at_kill).items() if c is not None}
    resumable = max((int(c["global_step"]) for c in readable.values()), default=0)
    trial.details.update(resumed_from=resumable, start_step=metrics["start_step"])
    if metrics["start_step"] != resumable:
        broken.append(
            f"the rerun started at step {metrics['start_step']}, not at the newest complete "
            f"checkpoint's step {resumable}"
        )
    if metrics["global_steps"] != reference_metrics["global_steps"]:
        broken.append(
            f"the rerun ended at step {metrics['global_steps']}, the uninterrupted run at "
            f"{reference_metrics['global_steps']}"
        )
    for name, data in trial.at_kill.files.items():  # checkpoints the kill left complete stay as they were
        if name in readable and "last" not in name and trial.final.get(name) != data:
            broken.append(f"{name}, complete at the kill, was changed by the rerun")
    reference = _by_step(trial.reference)
    if resumable:  # the state the rerun resumed is the uninterrupted run's at that step
        resumed = next(c for c in readable.values() if int(c["global_step"]) == resumable)
        difference = _max_difference(_training_state(resumed), _training_state(reference[resumable]))
        trial.details["resumed_state_max_diff"] = difference
        if difference > 0:
            broken.append(
                f"the state resumed at step {resumable} differs from the uninterrupted run's "
                f"by {difference:.3g} (weights, optimizer moments or step)"
            )
    # Where a resumed run's steps first differ from the uninterrupted run's (None: they never do).
    mine = _by_step(trial.run_dir)
    diverged = [
        step
        for step in sorted(mine)
        if step > resumable
        and step in reference
        and _max_difference(_training_state(mine[step]), _training_state(reference[step])) > EXACT
    ]
    trial.details["first_diverged_step"] = diverged[0] if diverged else None
    trial.details["final_weights_max_diff"] = _max_difference(
        _final_weights(trial.run_dir), _final_weights(trial.reference)
    )
    losses = [key for key in ("train_loss", "val_loss") if key in reference_metrics]
    trial.details["loss_diffs"] = {
        key: abs(metrics[key] - reference_metrics[key]) for key in losses if key in metrics
    }
    missing = [key for key in losses if key not in metrics]
    if missing:  # a rerun that resumed at the last step trains nothing: it reports the earlier run's
        broken.append(f"metrics.json lacks {missing}, which the uninterrupted run reported")
    return broken


def landing_training(snapshot: Snapshot, reference: Path) -> str:
    if "metrics.json" in snapshot.files:
        return "after training (saving the final model)"
    checkpoints = _step_checkpoints(snapshot)
    steps = [int(c["global_step"]) for c in checkpoints.values() if c is not None]
    torn = " + torn checkpoint" if any(c is None for c in checkpoints.values()) else ""
    if not steps:
        return _start_landing(snapshot) or f"before the first checkpoint{torn}"
    return f"training, newest checkpoint step {max(steps)}{torn}"


def tear_training(run_dir: Path, reference: Path) -> list[str]:
    """The newest checkpoint cut to half its size, as a kill while it was being copied into place
    leaves it (Lightning moves a checkpoint from ``/tmp``: a copy across file systems); none yet:
    half of the reference's first one."""
    found = (
        sorted((run_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
        if (run_dir / "checkpoints").exists()
        else []
    )
    if found:
        data = found[-1].read_bytes()
        found[-1].write_bytes(data[: len(data) // 2])
        return [f"{found[-1].name} cut to {len(data) // 2} of {len(data)} bytes"]
    first = min((reference / "checkpoints").glob("*step=*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    data = first.read_bytes()
    (run_dir / "checkpoints" / first.name).write_bytes(data[: len(data) // 2])
    return [f"{first.name}: half of a first checkpoint ({len(data) // 2} bytes)"]


# curriculum -------------------------------------------------------------------------------------

CURRICULUM_QUESTIONS = 12


def curriculum_overrides(inputs: Path) -> list[str]:
    return [
        "stage=curriculum",
        "model=tiny",
        "search=tiny",
        "backend=hf",
        "logger=none",
        f"data.limit={CURRICULUM_QUESTIONS}",
        "stage.k=4",
        "search.concurrent_trees=1",
    ]


def check_curriculum(trial: Trial) -> list[str]:
    final = trial.final.get("pass_rates.jsonl")
    broken = append_only("pass_rates.jsonl", trial.at_kill.get("pass_rates.jsonl"), final)
    ids = [str(r["id"]) for r in records(final)]
    if len(ids) != len(set(ids)):
        broken.append(f"pass_rates.jsonl: a question answered twice: {ids}")
    reference = {str(r["id"]): r for r in records((trial.reference / "pass_rates.jsonl").read_bytes())}
    if {str(r["id"]): r for r in records(final)} != reference:
        broken.append("pass_rates.jsonl differs from the uninterrupted run's")
    if trial.final.get("seeds.jsonl") != (trial.reference / "seeds.jsonl").read_bytes():
        broken.append("seeds.jsonl differs from the uninterrupted run's")
    return broken


def landing_curriculum(snapshot: Snapshot, reference: Path) -> str:
    answered = len(kept_lines(snapshot.get("pass_rates.jsonl")))
    if "metrics.json" in snapshot.files:
        return "after the last question (tables, metrics)"
    if answered == 0:
        return _start_landing(snapshot) or "before the first question answered"
    return f"{answered} of {CURRICULUM_QUESTIONS} questions answered"


def tear_curriculum(run_dir: Path, reference: Path) -> list[str]:
    spare = (reference / "pass_rates.jsonl").read_bytes().split(b"\n")[0]
    return [tear_last_record(run_dir / "pass_rates.jsonl", spare)]


# evolve -----------------------------------------------------------------------------------------


def evolve_overrides(rounds: int) -> Callable[[Path], list[str]]:
    def overrides(inputs: Path) -> list[str]:
        from test_evolve import TINY_ROUNDS  # the two-round evolve run on the tiny model of its own tests

        return [*TINY_ROUNDS, f"stage.rounds={rounds}"]

    return overrides


def _manifest(snapshot: Snapshot) -> dict[str, dict[str, Any]]:
    data = snapshot.get("manifest.json")
    return {row["step"]: row for row in json.loads(data)["steps"]} if data else {}


def check_evolve(trial: Trial) -> list[str]:
    broken = []
    at_kill, final = _manifest(trial.at_kill), _manifest(trial.final)
    reference = {
        row["step"]: row for row in json.loads((trial.reference / "manifest.json").read_text())["steps"]
    }
    if set(final) != set(reference) or any(row["status"] != "done" for row in final.values()):
        broken.append(
            f"manifest: steps {sorted((k, v['status']) for k, v in final.items())}, the uninterrupted "
            f"run's {sorted(reference)} all done"
        )
    for step, row in at_kill.items():
        after = final.get(step, {})
        if row["status"] == "done":
            if after != row:
                broken.append(f"manifest: {step}, done at the kill, has a changed record")
            if trial.final.under(step) != trial.at_kill.under(step):
                broken.append(f"{step}: done at the kill, its files changed on the rerun")
        elif after.get("attempts") != row["attempts"] + 1:
            broken.append(
                f"manifest: {step} ({row['status']} at the kill, attempt {row['attempts']}) "
                f"ended with attempt {after.get('attempts')}, not resumed once"
            )
    for step in set(final) - set(at_kill):
        if final[step].get("attempts") != 1:
            broken.append(
                f"manifest: {step} started after the kill but counts {final[step]['attempts']} attempts"
            )
    first = "rounds/1/synthesize/trees.jsonl"  # upstream of every training step: equal to the reference
    if trees_by_id(trial.final.get(first)) != trees_by_id((trial.reference / first).read_bytes()):
        broken.append(f"{first} differs from the uninterrupted run's")
    if "evolve.md" not in trial.final.files:
        broken.append("evolve.md was not written")
    trial.details["resumed_step"] = next((s for s, r in at_kill.items() if r["status"] != "done"), None)
    return broken


def landing_evolve(snapshot: Snapshot, reference: Path) -> str:
    manifest = _manifest(snapshot)
    if not manifest:
        return _start_landing(snapshot) or "before the first step"
    running = [step for step, row in manifest.items() if row["status"] != "done"]
    if running:
        return f"in {running[0]}"
    planned = json.loads((reference / "manifest.json").read_text())["steps"]
    return f"after {list(manifest)[-1]}" if len(manifest) < len(planned) else "after the last step"


def tear_nothing(run_dir: Path, reference: Path) -> list[str]:
    return []


# -- the harness ----------------------------------------------------------------------------------

CASES: dict[str, StageCase] = {
    "synthesize": StageCase(
        "synthesize", synthesize_overrides, check_synthesize, landing_synthesize, tear_synthesize
    ),
    "evaluate": StageCase("evaluate", evaluate_overrides, check_evaluate, landing_evaluate, tear_evaluate),
    "sft": StageCase(
        "sft", training_overrides("sft_policy"), check_training, landing_training, tear_training
    ),
    "prm": StageCase("prm", training_overrides("prm_soft"), check_training, landing_training, tear_training),
    "curriculum": StageCase(
        "curriculum", curriculum_overrides, check_curriculum, landing_curriculum, tear_curriculum
    ),
    "evolve": StageCase(
        "evolve", evolve_overrides(2), check_evolve, landing_evolve, tear_nothing, timeout=900.0
    ),
}
# A one-round evolve run (synthesize, sft, prm, evaluate): half the time, for the short version.
EVOLVE_ONE_ROUND = StageCase(
    "evolve-1-round", evolve_overrides(1), check_evolve, landing_evolve, tear_nothing, timeout=900.0
)


@dataclass(frozen=True)
class Reference:
    case: StageCase
    overrides: list[str]
    run_dir: Path
    seconds: float


def reference_run(case: StageCase, workdir: Path) -> Reference:
    """The case's uninterrupted run (in ``workdir/<stage>-reference``)."""
    inputs = workdir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    overrides = case.overrides(inputs)
    run_dir = workdir / f"{case.name}-reference"
    done = run_to_end(overrides, run_dir, case.timeout)
    if done.returncode != 0:
        raise RuntimeError(
            f"{case.name}: the uninterrupted run failed (exit {done.returncode}):\n{done.log_tail}"
        )
    return Reference(case, overrides, run_dir, done.seconds)


def kill_moment(stage: str, seed: int, reference_seconds: float, strata: int = 1) -> float:
    """Seconds after the start at which a trial is killed: seeded, uniform over the reference's run.
    With ``strata`` n, seed k falls uniformly in the (k mod n)-th n-th of the run, so that n seeds
    spread their kills over the whole run instead of bunching by chance."""
    share = (seed % strata + random.Random(f"{stage}/{seed}").random()) / strata
    return share * reference_seconds


def trial(reference: Reference, seed: int, workdir: Path, torn: bool = False, strata: int = 1) -> Outcome:
    """Kill a run of the case at its seeded moment, tear its last record when ``torn``, rerun it."""
    case = reference.case
    run_dir = workdir / f"{case.name}-seed{seed}{'-torn' if torn else ''}"
    after = kill_moment(case.name, seed, reference.seconds, strata)
    killed, status = run_and_kill(reference.overrides, run_dir, after, workdir / f"{run_dir.name}.killed.log")
    broken = [] if killed or status == 0 else [f"the run to be killed failed by itself (exit {status})"]
    landed = "finished before the kill" if not killed else ""
    details: dict[str, Any] = {"torn": case.tear(run_dir, reference.run_dir) if torn else []}
    at_kill = Snapshot.of(run_dir)
    landed = landed or case.landing(at_kill, reference.run_dir)
    rerun = run_to_end(reference.overrides, run_dir, case.timeout)
    if rerun.returncode != 0:
        broken.append(f"the rerun failed (exit {rerun.returncode}): {rerun.log_tail[-1500:]}")
    else:
        checked = Trial(reference.run_dir, run_dir, at_kill, Snapshot.of(run_dir), details)
        broken += case.check(checked)
    return Outcome(
        case.name, seed, torn, round(after, 2), killed, landed, broken, round(rerun.seconds, 1), details
    )


# -- the figures table ----------------------------------------------------------------------------


def table(outcomes: list[Outcome], references: dict[str, Reference], wall: dict[str, float]) -> str:
    """Per stage: kills injected (and runs that ended first), torn-record trials, where the kills
    landed, resumes that lost nothing, and the wall time of the stage's trials."""
    lines = [
        "| stage | reference run (s) | kills injected | torn records planted | where the kills landed "
        "| resumes that lost nothing | wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage, reference in references.items():
        mine = [o for o in outcomes if o.stage == stage]
        killed = [o for o in mine if o.killed]
        ended = len(mine) - len(killed)
        landed = Counter(o.landed for o in killed)
        where = "; ".join(f"{place}: {count}" for place, count in sorted(landed.items()))
        kills = f"{len(killed)}" + (f" (+{ended} ended first)" if ended else "")
        lines.append(
            f"| {stage} | {reference.seconds:.1f} | {kills} | {sum(o.torn for o in mine)} | {where} "
            f"| {sum(o.lost_nothing for o in mine)} of {len(mine)} | {wall[stage]:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds", type=int, default=5, help="killed runs per stage (one more with torn records)"
    )
    parser.add_argument("--stages", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument(
        "--workdir", type=Path, default=None, help="kept when given (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kill-anywhere-"))
    workdir.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    references: dict[str, Reference] = {}
    wall: dict[str, float] = {}
    try:
        for stage in args.stages:
            started = time.perf_counter()
            references[stage] = reference_run(CASES[stage], workdir)
            plans = [(seed, False) for seed in range(args.seeds)]
            if CASES[stage].tear is not tear_nothing:
                plans.append((args.seeds, True))
            for seed, torn in plans:
                outcome = trial(references[stage], seed, workdir, torn=torn, strata=1 if torn else args.seeds)
                outcomes.append(outcome)
                status = "lost nothing" if outcome.lost_nothing else "BROKEN: " + " | ".join(outcome.broken)
                print(
                    f"{stage} seed {seed}{' torn' if torn else ''}: kill at {outcome.kill_after:.1f} s "
                    f"({outcome.landed}); {status}; {json.dumps(outcome.details, default=str)}",
                    flush=True,
                )
            wall[stage] = time.perf_counter() - started
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table(outcomes, references, wall))
    return 0 if all(o.lost_nothing for o in outcomes) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # helpers, test_evolve
    sys.exit(main())
