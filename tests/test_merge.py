"""Merging sharded synthesis runs: every problem exactly once, identical overlaps kept once, and
one-line refusals for different overlaps, missing shards, other settings and other models; plus
the SLURM launcher config whose resources come from config keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import compose
from helpers import build_tree
from omegaconf import OmegaConf

from medsss.run import run_stage
from medsss.search.merge import MergeError

SEARCH = {"_target_": "medsss.search.mcts.SearchConfig", "width": 2, "simulations": 4, "min_rollouts": 2,
          "correct_nodes": 2, "max_nodes": 8, "concurrent_trees": 6, "seed": "${seed}"}


def tree(answer_correct: bool = True, text: str = "Look at the labs."):
    return build_tree({
        "root": {"visits": 2, "value": 0.5},
        text: {"parent": "root", "visits": 1, "value": 0.5, "rollout_total": 2, "rollout_correct": 1},
        "The answer is A.": {"parent": text, "kind": "finish", "visits": 1, "value": float(answer_correct),
                             "correct": answer_correct, "answer": "A"},
    })


def stored(problem_id: str, tree_=None, model: str = "smollm2", search_hash: str = "h1", finished_at: float = 1.0):
    return {"id": problem_id, "question": f"Case {problem_id}?", "answer": "A", "model": model,
            "stop_reason": "correct_nodes", "iterations": 2, "search_hash": search_hash,
            "finished_at": finished_at, **(tree_ or tree()).to_dict()}


def shard_dir(root: Path, shard: int, num_shards: int, records, *, search=None, model="smollm2", limit=4,
              failures=(), metrics=None, name=None) -> Path:
    """A synthesis run directory as a shard leaves it: the saved config (unresolved, as Hydra saves
    it), the tree store, and optionally failures and metrics."""
    run = root / (name or f"shard{shard}")
    (run / ".hydra").mkdir(parents=True)
    config = {
        "seed": 0,
        "prompt": {"system": "Solve step by step."},
        "stage": {"name": "synthesize", "allow_config_change": False},
        "model": {"_target_": "medsss.generation.models.ModelSpec", "id": model, "source": "embedded:x"},
        "data": {"_target_": "medsss.data.loaders.DataSpec", "name": "medqa", "format": "medqa", "path": None,
                 "limit": limit, "shard": shard, "num_shards": num_shards, "skip_invalid": False},
        "search": {**SEARCH, **(search or {})},
    }
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    with open(run / "trees.jsonl", "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    if failures:
        with open(run / "failures.jsonl", "w") as handle:
            for failure in failures:
                handle.write(json.dumps(failure) + "\n")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def merge(shards, out: Path):
    return run_stage(compose(["stage=merge", f"stage.runs=[{','.join(str(s) for s in shards)}]"]), out)


def ids(run: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (run / "trees.jsonl").read_text().splitlines()]


def refused(shards, out: Path) -> str:
    with pytest.raises(MergeError) as caught:
        merge(shards, out)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("merge refused: ")
    assert not (out / "trees.jsonl").exists()  # nothing written
    return message


def test_every_problem_is_in_the_merged_store_exactly_once(tmp_path):
    shards = [
        shard_dir(tmp_path, 0, 2, [stored("p0"), stored("p2")], metrics={
            "problems": 2, "stored_trees": 2, "generated_tokens": 100, "prompt_tokens": 400,
            "cached_prompt_tokens": 100, "search_seconds": 1.5, "problems_per_hour": 9.0}),
        shard_dir(tmp_path, 1, 2, [stored("p1", tree(False)), stored("p3")], metrics={
            "problems": 2, "stored_trees": 2, "generated_tokens": 50, "prompt_tokens": 100,
            "cached_prompt_tokens": 100, "search_seconds": 2.25, "problems_per_hour": 7.0}),
    ]
    out = tmp_path / "merged"
    metrics = merge(shards, out)
    assert ids(out) == ["p0", "p2", "p1", "p3"]  # shard order, each store's order
    trajectories = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert [t["id"] for t in trajectories] == ["p0", "p2", "p1", "p3"]
    assert [len(t["pos"]) for t in trajectories] == [1, 1, 0, 1]
    assert (metrics["stored_trees"], metrics["nodes"], metrics["identical_duplicates"]) == (4, 12, 0)
    assert (metrics["trajectories_pos_chains"], metrics["trajectories_neg_chains"]) == (3, 1)
    # summed over the shards' metrics.json; a rate is recomputed from the sums, not added
    assert (metrics["problems"], metrics["generated_tokens"], metrics["search_seconds"]) == (4, 150, 3.75)
    assert metrics["prefix_cache_hit_rate"] == pytest.approx(200 / 500) and "problems_per_hour" not in metrics
    assert (metrics["num_shards"], metrics["model"], metrics["search_hash"]) == (2, "smollm2", "h1")
    assert json.loads((out / "metrics.json").read_text())["stage"] == "merge"


def test_the_same_tree_stored_by_two_shards_is_kept_once(tmp_path):
    shards = [shard_dir(tmp_path, 0, 2, [stored("p0", finished_at=1.0), stored("p2")]),
              shard_dir(tmp_path, 1, 2, [stored("p1"), stored("p0", finished_at=9.0)])]  # searched again
    metrics = merge(shards, tmp_path / "merged")
    assert ids(tmp_path / "merged") == ["p0", "p2", "p1"] and metrics["identical_duplicates"] == 1


def test_the_same_run_dir_named_twice_is_one_shard(tmp_path):
    shard = shard_dir(tmp_path, 0, 1, [stored("p0")])
    metrics = merge([shard, shard], tmp_path / "merged")
    assert ids(tmp_path / "merged") == ["p0"] and metrics["identical_duplicates"] == 0


def test_a_sweep_directory_stands_for_its_jobs_merged_in_shard_order(tmp_path):
    sweep = tmp_path / "multirun" / "synthesize" / "2026-01-01_00-00-00"
    shard_dir(sweep, 1, 2, [stored("p1")], name="0_data.shard=1")  # job 0 searched shard 1
    shard_dir(sweep, 0, 2, [stored("p0")], name="1_data.shard=0")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    metrics = merge([sweep], tmp_path / "merged")
    assert ids(tmp_path / "merged") == ["p0", "p1"] and metrics["shards"] == [
        str(sweep / "1_data.shard=0"), str(sweep / "0_data.shard=1")]


def test_a_problem_with_different_trees_in_two_shards_is_refused(tmp_path):
    shards = [shard_dir(tmp_path, 0, 2, [stored("p0"), stored("p2")]),
              shard_dir(tmp_path, 1, 2, [stored("p1"), stored("p0", tree(text="Another idea."))])]
    message = refused(shards, tmp_path / "merged")
    assert message == (f"merge refused: problem ids stored by more than one shard with different trees: "
                       f"'p0' ({shards[0]} and {shards[1]})")


def test_a_missing_shard_is_refused(tmp_path):
    shards = [shard_dir(tmp_path, 0, 3, [stored("p0")]), shard_dir(tmp_path, 2, 3, [stored("p2")])]
    message = refused(shards, tmp_path / "merged")
    assert message == (f"merge refused: missing shard 1 of data.num_shards=3 "
                       f"(given: shard 0 in {shards[0]}, shard 2 in {shards[1]})")


def test_shards_that_disagree_on_the_shard_count_are_refused(tmp_path):
    shards = [shard_dir(tmp_path, 0, 2, [stored("p0")]), shard_dir(tmp_path, 1, 3, [stored("p1")])]
    assert "disagree on data.num_shards: num_shards=2 in" in refused(shards, tmp_path / "merged")


def test_shards_of_different_search_settings_are_refused(tmp_path):
    shards = [shard_dir(tmp_path, 0, 2, [stored("p0")]),
              shard_dir(tmp_path, 1, 2, [stored("p1")], search={"width": 3})]
    message = refused(shards, tmp_path / "merged")
    assert message == (f"merge refused: the shards were searched with different settings: "
                       f"search.width=2 in {shards[0]} but 3 in {shards[1]}")


def test_shards_of_different_data_are_refused_but_scheduling_may_differ(tmp_path):
    limits = [shard_dir(tmp_path, 0, 2, [stored("p0")]), shard_dir(tmp_path, 1, 2, [stored("p1")], limit=8)]
    assert "data.limit=4 in" in refused(limits, tmp_path / "merged")
    scheduling = [shard_dir(tmp_path, 0, 2, [stored("p0")], name="a"),
                  shard_dir(tmp_path, 1, 2, [stored("p1")], search={"concurrent_trees": 64}, name="b")]
    assert merge(scheduling, tmp_path / "merged")["stored_trees"] == 2


def test_trees_of_another_search_hash_are_refused(tmp_path):
    """The store's own record of its settings: a shard resumed under other settings
    (stage.allow_config_change) holds trees of two searches."""
    shards = [shard_dir(tmp_path, 0, 2, [stored("p0")]), shard_dir(tmp_path, 1, 2, [stored("p1", search_hash="h2")])]
    message = refused(shards, tmp_path / "merged")
    assert message == (f"merge refused: the shards' trees were searched with different settings "
                       f"(search_hash h1 in {shards[0]}, h2 in {shards[1]})")


def test_shards_of_different_models_are_refused(tmp_path):
    shards = [shard_dir(tmp_path, 0, 2, [stored("p0")]),
              shard_dir(tmp_path, 1, 2, [stored("p1", model="llama")], model="llama")]
    message = refused(shards, tmp_path / "merged")
    assert message == (f"merge refused: the shards were searched with different models: "
                       f"'smollm2' in {shards[0]}, 'llama' in {shards[1]}")


def test_a_directory_that_is_not_a_synthesis_run_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    message = refused([tmp_path / "empty"], tmp_path / "merged")
    assert message == (f"merge refused: {tmp_path / 'empty' / '.hydra' / 'config.yaml'} not found: "
                       f"{tmp_path / 'empty'} is not a synthesis run directory")


def test_failures_no_shard_resolved_are_kept_for_a_retry(tmp_path):
    shards = [shard_dir(tmp_path, 0, 2, [stored("p0")], failures=[{"id": "p2", "reason": "oom", "time": 1}]),
              shard_dir(tmp_path, 1, 2, [stored("p1")], failures=[{"id": "p0", "reason": "x", "time": 1}])]
    metrics = merge(shards, tmp_path / "merged")
    failures = [json.loads(line) for line in (tmp_path / "merged" / "failures.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failures] == ["p2"] and metrics["unresolved_failures"] == 1


def test_a_merge_never_overwrites_a_store(tmp_path):
    shard = shard_dir(tmp_path, 0, 1, [stored("p0")])
    out = tmp_path / "merged"
    out.mkdir()
    (out / "trees.jsonl").write_text("")
    with pytest.raises(MergeError, match="trees.jsonl exists; merge into a new run directory"):
        merge([shard], out)


@pytest.mark.integration
def test_sharded_synthesis_on_the_tiny_model_merges_into_the_unsharded_problem_set(tmp_path):
    """Real shard directories: the config as Hydra saves it (unresolved) and stores the synthesis
    stage wrote."""
    shards = []
    for shard in range(2):
        cfg = compose(["model=tiny", "search=tiny", "backend=hf", "logger=none", "data.limit=4",
                       f"data.shard={shard}", "data.num_shards=2", "search.max_nodes=4"])
        run = tmp_path / f"shard{shard}"
        (run / ".hydra").mkdir(parents=True)
        OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
        run_stage(cfg, run)
        shards.append(run)
    metrics = merge(shards, tmp_path / "merged")
    from medsss.data.loaders import DataSpec, load_problems

    expected = [p.id for p in load_problems(DataSpec(limit=4)).problems]
    assert sorted(ids(tmp_path / "merged")) == sorted(expected) and metrics["problems"] == 4


# --- launching shards on SLURM --------------------------------------------------------------------

SLURM_VARIABLES = ("PARTITION", "ACCOUNT", "QOS", "TIMEOUT_MIN", "NODES", "TASKS_PER_NODE", "GPUS_PER_NODE",
                   "CPUS_PER_TASK", "MEM_GB", "ARRAY_PARALLELISM", "MAX_NUM_TIMEOUT")


def slurm_launcher(overrides: list[str]) -> dict:
    """hydra.launcher of a composed run, resolved (what the plugin is built with)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from medsss.config_schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=["hydra/launcher=submitit_slurm", *overrides],
                            return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


