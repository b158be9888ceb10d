"""model.dtype=auto: the CPU dtype probe's choice, its weighting, its per-machine cache."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch

from medsss.generation import dtype as probe
from medsss.generation.dtype import ModelShape, ProbeTiming, choose_dtype, model_shape
from medsss.generation.models import ModelSpec

# SmolLM2-135M's shape: 9 query heads over 3 KV heads, 30 layers.
SMOLLM2 = ModelShape(hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9, num_kv_heads=3,
                     head_dim=64, vocab_size=49152)
SMOLLM2_CONFIG = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                  "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
                  "model_type": "llama"}


def ms(attention: float, projections: float, lm_head: float) -> ProbeTiming:
    return ProbeTiming(attention / 1e3, projections / 1e3, lm_head / 1e3)


# The measurements on an AMD EPYC with AVX512-BF16 and no AMX: bfloat16 attention 32 ms
# against 8.9 ms, matmuls 2.4x faster in bfloat16.
EPYC = {torch.bfloat16: ms(32.0, 1.0, 10.0), torch.float32: ms(8.9, 2.4, 24.0)}
# A CPU with AMX: bfloat16 faster everywhere.
AMX = {torch.bfloat16: ms(4.0, 0.5, 5.0), torch.float32: ms(6.0, 2.0, 20.0)}


class StubTimer:
    """Timings from a table, and a record of what was timed."""

    def __init__(self, table: dict[torch.dtype, ProbeTiming]) -> None:
        self.table = table
        self.calls: list[tuple[ModelShape, torch.dtype]] = []

    def __call__(self, shape: ModelShape, dtype: torch.dtype) -> ProbeTiming:
        self.calls.append((shape, dtype))
        return self.table[dtype]


def no_timing(shape: ModelShape, dtype: torch.dtype) -> ProbeTiming:
    raise AssertionError("the probe ran although it should not have")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A scratch cache file on a quiet machine called 'machine A'."""
    monkeypatch.setattr(probe, "machine_key", lambda: "machine A")
    monkeypatch.setattr(probe, "machine_busy", lambda: False)
    return tmp_path / "dtype_probe.json"


def test_bfloat16_faster_chooses_bfloat16(cache):
    timer = StubTimer(AMX)
    assert choose_dtype(SMOLLM2, "cpu", timer=timer, cache_file=cache) == torch.bfloat16
    assert [dtype for _, dtype in timer.calls] == [torch.bfloat16, torch.float32]
    assert all(shape == SMOLLM2 for shape, _ in timer.calls)


def test_float32_faster_chooses_float32(cache):
    # 30 x (32 + 1) + 10 = 1000 ms against 30 x (8.9 + 2.4) + 24 = 363 ms.
    assert choose_dtype(SMOLLM2, "cpu", timer=StubTimer(EPYC), cache_file=cache) == torch.float32


def test_a_step_is_layers_times_attention_and_projections_plus_lm_head():
    assert ms(3.0, 1.0, 30.0).step_s(2) == pytest.approx(0.038)  # 2 x (3 + 1) + 30 ms


@pytest.mark.parametrize(("layers", "expected"), [(2, torch.bfloat16), (40, torch.float32)])
def test_layer_count_weighs_attention_against_the_lm_head(cache, layers, expected):
    # bfloat16: slower attention, faster matmuls. 2 layers: 38 ms against 66 ms; 40 layers: 190 against 180.
    table = {torch.bfloat16: ms(3.0, 1.0, 30.0), torch.float32: ms(1.0, 2.0, 60.0)}
    shape = ModelShape(64, 128, layers, 1, 1, 64, 4096)
    assert choose_dtype(shape, "cpu", timer=StubTimer(table), cache_file=cache) == expected


def test_verdict_is_cached_with_its_timings(cache):
    choose_dtype(SMOLLM2, "cpu", timer=StubTimer(EPYC), cache_file=cache)
    entry = json.loads(cache.read_text())["machine A"][SMOLLM2.key()]
    assert entry["dtype"] == "float32"
    assert entry["bfloat16"] == pytest.approx({"step_ms": 1000.0, "attention_ms": 32.0, "projections_ms": 1.0,
                                               "lm_head_ms": 10.0})
    assert entry["float32"]["step_ms"] == pytest.approx(363.0)
    # The second run reads the verdict and times nothing.
    assert choose_dtype(SMOLLM2, "cpu", timer=no_timing, cache_file=cache) == torch.float32


