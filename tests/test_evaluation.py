"""Evaluation on the tiny model: sampling and scoring into a cache, the stage's outputs and resume,
and the released-model layouts (a policy LoRA adapter merged at load)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import BENCHMARKS, compose
from helpers import ScriptedBackend, build_tree, problem

from medsss.evaluation.sampling import sample_and_score
from medsss.generation.base import GenerationRequest
from medsss.generation.hf import HFBackend
from medsss.generation.models import ModelSpec
from medsss.run import run_stage


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
    assert len(scored) == 6  # every sampled candidate scored once
    backend = ScriptedBackend(respond)
    again = sample_and_score([problem(pid="a"), problem(pid="b")], backend, score_chains, cache, **kwargs)
    assert again == rows and backend.calls == []  # the cache answers; nothing is generated


@pytest.mark.skipif(not BENCHMARKS.exists(), reason="shared benchmarks not present")
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
    overrides = ["+experiment=eval_bench", "model=tiny", f"stage.prm.path={prm_dir}", "stage.limit=2",
                 "stage.n=4", "stage.max_tokens=12", "stage.bootstrap=5", "logger=none",
                 f"stage.diagnostics.trees={held_out}"]
    run_dir = tmp_path / "eval"
    metrics = run_stage(compose(overrides), run_dir)
    table = (run_dir / "results.md").read_text()
    for name in ("medqa", "medmcqa", "mmlu_medical", "pubmedqa", "bioasq", "pubhealth", "drugdose", "macro average"):
        assert f"| {name} |" in table
    assert len(list((run_dir / "plots").glob("*.png"))) == 7 + 2  # one per benchmark, reliability, abstention
    grid = (run_dir / "grid.csv").read_text().splitlines()
    assert grid[0].startswith("benchmark,selection,aggregation,n,accuracy,ci_low,ci_high")
    assert len(grid) - 1 == 7 * 3 * (1 + 3 * 5)  # 7 benchmarks x N in {1,2,4} x (sc + 3 PRM rules x 5 aggregations)
    predictions = [json.loads(line) for line in (run_dir / "predictions" / "medqa.jsonl").read_text().splitlines()]
    assert len(predictions) == 2 and {"id", "gold", "answer", "correct"} <= set(predictions[0])
    assert metrics["generations_sampled"] == 7 * 2 * 5 and metrics["generation_calls"] > 0
    assert metrics["generations_without_cache"] > metrics["generations_sampled"]
    assert 0.0 <= metrics["prm_ece"] <= 1.0 and metrics["prm_diagnostic_steps"] == 2
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
