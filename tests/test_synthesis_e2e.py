"""Synthesis end to end on the tiny model: outputs, resume after a kill, bad input, W&B offline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, compose, embedded_model_overrides

from medsss.data.loaders import DataError, bundled_medqa_path
from medsss.data.verify import extract_answer, is_correct
from medsss.stages.synthesize import run as synthesize

TINY = ["model=tiny", "search=tiny", "logger=none", "backend=hf"]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 4-problem run logged to W&B offline; also what the stage handed the W&B logger."""
    from lightning.pytorch.loggers import WandbLogger

    run_dir = tmp_path_factory.mktemp("synth")
    to_wandb: list[tuple[dict, int | None]] = []
    log_metrics = WandbLogger.log_metrics

    def spy(self, metrics, step=None):
        to_wandb.append((dict(metrics), step))
        return log_metrics(self, metrics, step)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(WandbLogger, "log_metrics", spy)
        metrics = synthesize(compose([*TINY, "data.limit=4", "logger=wandb"]), run_dir)
    return run_dir, metrics, to_wandb


@pytest.mark.integration
def test_a_run_writes_trees_trajectories_and_metrics(tiny_run):
    run_dir, metrics, _ = tiny_run
    trees = lines(run_dir / "trees.jsonl")
    expected_ids = [json.loads(line)["id"] for line in bundled_medqa_path().read_text().splitlines()[:4]]
    assert sorted(t["id"] for t in trees) == sorted(expected_ids)
    trajectories = {t["id"]: t for t in lines(run_dir / "trajectories.jsonl")}
    assert set(trajectories) == set(expected_ids)
    for tree in trees:
        line = trajectories[tree["id"]]
        assert line["answer"] == tree["answer"] and line["question"] == tree["question"]
        leaves = [n for n in tree["nodes"] if n["kind"] == "finish" and not n["children"]]
        assert len(line["pos"]) + len(line["neg"]) == len(leaves) > 0
        for chain in line["pos"] + line["neg"]:
            assert chain[0]["step"] == 0 and [s["step"] for s in chain] == list(range(len(chain)))
            assert all(0.0 <= s["value"] <= 1.0 for s in chain)
        for leaf in leaves:  # correctness is the rule applied to the stated answer
            assert leaf["answer"] == extract_answer(leaf["text"])
            assert leaf["correct"] == is_correct(leaf["answer"], tree["answer"], options=tree["options"])
    for key in ("wall_seconds", "problems_per_hour", "prompt_tokens", "generated_tokens",
                "generation_calls", "mean_batch_size", "cached_prompt_tokens", "prefix_cache_hit_rate",
                "peak_rss_mb"):
        assert key in metrics
    assert metrics["searched_this_run"] == 4 and metrics["generated_tokens"] > 0
    assert json.loads((run_dir / "metrics.json").read_text())["stored_trees"] == 4