def test_cache_hit_times_nothing(cache):
    cache.write_text(json.dumps({"machine A": {SMOLLM2.key(): {"dtype": "bfloat16"}}}))
    assert choose_dtype(SMOLLM2, "cpu", timer=no_timing, cache_file=cache) == torch.bfloat16


def test_another_machine_measures_again(cache, monkeypatch):
    choose_dtype(SMOLLM2, "cpu", timer=StubTimer(EPYC), cache_file=cache)
    monkeypatch.setattr(probe, "machine_key", lambda: "machine B")
    timer = StubTimer(AMX)
    assert choose_dtype(SMOLLM2, "cpu", timer=timer, cache_file=cache) == torch.bfloat16
    assert len(timer.calls) == 2
    verdicts = json.loads(cache.read_text())
    assert (verdicts["machine A"][SMOLLM2.key()]["dtype"], verdicts["machine B"][SMOLLM2.key()]["dtype"]) == (
        "float32", "bfloat16")


def test_another_model_shape_measures_again(cache):
    choose_dtype(SMOLLM2, "cpu", timer=StubTimer(EPYC), cache_file=cache)
    timer = StubTimer(AMX)
    wider = dataclasses.replace(SMOLLM2, hidden_size=960)
    assert choose_dtype(wider, "cpu", timer=timer, cache_file=cache) == torch.bfloat16
    assert len(timer.calls) == 2


def test_machine_key_names_cpu_torch_and_threads(monkeypatch):
    monkeypatch.setattr(probe, "_cpu_identity", lambda: ("AMD EPYC", "fpu avx512f avx512_bf16"))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    key = probe.machine_key()
    assert key.startswith("AMD EPYC | flags ") and key.endswith(f"| torch {torch.__version__} | threads 2")
    monkeypatch.setattr(probe, "_cpu_identity", lambda: ("AMD EPYC", "fpu avx512f"))  # same name, no BF16
    assert probe.machine_key() != key


def test_busy_machine_uses_the_verdict_without_caching_it(cache, monkeypatch, caplog):
    monkeypatch.setattr(probe, "machine_busy", lambda: True)
    with caplog.at_level(logging.INFO, logger="medsss.generation.dtype"):
        assert choose_dtype(SMOLLM2, "cpu", timer=StubTimer(EPYC), cache_file=cache) == torch.float32
    assert not cache.exists()
    assert "not cached: the machine was busy" in caplog.text


def test_one_log_line_with_timings_and_verdict(cache, caplog):
    with caplog.at_level(logging.INFO, logger="medsss.generation.dtype"):
        choose_dtype(SMOLLM2, "cpu", timer=StubTimer(EPYC), cache_file=cache)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("model.dtype=auto: float32 (probe of hidden576-")
    assert "bfloat16 1000.0 ms" in line and "float32 363.0 ms" in line


def test_unreadable_cache_is_measured_and_rewritten(cache):
    cache.write_text("{not json")
    assert choose_dtype(SMOLLM2, "cpu", timer=StubTimer(AMX), cache_file=cache) == torch.bfloat16
    assert json.loads(cache.read_text())["machine A"][SMOLLM2.key()]["dtype"] == "bfloat16"


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16"])
def test_explicit_dtype_is_obeyed_without_timing(cache, name):
    spec = ModelSpec(id="m", source="/nowhere", dtype=name)
    assert choose_dtype(spec, "cpu", timer=no_timing, cache_file=cache) == getattr(torch, name)
    by_argument = choose_dtype(SMOLLM2, "cpu", requested=name, timer=no_timing, cache_file=cache)
    assert by_argument == getattr(torch, name)
    assert not cache.exists()


def test_unknown_dtype_name_is_refused(cache):
    with pytest.raises(ValueError, match="model.dtype 'fp8' must be one of auto, float32, bfloat16, float16"):
        choose_dtype(SMOLLM2, "cpu", requested="fp8", timer=no_timing, cache_file=cache)


