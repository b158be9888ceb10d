"""``model.dtype=auto``: the floating-point type a model runs in, chosen by measurement on CPUs.

On GPUs the answer is bfloat16 (float16 where the GPU lacks bfloat16). On CPUs it depends on the
chip and on the model: bfloat16 matmuls are faster than float32 wherever the CPU has BF16
instructions (AVX512-BF16, AMX), but torch's bfloat16 attention over a long KV cache can be
several times *slower* than float32 (measured on an AMD EPYC with AVX512-BF16 and no AMX: a
decode-shaped SDPA call 32 ms in bfloat16 against 8.9 ms in float32, while matmuls were 2.4x
faster in bfloat16). So the probe times one decode step of the model's own shape in both types
and keeps the faster.

One decode step is estimated as ``layers x (attention + projections) + LM head``, each part
timed once per type on inputs of the model's sizes: ``PROBE_ROWS`` rows, each attending over
``PROBE_POSITIONS`` cached positions (an MCTS rollout's typical depth) with the model's query
heads folded onto their KV heads (as the hf backend's decode attention runs) and head size; the q/k/v/o and
gate/up/down projections of one layer; and the LM head. Norms, rotary embeddings and sampling
are left out: they cost the same order in both types and little next to these.

Verdicts are cached in ``$MEDSSS_CACHE/dtype_probe.json`` per machine (CPU model, CPU flags,
torch version, thread count) and per model shape, so only the first run on a machine pays for
the probe (about half a second on 2 cores for SmolLM2-135M). A verdict measured while other
processes kept the cores busy is used for that run but not cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medsss.generation.models import _TINY_DEFAULTS, TINY, TINY_VOCAB, cache_root
from medsss.io import atomic_writer

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
}
CANDIDATES = ("bfloat16", "float32")  # what the CPU probe chooses between
PROBE_ROWS = 16  # decode rows per step: a few trees' expansions side by side
PROBE_POSITIONS = 1500  # cached positions each row attends over: prompt plus a few steps
PROBE_REPEATS = 3  # timed calls per part at least, after one warm-up call; the fastest counts
PROBE_MAX_CALLS = 20  # ... and at most, for calls short enough to fit the budget
PROBE_BUDGET_S = 0.03  # time per part under which short calls keep repeating
CACHE_FILE_NAME = "dtype_probe.json"
# Training (``stage.dtype=auto``): a forward and backward pass over one sequence of this many
# tokens; the LM head is timed on LM_HEAD_ROWS of them and scaled (it dominates the probe's
# cost otherwise, and its time is linear in rows).
TRAIN_PROBE_TOKENS = 128
TRAIN_LM_HEAD_ROWS = 32


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that decide its decode cost."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "the model config") -> ModelShape:
        """From a transformers ``config.json`` (Llama-style key names)."""
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "vocab_size"):
            if config.get(key) is None:
                raise ValueError(f"{where} has no '{key}': the dtype probe needs it to time the model")
        heads = int(config["num_attention_heads"])
        return cls(
            hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or int(config["hidden_size"]) // heads),
            vocab_size=int(config["vocab_size"]),
        )

    def key(self) -> str:
        return (f"hidden{self.hidden_size}-mlp{self.intermediate_size}-layers{self.num_layers}-"
                f"heads{self.num_heads}-kv{self.num_kv_heads}-dim{self.head_dim}-vocab{self.vocab_size}")


@dataclass(frozen=True)
class ProbeTiming:
    """Seconds per call of each part of a decode step, in one dtype."""

    attention_s: float  # one layer's attention over the KV cache
    projections_s: float  # one layer's q/k/v/o and MLP matmuls
    lm_head_s: float  # the vocabulary projection, once per step

    def step_s(self, num_layers: int) -> float:
        return num_layers * (self.attention_s + self.projections_s) + self.lm_head_s


Timer = Callable[[ModelShape, torch.dtype], ProbeTiming]


# -- the model's shape ----------------------------------------------------------------------------


def model_shape(model: Any) -> ModelShape:
    """The shape of a ``ModelSpec``, a model folder (or its ``config.json``), a config mapping,
    or a transformers ``PretrainedConfig``. Raises ``FileNotFoundError`` when no local
    ``config.json`` exists (a hub id not downloaded yet)."""
    if isinstance(model, ModelShape):
        return model
    if isinstance(model, Mapping):
        return ModelShape.from_config(model)
    if hasattr(model, "to_dict") and hasattr(model, "model_type"):  # a transformers PretrainedConfig
        name = getattr(model, "name_or_path", "") or "the model"
        return ModelShape.from_config(model.to_dict(), where=f"config of {name}")
    if hasattr(model, "source") and hasattr(model, "resolve"):  # a ModelSpec
        if model.source == TINY and getattr(model, "tokenizer", "bpe") == "bpe":
            # Known without building the tiny model: its defaults, the overrides, the 4k BPE vocabulary.
            config = {**_TINY_DEFAULTS, **dict(model.tiny or {}), "vocab_size": TINY_VOCAB}
            return ModelShape.from_config(config, where=f"model.tiny of '{model.id}'")
        return _shape_from_folder(model.resolve())
    if isinstance(model, (str, Path)):
        return _shape_from_folder(model)
    raise TypeError(f"cannot read a model shape from a {type(model).__name__}: "
                    "pass a ModelSpec, a model folder or a config")


def _shape_from_folder(path: str | Path) -> ModelShape:
    path = Path(path).expanduser()
    config_file = path if path.name == "config.json" else path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json at {config_file}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from err
    # Multimodal configs nest the language model's sizes.
    config = config.get("text_config", config)
    return ModelShape.from_config(config, where=str(config_file))


# -- timing ---------------------------------------------------------------------------------------


def _fastest_call(fn: Callable[[], Any]) -> float:
    """The fastest of at least ``PROBE_REPEATS`` calls after a warm-up (first calls create oneDNN
    primitives and allocate). Short calls repeat up to ``PROBE_MAX_CALLS`` times within
    ``PROBE_BUDGET_S``: on a busy machine a millisecond call is often stretched by a descheduled
    thread, and the fastest of many is the kernel's own speed."""
    fn()
    best, spent, calls = float("inf"), 0.0, 0
    while calls < PROBE_REPEATS or (spent < PROBE_BUDGET_S and calls < PROBE_MAX_CALLS):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent, calls = min(best, elapsed), spent + elapsed, calls + 1
    return best