# Our file shadows the plugin's config of the same name; Hydra types it with the plugin's schema
# and warns that it does so.
@pytest.mark.filterwarnings("ignore:(?s).*validated against ConfigStore schema")
def test_the_slurm_launcher_takes_its_resources_from_config_keys(monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install 'medsss[launchers]'")
    for name in SLURM_VARIABLES:
        monkeypatch.delenv(f"MEDSSS_SLURM_{name}", raising=False)
    defaults = slurm_launcher([])
    assert defaults["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert {k: defaults[k] for k in ("partition", "account", "gpus_per_node", "cpus_per_task", "mem_gb",
                                     "timeout_min", "array_parallelism")} == {
        "partition": None, "account": None, "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 64,
        "timeout_min": 240, "array_parallelism": 64}
    assert defaults["submitit_folder"].endswith("/.submitit/%j") and defaults["constraint"] is None  # the plugin's

    for name, value in [("PARTITION", "gpu"), ("ACCOUNT", "lab"), ("GPUS_PER_NODE", "4"), ("CPUS_PER_TASK", "32"),
                        ("MEM_GB", "256"), ("TIMEOUT_MIN", "720"), ("TASKS_PER_NODE", "4")]:
        monkeypatch.setenv(f"MEDSSS_SLURM_{name}", value)
    from_environment = slurm_launcher(["hydra.launcher.mem_gb=128"])  # the command line wins
    assert {k: from_environment[k] for k in ("partition", "account", "gpus_per_node", "cpus_per_task", "mem_gb",
                                             "timeout_min", "tasks_per_node")} == {
        "partition": "gpu", "account": "lab", "gpus_per_node": 4, "cpus_per_task": 32, "mem_gb": 128,
        "timeout_min": 720, "tasks_per_node": 4}

    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    launcher = instantiate(OmegaConf.create(from_environment))
    assert isinstance(launcher, SlurmLauncher) and launcher.params["gpus_per_node"] == 4


@pytest.mark.filterwarnings("ignore:(?s).*validated against ConfigStore schema")
def test_a_slurm_resource_of_the_wrong_type_fails_naming_the_key(monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install 'medsss[launchers]'")
    monkeypatch.setenv("MEDSSS_SLURM_GPUS_PER_NODE", "four")
    with pytest.raises(Exception, match="gpus_per_node"):
        slurm_launcher([])