@pytest.mark.integration
def test_wandb_gets_live_metrics_per_problem_and_the_final_metrics_offline(tiny_run):
    run_dir, metrics, to_wandb = tiny_run
    [offline] = (run_dir / "wandb").glob("offline-run-*")  # WANDB_MODE=offline: one local run
    assert list(offline.glob("*.wandb"))
    live = [(values, step) for values, step in to_wandb if step is not None]
    [final] = [values for values, step in to_wandb if step is None and "synthesis/stored_trees" in values]
    # one line per finished problem, stepped by the problems done so far
    assert [(values["synthesis/problems_done"], step) for values, step in live] == [(k, k) for k in (1, 2, 3, 4)]
    numeric = {f"synthesis/{k}": v for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert {k: final[k] for k in numeric} == numeric and numeric["synthesis/stored_trees"] == 4
    [table] = [values["sample_trajectories"] for values, _ in to_wandb if "sample_trajectories" in values]
    assert table.columns == ["id", "answer", "correct", "min_value", "solution"] and table.data


@pytest.mark.integration
def test_the_tracker_gets_the_prefix_cache_hit_rate_live_and_at_the_end(tmp_path):
    import csv

    metrics = synthesize(compose(["model=tiny", "search=tiny", "logger=csv", "data.limit=2", "backend=hf"]), tmp_path)
    with open(tmp_path / "logs" / "version_0" / "metrics.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    live = [float(r["synthesis/prefix_cache_hit_rate"]) for r in rows if r.get("synthesis/problems_done")]
    assert live and 0.0 < live[-1] <= 1.0
    assert float(rows[-1]["synthesis/prefix_cache_hit_rate"]) == metrics["prefix_cache_hit_rate"] > 0
    table = (tmp_path / "logs" / "version_0" / "sample_trajectories.csv").read_text().splitlines()
    assert table[0] == "id,answer,correct,min_value,solution" and len(table) > 1


@pytest.mark.integration
def test_trees_do_not_depend_on_how_many_are_searched_together(tiny_run, tmp_path):
    """Each request samples from its own seed, so batching other trees' requests beside it changes
    nothing: one tree at a time gives the trees of the concurrent run, node for node."""
    run_dir, _, _ = tiny_run
    synthesize(compose([*TINY, "data.limit=4", "search.concurrent_trees=1"]), tmp_path)

    def nodes(path):
        return {t["id"]: [(n["text"], n["kind"], n["visits"], n["value"]) for n in t["nodes"]] for t in lines(path)}

    assert nodes(tmp_path / "trees.jsonl") == nodes(run_dir / "trees.jsonl")


@pytest.mark.integration
def test_rerun_into_the_same_directory_searches_nothing_again(tiny_run):
    run_dir, _, _ = tiny_run
    before = (run_dir / "trees.jsonl").read_text()
    metrics = synthesize(compose([*TINY, "data.limit=4"]), run_dir)
    assert metrics["searched_this_run"] == 0 and "generation_calls" not in metrics  # no backend started
    assert (run_dir / "trees.jsonl").read_text() == before


@pytest.mark.integration
def test_a_run_killed_part_way_resumes_with_every_id_stored_once(tmp_path):
    command = [sys.executable, "-m", "medsss.run", *TINY, "data.limit=6", "search.concurrent_trees=1",
               f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    store = tmp_path / "trees.jsonl"
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            if store.exists() and store.read_text().count("\n") >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    stored_at_kill = store.read_text()
    assert 2 <= stored_at_kill.count("\n") < 6
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    ids = [t["id"] for t in lines(store)]
    assert len(ids) == len(set(ids)) == 6
    assert store.read_text().startswith(stored_at_kill)  # nothing already written was touched


def test_a_malformed_row_stops_the_run_before_any_generation(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(
        json.dumps({"id": "ok", "question": "Q?\nA. x\nB. y", "answer": "A"}) + "\n"
        + json.dumps({"id": "bad", "question": "Q?\nA. x\nB. y", "answer": "C"}) + "\n"
    )
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match=r"bad\.jsonl: row 2: gold answer 'C' is not among the options"):
        synthesize(compose([*TINY, "data=jsonl", f"data.path={data}"]), run_dir)
    assert not (run_dir / "trees.jsonl").exists()


@pytest.mark.integration
def test_skip_invalid_searches_the_good_rows(tmp_path):
    data = tmp_path / "mixed.jsonl"
    data.write_text(
        json.dumps({"id": "ok", "question": "Q?\nA. x\nB. y", "answer": "A"}) + "\n" + "{not json\n"
    )
    metrics = synthesize(compose([*TINY, "data=jsonl", f"data.path={data}", "data.skip_invalid=true"]),
                         tmp_path / "run")
    assert (metrics["stored_trees"], metrics["skipped_rows"]) == (1, 1)


@pytest.mark.slow
def test_embedded_model_synthesis_end_to_end(tmp_path):
    """The README's main job, shortened, on the real model. Sampled text differs between CPUs, so
    this asserts only what holds for any text: files, counts, and the search's invariants."""
    cfg = compose(["data.limit=2", "search.concurrent_trees=2", "backend=hf", *embedded_model_overrides()])
    metrics = synthesize(cfg, tmp_path)
    assert metrics["stored_trees"] == 2 and metrics["failed_this_run"] == 0
    assert metrics["model"] == "SmolLM2-135M-Instruct" and metrics["cached_prompt_tokens"] > 0
    trees = {t["id"]: t for t in lines(tmp_path / "trees.jsonl")}
    for tree in trees.values():
        nodes = tree["nodes"]
        options = tree.get("options")
        # The budget is checked before each expansion, which adds at most `width` counted nodes;
        # post-processing adds only finish nodes and (uncounted) split pieces.
        grown = [n for n in nodes if not n.get("split") and n["kind"] != "finish"]
        assert len(grown) <= cfg.search.max_nodes - 1 + cfg.search.width
        for node in nodes:
            assert node["visits"] >= sum(nodes[c]["visits"] for c in node["children"])
            if node["kind"] == "finish":  # judged by the verifier on its own text
                assert node["answer"] == extract_answer(node["text"])
                verdict = is_correct(node["answer"], tree["answer"], options=options)
                assert node["correct"] == verdict
                # A leaf keeps that verdict as its value; a wrong finish that was reflected on has
                # children, and back-propagation updates it like any ancestor (test_mcts.py).
                if not node["children"]:
                    assert node["value"] == float(verdict)
    for line in lines(tmp_path / "trajectories.jsonl"):
        for chain in line["pos"]:
            assert chain[-1]["kind"] == "finish" and chain[-1]["value"] == 1.0
        for chain in line["neg"]:
            assert chain[-1]["kind"] == "finish" and chain[-1]["value"] == 0.0
        assert len(line["pos"]) + len(line["neg"]) == sum(
            1 for n in trees[line["id"]]["nodes"] if n["kind"] == "finish" and not n["children"])