def time_decode_step(shape: ModelShape, dtype: torch.dtype) -> ProbeTiming:
    """Time the parts of one decode step of ``shape`` in ``dtype`` on the CPU (see module doc)."""
    def rand(*size: int) -> torch.Tensor:
        # The values do not change these kernels' speed; a constant fill costs a fifth of randn
        # for the LM head's tens of millions of weights.
        return torch.full(size, 0.01, dtype=dtype)

    rows, d = PROBE_ROWS, shape.head_dim
    # The hf backend's decode attention folds each KV head's query heads into query positions
    # (medsss.generation.hf.grouped_sdpa_attention): time that shape, not a repeat_kv copy.
    query = rand(rows, shape.num_kv_heads, shape.num_heads // shape.num_kv_heads, d)
    keys = rand(rows, shape.num_kv_heads, PROBE_POSITIONS, d)
    values = rand(rows, shape.num_kv_heads, PROBE_POSITIONS, d)

    hidden = rand(rows, shape.hidden_size)
    qkv = rand(shape.num_heads * d + 2 * shape.num_kv_heads * d, shape.hidden_size)
    out = rand(shape.hidden_size, shape.num_heads * d)
    gate_up = rand(2 * shape.intermediate_size, shape.hidden_size)
    down = rand(shape.hidden_size, shape.intermediate_size)
    mlp_in = rand(rows, shape.intermediate_size)
    attn_out = rand(rows, shape.num_heads * d)
    lm_head = rand(shape.vocab_size, shape.hidden_size)

    def projections() -> None:
        F.linear(hidden, qkv)
        F.linear(attn_out, out)
        F.linear(hidden, gate_up)
        F.linear(mlp_in, down)

    def attention() -> None:
        F.scaled_dot_product_attention(query, keys, values)

    with torch.inference_mode():
        return ProbeTiming(
            attention_s=_fastest_call(attention),
            projections_s=_fastest_call(projections),
            lm_head_s=_fastest_call(lambda: F.linear(hidden, lm_head)),
        )


def time_train_step(shape: ModelShape, dtype: torch.dtype) -> ProbeTiming:
    """Time the parts of a training step of ``shape`` in ``dtype`` on the CPU: forward and
    backward over ``TRAIN_PROBE_TOKENS`` tokens of one sequence, with frozen weights (LoRA
    trains adapters only, so the backward pass needs input gradients, not weight gradients):
    one layer's causal attention and projections, and the LM head."""
    tokens, d = TRAIN_PROBE_TOKENS, shape.head_dim

    def leaf(*size: int) -> torch.Tensor:
        return torch.full(size, 0.01, dtype=dtype, requires_grad=True)

    def weight(*size: int) -> torch.Tensor:
        return torch.full(size, 0.01, dtype=dtype)

    query, keys, values = (leaf(1, shape.num_heads, tokens, d) for _ in range(3))
    hidden = leaf(tokens, shape.hidden_size)
    mlp_in = leaf(tokens, shape.intermediate_size)
    attn_out = leaf(tokens, shape.num_heads * d)
    qkv = weight(shape.num_heads * d + 2 * shape.num_kv_heads * d, shape.hidden_size)
    out = weight(shape.hidden_size, shape.num_heads * d)
    gate_up = weight(2 * shape.intermediate_size, shape.hidden_size)
    down = weight(shape.hidden_size, shape.intermediate_size)
    lm_head = weight(shape.vocab_size, shape.hidden_size)
    head_rows = leaf(min(TRAIN_LM_HEAD_ROWS, tokens), shape.hidden_size)

    def attention() -> None:
        F.scaled_dot_product_attention(query, keys, values, is_causal=True).sum().backward()

    def projections() -> None:
        total = (F.linear(hidden, qkv).sum() + F.linear(attn_out, out).sum()
                 + F.linear(hidden, gate_up).sum() + F.linear(mlp_in, down).sum())
        total.backward()

    def head() -> None:
        F.linear(head_rows, lm_head).float().sum().backward()

    return ProbeTiming(
        attention_s=_fastest_call(attention),
        projections_s=_fastest_call(projections),
        lm_head_s=_fastest_call(head) * tokens / head_rows.shape[0],
    )


# -- the per-machine cache ------------------------------------------------------------------------


def _cpu_identity() -> tuple[str, str]:
    """(CPU model name, its feature flags) from /proc/cpuinfo, or what ``platform`` knows."""
    name, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            field, _, value = line.partition(":")
            field = field.strip()
            if field == "model name" and not name:
                name = value.strip()
            elif field in ("flags", "Features") and not flags:
                flags = value.strip()
            if name and flags:
                break
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), flags