@pytest.mark.parametrize(("bf16_supported", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_cuda_takes_bfloat16_or_float16_without_timing(cache, monkeypatch, bf16_supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    assert choose_dtype(SMOLLM2, "cuda:0", timer=no_timing, cache_file=cache) == expected


def test_model_without_local_config_falls_back_to_float32(cache):
    spec = ModelSpec(id="hub", source="some-org/not-downloaded", dtype="auto")
    assert choose_dtype(spec, "cpu", timer=no_timing, cache_file=cache) == torch.float32


# -- the model's shape ----------------------------------------------------------------------------


def test_shape_from_config_mapping():
    assert model_shape(SMOLLM2_CONFIG) == SMOLLM2


def test_shape_defaults_kv_heads_and_head_dim():
    config = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
              "vocab_size": 1000}
    assert model_shape(config) == ModelShape(256, 512, 4, 4, 4, 64, 1000)


def test_shape_from_model_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    assert model_shape(str(tmp_path)) == SMOLLM2
    assert model_shape(ModelSpec(id="local", source=str(tmp_path))) == SMOLLM2


def test_shape_of_tiny_model_from_its_overrides_without_building_it(monkeypatch):
    monkeypatch.setattr(ModelSpec, "resolve", lambda self: pytest.fail("the tiny model was built"))
    spec = ModelSpec(id="tiny", source="tiny", tiny={"hidden_size": 128, "num_hidden_layers": 3})
    assert model_shape(spec) == ModelShape(128, 128, 3, 1, 1, 128, 4096)


def test_config_missing_a_size_names_file_and_key(tmp_path):
    without_vocab = {k: v for k, v in SMOLLM2_CONFIG.items() if k != "vocab_size"}
    (tmp_path / "config.json").write_text(json.dumps(without_vocab))
    with pytest.raises(ValueError, match=r"config.json has no 'vocab_size'"):
        model_shape(str(tmp_path))


# -- the real probe -------------------------------------------------------------------------------


def test_real_probe_on_a_small_shape_picks_the_dtype_its_own_timings_favour(cache):
    small = ModelShape(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1,
                       head_dim=32, vocab_size=512)
    chosen = choose_dtype(small, "cpu", cache_file=cache)
    entry = json.loads(cache.read_text())["machine A"][small.key()]
    for name in ("bfloat16", "float32"):
        parts = [entry[name][part] for part in ("attention_ms", "projections_ms", "lm_head_ms")]
        assert min(parts) > 0
        # a step is every layer's attention and projections, then the LM head
        assert entry[name]["step_ms"] == pytest.approx(small.num_layers * (parts[0] + parts[1]) + parts[2], rel=1e-3)
    faster = min(("bfloat16", "float32"), key=lambda name: entry[name]["step_ms"])
    assert entry["dtype"] == faster and chosen == getattr(torch, faster)


def test_training_verdicts_are_cached_apart_from_decode_verdicts(cache):
    # One machine, one model: decode prefers float32 (slow bfloat16 attention over a KV cache),
    # training prefers bfloat16 (its matmuls dominate). Each verdict is kept under its own key.
    assert choose_dtype(SMOLLM2, "cpu", timer=StubTimer(EPYC), cache_file=cache) == torch.float32
    assert choose_dtype(SMOLLM2, "cpu", timer=StubTimer(AMX), cache_file=cache, workload="train") == torch.bfloat16
    entries = json.loads(cache.read_text())["machine A"]
    assert entries[SMOLLM2.key()]["dtype"] == "float32"
    assert entries["train:" + SMOLLM2.key()]["dtype"] == "bfloat16"
    assert choose_dtype(SMOLLM2, "cpu", timer=no_timing, cache_file=cache, workload="train") == torch.bfloat16
    assert choose_dtype(SMOLLM2, "cpu", timer=no_timing, cache_file=cache) == torch.float32
    with pytest.raises(ValueError, match="workload"):
        choose_dtype(SMOLLM2, "cpu", timer=no_timing, cache_file=cache, workload="serve")


def test_the_training_probe_times_forward_and_backward_of_every_part():
    tiny = ModelShape(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=16, vocab_size=512)
    for dtype in (torch.float32, torch.bfloat16):
        timing = probe.time_train_step(tiny, dtype)
        assert timing.attention_s > 0 and timing.projections_s > 0 and timing.lm_head_s > 0
