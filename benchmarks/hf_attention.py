"""The hf backend's decode step: grouped-KV attention vs transformers' sdpa path, same model and inputs.

    python benchmarks/hf_attention.py [--batch 16] [--cached 1500] [--dtypes float32 bfloat16]
                                      [--reps 12] [--profile]

Loads the embedded SmolLM2-135M (9 query heads over 3 KV heads, head_dim 64) as ``backend=hf``
does, fills a pre-allocated KV cache (the backend's own layout: the live part is a view into a
longer buffer) with ``--cached`` positions per row, some rows left-padded, and times one decode
step (all 30 layers, MLPs and logits included) with the model on

- ``previous``: transformers' ``sdpa`` (copies each KV head to its 3 query heads every layer and
  step, ``repeat_kv``, because a padding mask is present), and
- ``ours``: ``grouped_sdpa_attention`` (query heads folded onto their KV head, no copy),

alternating the two in every repetition so machine load hits both alike. Also times the
attention call alone for one layer's shapes, on the cache view and on a contiguous copy. Prints
medians in ms and the ratios previous/ours; ``--profile`` adds the top operators of one step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medsss.generation.hf import GROUPED_ATTENTION, HFBackend, grouped_sdpa_attention  # noqa: E402
from medsss.generation.kv_cache import preallocated_cache  # noqa: E402
from medsss.generation.models import EMBEDDED_SMOLLM2, ModelSpec  # noqa: E402

STOCK = "sdpa"


def decode_inputs(backend: HFBackend, batch: int, cached: int, dtype: torch.dtype):
    """A cache holding ``cached`` random positions per row (rows padded by 0..~10%), and the
    next token's ids, mask and positions."""
    config = backend.model.config
    kv_heads, head_dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    generator = torch.Generator().manual_seed(0)
    cache = preallocated_cache(config.num_hidden_layers, cached + 256)
    for layer in cache.layers:
        keys = torch.randn(batch, kv_heads, cached, head_dim, generator=generator).to(dtype)
        values = torch.randn(batch, kv_heads, cached, head_dim, generator=generator).to(dtype)
        layer.update(keys, values)
    pads = [row * cached // (10 * batch) for row in range(batch)]
    mask = torch.ones(batch, cached + 1, dtype=torch.long)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
    positions = torch.tensor([[cached - pad] for pad in pads])
    ids = torch.randint(0, config.vocab_size, (batch, 1), generator=generator)
    return cache, ids, mask, positions


def rewind(cache, length: int) -> None:
    """Forget the position a decode step appended, so every timed step sees the same cache."""
    for layer in cache.layers:
        layer._length = length
        layer._expose()


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def time_alternating(paths: dict[str, Callable[[], object]], reps: int,
                     prepare: Callable[[str], None] = lambda name: None) -> dict[str, float]:
    """Median ms of each callable, running them in turn within every repetition; ``prepare(name)``
    runs untimed before each call."""
    for name, run in paths.items():  # warm-up: allocator, kernels' first-call costs
        prepare(name)
        run()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(reps):
        for name, run in paths.items():
            prepare(name)
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: median_ms(samples) for name, samples in times.items()}


IMPLEMENTATIONS = {"previous": STOCK, "ours": GROUPED_ATTENTION}


def decode_step(backend: HFBackend, cache, ids, mask, positions, cached: int) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.inference_mode():
            logits = backend.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                   past_key_values=cache, use_cache=True).logits
        rewind(cache, cached)
        return logits

    return run


def attention_only(backend: HFBackend, cache, mask: torch.Tensor) -> dict[str, Callable[[], object]]:
    """One layer's attention call on the backend's cache view and on a contiguous copy."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = backend.model.model.layers[0].self_attn
    config = backend.model.config
    layer = cache.layers[0]
    keys, values = layer.keys, layer.values
    contiguous_keys, contiguous_values = keys.contiguous(), values.contiguous()
    batch, head_dim = keys.shape[0], keys.shape[-1]
    query = torch.randn(batch, config.num_attention_heads, 1, head_dim).to(keys.dtype)
    bool_mask = mask[:, None, None, : keys.shape[2]].bool()
    scale = module.scaling

    def call(function, k, v):
        return lambda: function(module, query, k, v, bool_mask, scaling=scale)

    return {
        "previous (view)": call(sdpa_attention_forward, keys, values),
        "previous (contiguous)": call(sdpa_attention_forward, contiguous_keys, contiguous_values),
        "ours (view)": call(grouped_sdpa_attention, keys, values),
        "ours (contiguous)": call(grouped_sdpa_attention, contiguous_keys, contiguous_values),
    }


def profile(run: Callable[[], object], label: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    print(f"\n-- top operators, one decode step, {label}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def measure(dtype_name: str, args: argparse.Namespace) -> dict[str, float]:
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    backend = HFBackend(ModelSpec(id="smollm2", source=EMBEDDED_SMOLLM2, dtype=dtype_name), device="cpu")
    cache, ids, mask, positions = decode_inputs(backend, args.batch, args.cached, dtype)
    step = decode_step(backend, cache, ids, mask, positions, args.cached)
    steps = {name: step for name in IMPLEMENTATIONS}

    def use(name: str) -> None:
        backend.model.set_attn_implementation(IMPLEMENTATIONS[name])

    logits = {}
    for name in IMPLEMENTATIONS:
        use(name)
        logits[name] = step().float()
    difference = (logits["previous"] - logits["ours"]).abs().max().item()
    same_argmax = (logits["previous"].argmax(-1) == logits["ours"].argmax(-1)).float().mean().item()
    step_ms = time_alternating(steps, args.reps, prepare=use)
    attention_ms = time_alternating(attention_only(backend, cache, mask), args.reps * 3)
    if args.profile:
        for name in IMPLEMENTATIONS:
            use(name)
            profile(step, f"{name}, {dtype_name}")

    print(f"\n{dtype_name}: batch {args.batch}, {args.cached} cached positions, "
          f"{torch.get_num_threads()} threads")
    print(f"  same next token in {same_argmax:.0%} of rows; max |logit difference| {difference:.2e} "
          f"(random cache contents amplified over 30 layers)")
    print(f"  decode step      previous {step_ms['previous']:8.1f} ms   ours {step_ms['ours']:8.1f} ms   "
          f"ratio {step_ms['previous'] / step_ms['ours']:.2f}x")
    for name, ms in attention_ms.items():
        print(f"  attention, one layer, {name:<22} {ms:8.2f} ms")
    ratio = attention_ms["previous (view)"] / attention_ms["ours (view)"]
    print(f"  attention ratio (previous / ours, cache view): {ratio:.2f}x")
    return {"step_ratio": step_ms["previous"] / step_ms["ours"], "attention_ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--cached", type=int, default=1500)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16"])
    parser.add_argument("--reps", type=int, default=12)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--profile", action="store_true", help="print the top operators of one step per path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {name: measure(name, args) for name in args.dtypes}
    print("\ndecode-step speed-up of grouped attention (previous / ours): "
          + ", ".join(f"{name} {r['step_ratio']:.2f}x" for name, r in results.items()))


if __name__ == "__main__":
    main()