def machine_key() -> str:
    """What a verdict depends on besides the model: the CPU, torch's kernels and the threads."""
    name, flags = _cpu_identity()
    flags_hash = hashlib.sha1(" ".join(sorted(flags.split())).encode()).hexdigest()[:12]
    return f"{name} | flags {flags_hash} | torch {torch.__version__} | threads {torch.get_num_threads()}"


def machine_busy() -> bool:
    """Whether other processes keep the usable cores busy (1-minute load average above their
    count): timings taken then are stretched by waiting threads, and a verdict from them is used
    for this run but not kept."""
    from medsss.hardware import load_average, usable_cores

    load = load_average()
    return load is not None and load > usable_cores()


def default_cache_file() -> Path:
    return cache_root() / CACHE_FILE_NAME


def _read_cache(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        log.warning("ignoring unreadable dtype probe cache %s (%s); it will be rewritten", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache_entry(path: Path, machine: str, shape_key: str, entry: dict[str, Any]) -> None:
    """Add one verdict, re-reading the file first (another process may have added its own) and
    replacing it atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _read_cache(path)
    data.setdefault(machine, {})[shape_key] = entry
    with atomic_writer(path) as handle:
        json.dump(data, handle, indent=1, sort_keys=True)


# -- the choice -----------------------------------------------------------------------------------


def dtype_by_name(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"model.dtype '{name}' must be one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def choose_dtype(
    model: Any,
    device: str = "cpu",
    requested: str | None = None,
    *,
    timer: Timer | None = None,
    cache_file: Path | None = None,
    workload: str = "decode",
) -> torch.dtype:
    """The dtype to load ``model`` in on ``device``.

    ``requested`` defaults to ``model.dtype`` for a ``ModelSpec`` (else ``auto``); anything but
    ``auto`` is obeyed as it is. ``auto``: bfloat16 on CUDA (float16 without bfloat16 support);
    on CPU the faster of bfloat16 and float32 for this model's decode step on this machine,
    measured once and cached (``timer`` and ``cache_file`` are for tests). ``workload`` is what is
    timed: ``decode`` (a generation step, :func:`time_decode_step`) or ``train`` (a training step,
    :func:`time_train_step`); each has its own verdict in the cache.
    """
    if workload not in WORKLOAD_TIMERS:
        raise ValueError(f"dtype probe workload '{workload}' must be one of {', '.join(WORKLOAD_TIMERS)}")
    if requested is None:
        requested = getattr(model, "dtype", "auto")
    if requested != "auto":
        return dtype_by_name(requested)
    kind = _device_kind(device)
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind != "cpu":
        log.info("model.dtype=auto on device '%s': float32 (the probe measures CPUs only)", device)
        return torch.float32
    try:
        shape = model_shape(model)
    except FileNotFoundError as err:
        log.warning("model.dtype=auto: %s, so the dtype probe cannot read the model's shape; float32", err)
        return torch.float32
    return _cpu_verdict(shape, timer or WORKLOAD_TIMERS[workload], cache_file or default_cache_file(),
                        workload)


def _device_kind(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def _cpu_verdict(shape: ModelShape, timer: Timer, cache_file: Path, workload: str = "decode") -> torch.dtype:
    machine = machine_key()
    # Decode verdicts keep the shape alone as their key (caches written before training had one).
    shape_key = shape.key() if workload == "decode" else f"{workload}:{shape.key()}"
    verdicts = _read_cache(cache_file).get(machine)
    cached = verdicts.get(shape_key) if isinstance(verdicts, dict) else None
    if isinstance(cached, dict) and cached.get("dtype") in CANDIDATES:
        log.info("%s: %s (cached probe in %s: %s step %s)", WORKLOAD_SETTING[workload], cached["dtype"],
                 cache_file, workload, _summary(cached))
        return DTYPES[cached["dtype"]]
    busy = machine_busy()
    timings = {name: timer(shape, DTYPES[name]) for name in CANDIDATES}
    steps = {name: timing.step_s(shape.num_layers) for name, timing in timings.items()}
    verdict = min(CANDIDATES, key=lambda name: steps[name])
    entry: dict[str, Any] = {"dtype": verdict}
    for name, timing in timings.items():
        parts_ms = {part.removesuffix("_s") + "_ms": 1e3 * sec for part, sec in asdict(timing).items()}
        entry[name] = {"step_ms": 1e3 * steps[name], **parts_ms}
    log.info("%s: %s (probe of %s on %s: %s step %s)%s",
             WORKLOAD_SETTING[workload], verdict, shape_key, machine, workload, _summary(entry),
             "; not cached: the machine was busy, so the next run measures again" if busy else "")
    if busy:
        return DTYPES[verdict]
    try:
        _write_cache_entry(cache_file, machine, shape_key, entry)
    except OSError as err:  # a read-only cache costs a re-measurement next time, nothing more
        log.warning("could not write the dtype probe cache %s: %s", cache_file, err)
    return DTYPES[verdict]


WORKLOAD_TIMERS: dict[str, Timer] = {"decode": time_decode_step, "train": time_train_step}
WORKLOAD_SETTING = {"decode": "model.dtype=auto", "train": "stage.dtype=auto"}  # what a log line names


def _summary(entry: Mapping[str, Any]) -> str:
    def part(timing: Mapping[str, Any], key: str) -> float:
        return float(timing.get(key, float("nan")))

    texts = []
    for name in CANDIDATES:
        t = entry.get(name) or {}
        texts.append(f"{name} {part(t, 'step_ms'):.1f} ms (attention {part(t, 'attention_ms'):.2f}, "
                     f"projections {part(t, 'projections_ms'):.2f} per layer, "
                     f"LM head {part(t, 'lm_head_ms'):.2f})")
    return " vs ".join(texts)
