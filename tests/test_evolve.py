"""Self-evolution rounds: the plan of each round, the manifest, and a two-round run on the tiny
model killed with SIGKILL inside round 2's SFT and resumed there, every earlier step untouched."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, compose

from medsss.evolve.manifest import Manifest, StepRecord
from medsss.evolve.plan import EvolveSettings, Policy, round_plan
from medsss.faults import kill_step

RUN = Path("/runs/ev")


def by_name(plans):
    return {p.name: p for p in plans}


def test_round_one_searches_with_the_configured_model_and_trains_on_its_own_trees():
    settings = EvolveSettings(rounds=2, overrides={"all": ["model=tiny"], "sft": ["trainer.max_steps=3"]})
    plans, trained = round_plan(settings, RUN, 1, None, "tiny-llama")
    steps = by_name(plans)
    assert list(steps) == ["synthesize", "sft", "prm", "evaluate"]
    assert steps["synthesize"].overrides == ["stage=synthesize", "model=tiny"]
    assert steps["sft"].overrides == ["stage=sft", "model=tiny", "data.trees=['/runs/ev/rounds/1/synthesize']",
                                      "stage.ckpt_path=latest", "trainer.max_steps=3"]
    assert steps["sft"].directory == "rounds/1/sft"
    assert trained == Policy("/runs/ev/rounds/1/sft/final/merged", "/runs/ev/rounds/1/sft/final", None, 1)
    assert steps["evaluate"].overrides == [
        "stage=evaluate", "model=tiny", "model.source='/runs/ev/rounds/1/sft/final/merged'",
        "model.id='tiny-llama+evolve-r1'", "stage.prm.path='/runs/ev/rounds/1/prm/final'"]


def test_round_two_searches_with_round_one_policy_and_accumulates_trees_when_asked():
    previous = Policy("/runs/ev/rounds/1/sft/final/merged", "/runs/ev/rounds/1/sft/final", None, 1)
    settings = EvolveSettings(accumulate=True, curriculum=True, dpo=True, evaluate=False)
    plans, trained = round_plan(settings, RUN, 2, previous, "base")
    steps = by_name(plans)
    assert list(steps) == ["curriculum", "synthesize", "sft", "dpo", "prm"]
    searching = ["model.source='/runs/ev/rounds/1/sft/final/merged'", "model.id='base+evolve-r1'"]
    assert steps["curriculum"].overrides == ["stage=curriculum", *searching]
    assert steps["synthesize"].overrides == ["stage=synthesize", *searching, "data=jsonl",
                                             "data.path='/runs/ev/rounds/2/curriculum/seeds.jsonl'"]
    both = "data.trees=['/runs/ev/rounds/1/synthesize','/runs/ev/rounds/2/synthesize']"
    assert steps["sft"].overrides == ["stage=sft", both, "stage.ckpt_path=latest"]
    # DPO trains the SFT policy (its reference: the same model with the new adapter disabled).
    assert steps["dpo"].overrides == ["stage=dpo", "model.source='/runs/ev/rounds/2/sft/final/merged'", both,
                                      "stage.ckpt_path=latest"]
    assert trained == Policy("/runs/ev/rounds/2/dpo/final/merged", "/runs/ev/rounds/2/dpo/final",
                             "/runs/ev/rounds/2/sft/final/merged", 2)


def test_evaluate_before_scores_the_searching_policy_with_the_rounds_prm():
    previous = Policy("/runs/ev/rounds/1/sft/final/merged", "/runs/ev/rounds/1/sft/final", None, 1)
    settings = EvolveSettings(evaluate_before=True, overrides={"evaluate": ["stage.n=4"]})
    plans, _ = round_plan(settings, RUN, 2, previous, "base")
    steps = by_name(plans)
    assert list(steps)[-2:] == ["evaluate", "evaluate_before"]
    assert steps["evaluate_before"].overrides == [
        "stage=evaluate", "model.source='/runs/ev/rounds/1/sft/final/merged'", "model.id='base+evolve-r1'",
        "stage.prm.path='/runs/ev/rounds/2/prm/final'", "stage.n=4"]
    assert steps["evaluate_before"].directory == "rounds/2/evaluate_before"
    # Round 1's searching policy is the configured model itself.
    first = by_name(round_plan(settings, RUN, 1, None, "base")[0])["evaluate_before"]
    assert first.overrides == ["stage=evaluate", "stage.prm.path='/runs/ev/rounds/1/prm/final'", "stage.n=4"]
    with pytest.raises(ValueError, match="no step"):
        EvolveSettings(overrides={"evaluate_before": []})


def test_adapter_handoff_serves_the_lora_on_its_base():
    previous = Policy("/r/1/dpo/final/merged", "/r/1/dpo/final", "/r/1/sft/final/merged", 1)
    plans, _ = round_plan(EvolveSettings(handoff="adapter"), RUN, 2, previous, "base")
    assert by_name(plans)["synthesize"].overrides == [
        "stage=synthesize", "model.source='/r/1/sft/final/merged'", "++model.adapter='/r/1/dpo/final'",
        "model.id='base+evolve-r1'"]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="no step"):
        EvolveSettings(overrides={"sfft": []})
    with pytest.raises(ValueError, match="handoff"):
        EvolveSettings(handoff="copy")


def test_every_planned_step_composes():
    settings = EvolveSettings(curriculum=True, dpo=True, overrides={"all": ["model=tiny"]})
    previous = Policy("/tmp/m", "/tmp/a", None, 1)
    from medsss.stages.evolve import compose_step

    for plan in round_plan(settings, RUN, 2, previous, "tiny")[0]:
        assert compose_step(plan.overrides).stage.name == plan.name


def test_steps_inherit_the_evolve_runs_seed_prompt_and_threads():
    from medsss.stages.evolve import compose_step, inherited_overrides

    cfg = compose(["stage=evolve", "seed=7", "threads=1", "prompt.system=\"Be 'brief', doctor.\""])
    inherited = inherited_overrides(cfg)
    assert inherited == ["seed=7", "prompt.system='Be \\'brief\\', doctor.'", "threads=1"]
    step = compose_step(["stage=sft", *inherited, "data.trees=x"])
    assert (step.seed, step.threads, step.prompt.system) == (7, 1, "Be 'brief', doctor.")
    assert compose_step(["stage=sft", *inherited_overrides(compose(["stage=evolve", "prompt.system=null"])),
                         "data.trees=x"]).prompt.system is None


def test_the_manifest_counts_attempts_and_survives_a_reload(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.start(StepRecord("rounds/1/sft", "sft", 1, ["stage=sft"], "h1"))
    manifest.start(StepRecord("rounds/1/sft", "sft", 1, ["stage=sft"], "h1"))  # resumed after a kill
    manifest.finish("rounds/1/sft", ["final"], {"train_loss": 1.5})
    again = Manifest(tmp_path).get("rounds/1/sft")
    assert (again.status, again.attempts, again.outputs, again.metrics) == ("done", 2, ["final"], {"train_loss": 1.5})


def test_kill_points_match_the_run_directory_suffix(tmp_path):
    run = tmp_path / "rounds" / "2" / "sft"
    assert kill_step(run, {"MEDSSS_KILL_AT": "rounds/2/sft@3"}) == 3
    assert kill_step(tmp_path / "rounds" / "1" / "sft", {"MEDSSS_KILL_AT": "rounds/2/sft@3"}) is None
    assert kill_step(run, {}) is None
    with pytest.raises(ValueError, match="MEDSSS_KILL_AT"):
        kill_step(run, {"MEDSSS_KILL_AT": "rounds/2/sft"})


# -- two rounds on the tiny model -------------------------------------------------------------

BUNDLED = ROOT / "medsss" / "data" / "bundled" / "usmle_sample.jsonl"
TRAIN = ["trainer.enable_progress_bar=false", "stage.dtype=float32"]
TINY_ROUNDS = [
    "stage=evolve", "stage.isolation=inline",
    "stage.overrides.all=['model=tiny','logger=none']",
    # 12 questions: the random tiny model's forced letters are right on a few of them.
    "stage.overrides.synthesize=['search=tiny','data.limit=12','backend=hf']",
    "stage.overrides.sft=['trainer.max_steps=4','trainer.max_epochs=10','stage.batch_size=1',"
    "'stage.checkpoint_every=1'," + ",".join(f"'{o}'" for o in TRAIN) + "]",
    "stage.overrides.prm=['stage.labels.require_both=false','trainer.max_steps=2',"
    + ",".join(f"'{o}'" for o in TRAIN) + "]",
    "stage.overrides.evaluate=['backend=hf','suite.benchmarks=[{name:bundled,format:medqa,path:\"" + str(BUNDLED)
    + "\"}]','stage.limit=2','stage.n=2','stage.max_tokens=16','stage.bootstrap=20','stage.subsample_rounds=2']",
]


def _evolve(run_dir: Path, *extra: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("MEDSSS_KILL_AT", None)
    if kill_at:
        env["MEDSSS_KILL_AT"] = kill_at
    command = [sys.executable, "-m", "medsss.run", *TINY_ROUNDS, *extra, f"hydra.run.dir={run_dir}"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _fingerprints(root: Path) -> dict[str, tuple[str, int]]:
    """Content hash and modification time of every file under ``root``."""
    return {str(p.relative_to(root)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("evolve")
    killed = _evolve(run_dir, kill_at="rounds/2/sft@3")
    state = {"killed": killed, "manifest": json.loads((run_dir / "manifest.json").read_text()),
             "checkpoints": sorted(p.name for p in (run_dir / "rounds/2/sft/checkpoints").glob("*.ckpt")),
             "before": {step: _fingerprints(run_dir / step) for step in
                        ("rounds/1/synthesize", "rounds/1/sft", "rounds/1/prm", "rounds/1/evaluate",
                         "rounds/2/synthesize")}}
    state["resumed"] = _evolve(run_dir)
    state["run_dir"] = run_dir
    return state


@pytest.mark.integration
def test_a_run_killed_inside_round_two_sft_resumes_there_and_leaves_earlier_steps_untouched(killed_and_resumed):
    state = killed_and_resumed
    assert state["killed"].returncode == -signal.SIGKILL, state["killed"].stderr[-3000:]
    statuses = {row["step"]: row["status"] for row in state["manifest"]["steps"]}
    assert statuses == {"rounds/1/synthesize": "done", "rounds/1/sft": "done", "rounds/1/prm": "done",
                        "rounds/1/evaluate": "done", "rounds/2/synthesize": "done", "rounds/2/sft": "running"}
    # Killed after optimizer step 3, before its checkpoint: step 2's is the newest.
    assert "step=2.ckpt" in " ".join(state["checkpoints"]) and "step=3" not in " ".join(state["checkpoints"])

    resumed = state["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_dir = state["run_dir"]
    for step, files in state["before"].items():
        assert _fingerprints(run_dir / step) == files, f"{step} changed on resume"
    manifest = Manifest(run_dir)
    sft = manifest.get("rounds/2/sft")
    assert (sft.status, sft.attempts) == ("done", 2)
    assert (sft.metrics["start_step"], sft.metrics["global_steps"]) == (2, 4)
    assert all(r.status == "done" for r in manifest.steps.values()) and len(manifest.steps) == 8


@pytest.mark.integration
def test_round_two_searched_with_round_one_policy_and_the_report_has_both_rounds(killed_and_resumed):
    run_dir = killed_and_resumed["run_dir"]
    trees = [json.loads(line) for line in (run_dir / "rounds/2/synthesize/trees.jsonl").read_text().splitlines()]
    assert {t["model"] for t in trees} == {"tiny-llama+evolve-r1"}
    config = (run_dir / "rounds/2/synthesize/.hydra/config.yaml").read_text()
    assert str(run_dir / "rounds/1/sft/final/merged") in config
    report = (run_dir / "evolve.md").read_text()
    assert "| 1 |" in report and "| 2 |" in report and "Benchmark accuracy by strategy" in report
    rows = (run_dir / "evolve.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("round,problems,correct_chains_per_problem")
    assert (run_dir / "plots" / "evolve.png").stat().st_size > 0
    # Adapter-only checkpoints: the LoRA run's checkpoint holds no frozen base weight.
    import torch

    ckpt = torch.load(run_dir / "rounds/2/sft/checkpoints/last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["medsss_trainable_only"] and all("lora_" in k for k in ckpt["state_dict"])


@pytest.mark.integration
def test_a_changed_config_for_a_finished_step_is_refused_kept_or_rerun(killed_and_resumed, tmp_path):
    from medsss.run import run_stage
    from medsss.stages.evolve import ConfigChangedError

    run_dir = killed_and_resumed["run_dir"]
    changed = [o.replace("'stage.limit=2'", "'stage.limit=1'") for o in TINY_ROUNDS]
    with pytest.raises(ConfigChangedError, match="rounds/1/evaluate finished with config"):
        run_stage(compose(changed), run_dir)
    kept = run_stage(compose([*changed, "stage.on_config_change=keep"]), run_dir)
    assert (kept["steps_run"], kept["steps_skipped"]) == (0, 8)
    # One round, its evaluate step run again on one item; the old run is moved aside, not lost.
    rerun = run_stage(compose([*changed, "stage.rounds=1", "stage.on_config_change=rerun"]), run_dir)
    assert (rerun["steps_run"], rerun["steps_skipped"]) == (1, 3)
    moved = [p for p in (run_dir / "rounds" / "1").iterdir() if p.name.startswith("evaluate.replaced-")]
    assert len(moved) == 1 and (moved[0] / "results.md").exists()
    import csv

    with open(run_dir / "rounds/1/evaluate/results.csv", encoding="utf-8") as handle:
        assert [row["items"] for row in csv.DictReader(handle)][0] == "1"


@pytest.mark.integration
def test_steps_in_their_own_processes_fail_cleanly_when_killed_and_resume(tmp_path, monkeypatch):
    """isolation=subprocess (the default): each step is `python -m medsss.run` in its directory; a
    step whose process is killed fails the run with a clear error and resumes on the next one."""
    from medsss.run import run_stage
    from medsss.stages.evolve import StepFailedError

    one_round = [o.replace("stage.isolation=inline", "stage.isolation=subprocess") for o in TINY_ROUNDS]
    one_round += ["stage.rounds=1", "stage.evaluate=false"]
    monkeypatch.setenv("MEDSSS_KILL_AT", "rounds/1/sft@3")
    with pytest.raises(StepFailedError, match=r"rounds/1/sft: .* exited with -9"):
        run_stage(compose(one_round), tmp_path)
    assert Manifest(tmp_path).get("rounds/1/sft").status == "failed"
    monkeypatch.delenv("MEDSSS_KILL_AT")
    metrics = run_stage(compose(one_round), tmp_path)
    assert (metrics["steps_run"], metrics["steps_skipped"]) == (2, 1)
    sft = Manifest(tmp_path).get("rounds/1/sft")
    assert (sft.status, sft.attempts, sft.metrics["start_step"]) == ("done", 2, 2)
    # Hydra itself wrote each step's config: the step ran as its own command line.
    overrides = (tmp_path / "rounds/1/prm/.hydra/overrides.yaml").read_text()
    assert "stage=prm" in overrides and "stage.labels.require_both=false" in overrides


@pytest.mark.slow
def test_the_whole_loop_with_curriculum_and_dpo_on_the_proving_ground_model(tmp_path):
    """Every optional step in the loop, on a model that finds both correct and wrong paths (the
    proving ground's pretrained starting policy): curriculum -> synthesize -> sft -> dpo -> prm ->
    evaluate -> evaluate_before, two rounds, trees accumulated; round 2 searches with DPO's policy."""
    from medsss.run import run_stage

    quick = ["'stage.dtype=float32'", "'trainer.max_epochs=1'", "'stage.max_length=256'"]
    overrides = [
        "+experiment=proving_ground_small", "stage.rounds=2", "stage.curriculum=true", "stage.dpo=true",
        "stage.accumulate=true",
        "stage.overrides.curriculum=['data=proving_ground','data.limit=40','search=proving_ground',"
        "'backend=hf','stage.k=4','stage.band.high=0.75','stage.floor_per_source=8']",
        "stage.overrides.synthesize=['search=proving_ground','backend=hf']",
        f"stage.overrides.sft=[{','.join(quick)}]",
        f"stage.overrides.dpo=[{','.join(quick)},'stage.margin=0.5']",
        f"stage.overrides.prm=[{','.join(quick[:2])},'stage.labels.require_both=false']",
        "stage.overrides.evaluate=['suite=proving_ground','stage.limit=10','stage.n=2','stage.max_tokens=72',"
        "'backend=hf','stage.bootstrap=20','stage.subsample_rounds=2']",
    ]
    metrics = run_stage(compose(overrides), tmp_path)
    assert metrics["steps_run"] == 14
    manifest = Manifest(tmp_path)
    seeds = (tmp_path / "rounds/2/curriculum/seeds.jsonl").read_text().splitlines()
    searched = (tmp_path / "rounds/2/synthesize/trees.jsonl").read_text().splitlines()
    assert len(searched) == len(seeds) > 0
    assert manifest.get("rounds/2/synthesize").inputs["policy"] == str(tmp_path / "rounds/1/dpo/final/merged")
    assert manifest.get("rounds/2/sft").inputs["trees"].count("synthesize") == 2  # accumulated
    dpo = manifest.get("rounds/1/dpo").metrics
    assert dpo["view_pairs"] > 0 and "val_reward_accuracy" in dpo
    report = (tmp_path / "evolve.md").read_text()
    assert "before_greedy" in report and "| 2 |" in report
