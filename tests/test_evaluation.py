"""Evaluation: sampling and scoring into a cache, the results table and predictions on a hand-made
cache, the stage's outputs and resume on the tiny model (with and without a PRM), and the
released-model settings (their own prompts; a policy LoRA adapter merged at load)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import BUNDLED_BENCHMARKS, compose
from helpers import ScriptedBackend, build_tree, problem

from medsss.evaluation.pipeline import write_predictions
from medsss.evaluation.report import markdown_table
from medsss.evaluation.results import (
    COLUMNS,
    NOT_RUN,
    PRM_STRATEGIES,
    STRATEGIES,
    DecodeChoice,
    column_labels,
    decode_choice,
    header,
    macro_average,
    summarise,
)
from medsss.evaluation.sampling import sample_and_score
from medsss.generation.base import GenerationRequest
from medsss.generation.hf import HFBackend
from medsss.generation.models import ModelSpec
from medsss.run import run_stage
from medsss.stages.evaluate import system_prompts


def test_samples_are_split_into_steps_answered_scored_and_cached(tmp_path):
    def respond(request, i):
        return " Think.\n\nStep 2: The answer is A." if request.temperature > 0 else " The answer is B."

    scored = []

    def score_chains(chains):
        scored.extend(chains)
        return [[0.1 * k for k in range(1, len(steps))] for _, steps in chains]

    cache = tmp_path / "cache.jsonl"
    kwargs = dict(n=3, temperature=1.0, top_p=0.95, max_tokens=20, system_prompt=None, greedy=True,
                  fallback=False, items_per_call=2, seed=0)
    rows = sample_and_score([problem(pid="a"), problem(pid="b")], ScriptedBackend(respond), score_chains, cache,
                            **kwargs)
    assert [r["id"] for r in rows] == ["a", "b"]
    first = rows[0]["candidates"][0]
    assert first["steps"] == ["Let's break down this problem step by step.", "Think.", "The answer is A."]
    assert first["answer"] == "A" and first["step_scores"] == pytest.approx([0.1, 0.2])
    assert rows[0]["greedy"]["answer"] == "B" and len(rows[0]["candidates"]) == 3
    # selection and scoring offline need the item's kind and options: the cache keeps them
    assert (rows[0]["kind"], rows[0]["options"]) == ("choice", {"A": "one", "B": "two"})
    assert len(scored) == 6  # every sampled candidate scored once
    backend = ScriptedBackend(respond)
    again = sample_and_score([problem(pid="a"), problem(pid="b")], backend, score_chains, cache, **kwargs)
    assert again == rows and backend.calls == []  # the cache answers; nothing is generated


@pytest.mark.integration
def test_eval_stage_writes_tables_grid_plots_and_resumes_from_its_cache(tmp_path, tiny_model):
    from medsss.training.prm_model import ProcessRewardModel

    prm_dir = tmp_path / "prm"
    torch.manual_seed(0)
    ProcessRewardModel.from_causal_lm(tiny_model.resolve()).save(prm_dir)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_model.resolve()).save_pretrained(prm_dir)
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    tree = build_tree({
        "a": {"parent": "root", "visits": 1, "value": 0.5, "rollout_total": 4},
        "f": {"parent": "a", "kind": "finish", "visits": 1, "value": 0.0, "correct": False},
    })
    (held_out / "trees.jsonl").write_text(json.dumps({"id": "h", "question": "Q?", "answer": "A",
                                                      **tree.to_dict()}) + "\n")
    overrides = ["+experiment=eval_bench", "model=tiny", "backend=hf", f"paths.data_dir={BUNDLED_BENCHMARKS}",
                 f"stage.prm.path={prm_dir}", "stage.limit=2",
                 "stage.n=4", "stage.max_tokens=12", "stage.bootstrap=50", "stage.subsample_rounds=5", "logger=none",
                 f"stage.diagnostics.trees={held_out}"]
    run_dir = tmp_path / "eval"
    metrics = run_stage(compose(overrides), run_dir)
    table = (run_dir / "results.md").read_text()
    for name in ("medqa", "medmcqa", "mmlu_medical", "pubmedqa", "bioasq", "pubhealth", "drugdose", "macro average"):
        assert f"| {name} |" in table
    assert len(list((run_dir / "plots").glob("*.png"))) == 7 + 2  # one per benchmark, reliability, abstention
    assert "N = 4 candidates per item" in table and "item-level bootstrap" in table and "unparseable" in table
    grid = (run_dir / "grid.csv").read_text().splitlines()
    assert grid[0].startswith("benchmark,selection,aggregation,n,accuracy,ci_low,ci_high,subsample_low,subsample_high")
    assert len(grid) - 1 == 7 * 3 * (1 + 3 * 5)  # 7 benchmarks x N in {1,2,4} x (sc + 3 PRM rules x 5 aggregations)
    predictions = [json.loads(line) for line in (run_dir / "predictions" / "medqa.jsonl").read_text().splitlines()]
    assert len(predictions) == 2 and {"id", "gold", "answer", "correct"} <= set(predictions[0])
    assert [(p["id"], p["gold"]) for p in predictions] == [("0", "B"), ("1", "C")]  # the bundled MedQA.json
    assert metrics["generations_sampled"] == 7 * 2 * 5 and metrics["generation_calls"] > 0
    assert metrics["generations_without_cache"] > metrics["generations_sampled"]
    # calibration of the PRM at stage.prm.path against the held-out rollout values of steps 1..K
    from medsss.evaluation.diagnostics import calibration
    from medsss.training.prm_model import PRMScorer

    scorer = PRMScorer(ProcessRewardModel.from_causal_lm(str(prm_dir)), AutoTokenizer.from_pretrained(prm_dir),
                       compose(overrides).prompt.system)
    [scores] = scorer.score("Q?", [[tree.root.text, "a", "f"]])
    assert metrics["prm_diagnostic_steps"] == 2
    assert metrics["prm_ece"] == pytest.approx(calibration(scores, [0.5, 0.0])[1], abs=1e-6)
    assert (run_dir / "plots" / "reliability.png").exists() and (run_dir / "abstention.csv").exists()
    assert "First-error detection" in (run_dir / "diagnostics.md").read_text()

    again = run_stage(compose(overrides), run_dir)
    assert again["generation_calls"] == 0  # every item came from the cache


def test_a_policy_adapter_is_merged_at_load_like_a_saved_merged_model(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model.resolve()),
                             LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                                        init_lora_weights=False))
    adapted.save_pretrained(tmp_path / "adapter")
    adapted.merge_and_unload().save_pretrained(tmp_path / "merged")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_model.resolve()).save_pretrained(tmp_path / "merged")
    request = GenerationRequest(({"role": "user", "content": "Q?"},), "Step 0:", temperature=0.0, max_tokens=10)
    with_adapter = HFBackend(ModelSpec(id="a", source=tiny_model.resolve(), adapter=str(tmp_path / "adapter")))
    merged = HFBackend(ModelSpec(id="m", source=str(tmp_path / "merged")))
    plain = HFBackend(ModelSpec(id="p", source=tiny_model.resolve()))
    texts = [b.generate([request])[0][0].text for b in (with_adapter, merged, plain)]
    assert texts[0] == texts[1] != texts[2]


def test_released_model_configs_compose():
    cfg = compose(["+experiment=eval_medsss_8b"])
    assert cfg.model.adapter and cfg.stage.prm.layout == "token_classifier"
    assert cfg.stage.prm.base == cfg.model.source


def test_released_models_are_evaluated_with_their_own_prompts_and_lengths():
    # The reference evaluation of the released models: the policy under "You are a helpful medical
    # assistant." with 8192 new tokens, the PRM with no system message.
    cfg = compose(["+experiment=eval_medsss_8b"])
    assert system_prompts(cfg) == ("You are a helpful medical assistant.", None)
    assert cfg.stage.max_tokens == 8192 and cfg.model.max_model_len > cfg.stage.max_tokens
    assert (cfg.stage.temperature, cfg.stage.top_p, cfg.stage.n) == (1.0, 0.95, 16)
    # models the project trains keep the project's one prompt for both
    default = compose(["+experiment=eval_bench"])
    assert system_prompts(default) == (default.prompt.system, default.prompt.system)
    assert default.prompt.system.startswith("You are a careful medical expert")


# --- the results table and predictions/ (hand-made cache) --------------------------------------

def cached(pid, gold, answers, greedy=None, **extra):
    row = {"id": pid, "gold": gold, "kind": "choice", "options": None, **extra,
           "candidates": [{"answer": a, "step_scores": s, "text": f"The answer is {a}."} for a, s in answers]}
    if greedy is not None:
        row["greedy"] = {"answer": greedy, "text": f"The answer is {greedy}."}
    return row


# q1: on the first 2 candidates P-VS ties B and A (0.5 each, equal best) -> B, the first (wrong);
#     on all 3, S(A) = 0.6 > S(B) = 0.5 -> A (right).
# q2: every strategy answers C (right); one candidate states no answer.
ITEMS = [
    cached("q1", "A", [("B", [0.5]), ("A", [0.5]), ("A", [0.1])], greedy="B"),
    cached("q2", "C", [("C", [0.7]), (None, [0.9]), ("C", [0.4])], greedy="C"),
]


def test_the_decode_column_is_the_accuracy_of_predictions(tmp_path):
    decode = DecodeChoice("pvs", "min", 2)
    result = summarise("toy", ITEMS, strategies=STRATEGIES, aggregation="min", decode=decode, bootstrap=200, seed=0)
    assert result.row["N"] == 3 and result.row["pvs"] == 1.0  # all 3 candidates
    assert result.row["decode"] == 0.5                         # first 2: q1 ties to B
    write_predictions(tmp_path / "toy.jsonl", ITEMS, decode)
    predictions = [json.loads(line) for line in (tmp_path / "toy.jsonl").read_text().splitlines()]
    assert [(p["answer"], p["correct"]) for p in predictions] == [("B", False), ("C", True)]
    assert result.per_item["decode"] == [float(p["correct"]) for p in predictions]
    assert (result.row["decode_ci_low"], result.row["decode_ci_high"]) == (0.0, 1.0)
    assert result.row["pass@N"] == 1.0 and result.row["unparseable"] == pytest.approx(1 / 6)


def test_decode_greedy_fills_the_decode_column_from_the_greedy_sample(tmp_path):
    decode = DecodeChoice("greedy", "min", 16)
    result = summarise("toy", ITEMS, strategies=["sc"], aggregation="min", decode=decode, bootstrap=50, seed=0)
    assert result.row["decode"] == result.row["greedy"] == 0.5
    write_predictions(tmp_path / "toy.jsonl", ITEMS, decode)
    assert [json.loads(line)["answer"] for line in (tmp_path / "toy.jsonl").read_text().splitlines()] == ["B", "C"]
    with pytest.raises(ValueError, match="stage.greedy=true"):
        decode_choice("greedy", "min", 16, has_prm=False, greedy_sampled=False)


def test_the_table_states_the_n_used_and_marks_strategies_that_did_not_run():
    decode = DecodeChoice("sc", "min", 16, fallback_from="pvs")
    results = [summarise(name, ITEMS, strategies=["sc"], aggregation="min", decode=decode, bootstrap=50, seed=0)
               for name in ("one", "two")]
    rows = [r.row for r in results] + [macro_average(results, bootstrap=50, seed=0)]
    text = header(rows, decode=decode, bootstrap=50, seed=0, has_prm=False)
    assert "N = 3 candidates per item" in text and "falls back to `sc`" in text
    table = markdown_table(rows, COLUMNS, labels=column_labels(rows), missing={c: NOT_RUN for c in PRM_STRATEGIES})
    assert "| pass@3 | unparseable |" in table.splitlines()[0]
    macro = table.splitlines()[-1]
    # macro average: 2 benchmarks x 2 items; sc answers B on q1 (wrong), C on q2 (right)
    assert macro.startswith("| macro average | 4 | 3 | 50.0 [") and "| not run | not run | not run |" in macro
    assert macro.endswith("| 16.7 |")  # 1 of 6 candidates unparseable, no interval


def test_a_prm_decode_without_a_prm_falls_back_to_sc_with_one_warning(caplog):
    with caplog.at_level("WARNING"):
        choice = decode_choice("pvs", "min", 16, has_prm=False, greedy_sampled=True)
    assert choice == DecodeChoice("sc", "min", 16, fallback_from="pvs")
    assert len(caplog.records) == 1 and "needs a PRM" in caplog.records[0].getMessage()
    assert decode_choice("pvs", "min", 16, has_prm=True, greedy_sampled=True) == DecodeChoice("pvs", "min", 16)


@pytest.mark.integration
def test_eval_stage_without_a_prm_reports_prm_strategies_not_run_and_ends_cleanly(tmp_path, caplog):
    from omegaconf import open_dict

    cfg = compose(["+experiment=eval_bench", "model=tiny", "backend=hf", f"paths.data_dir={BUNDLED_BENCHMARKS}",
                   "stage.limit=1", "stage.n=2", "stage.max_tokens=8",
                   "stage.bootstrap=20", "logger=csv"])
    with open_dict(cfg):
        cfg.suite.benchmarks = [b for b in cfg.suite.benchmarks if b.name in ("medqa", "drugdose")]
    run_dir = tmp_path / "eval"
    with caplog.at_level("WARNING"):
        metrics = run_stage(cfg, run_dir)
    fallbacks = [r for r in caplog.records if "needs a PRM" in r.getMessage()]
    assert len(fallbacks) == 1
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert (metrics["decode"], metrics["decode_fallback_from"]) == ("sc", "pvs") and "macro_sc" in metrics
    lines = (run_dir / "results.md").read_text().splitlines()
    head = next(line for line in lines if line.startswith("| benchmark"))
    assert head == "| benchmark | items | N | greedy | sc | bon | pvs | vote_mean | decode | pass@1 | pass@2 | unparseable |"
    for name in ("medqa", "drugdose", "macro average"):
        row = next(line for line in lines if line.startswith(f"| {name} |"))
        assert row.count("| not run ") == 3
    grid = (run_dir / "grid.csv").read_text().splitlines()
    assert len(grid) - 1 == 2 * 2 and all(",sc,-," in line for line in grid[1:])  # sc at N in {1, 2}
    assert len((run_dir / "predictions" / "drugdose.jsonl").read_text().splitlines()) == 1
    # logger=csv: the results and grid tables beside the run's metrics, results.csv left as written
    log_dir = run_dir / "logs" / "version_0"
    logged = (log_dir / "results.csv").read_text().splitlines()
    assert logged[0] == ",".join(COLUMNS) and len(logged) == 1 + 3  # two benchmarks and the macro average
    assert len((log_dir / "grid.csv").read_text().splitlines()) == len(grid)
    assert (run_dir / "results.csv").read_text().splitlines()[0] != logged[0]  # the full table, intervals too
    assert "macro_sc" in (log_dir / "metrics.csv").read_text().splitlines()[0]
