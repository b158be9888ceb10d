"""The hf backend's own decode loop vs transformers' batched ``generate`` (and ``generate_batch``).

    python benchmarks/hf_engine.py [--model smollm2_135m] [--questions 8] [--n 4] [--max-tokens 64]
    python benchmarks/hf_engine.py --questions 2 --n 2 --max-tokens 16 --continuous

The same requests in every arm: ``--questions`` bundled questions as chat prompts (the project's
system prompt, the assistant turn opened with "Step 1:"), ``--n`` samples each at temperature
1.0 and top-p 0.95, ``--max-tokens`` new tokens, no stop strings; the same model object, dtype
and threads. Arms:

* ``HFBackend.generate``: medsss' loop (prefix KV cache, pre-allocated cache, grouped-query decode
  attention, sort-free top-p, finished rows dropped);
* ``model.generate``: transformers' batched generation, left-padded, ``num_return_sequences=n``,
  in batches of the backend's ``max_batch_size`` rows;
* ``model.generate_batch`` (with ``--continuous``): transformers' continuous batching, where the
  installed version offers it and it runs on this device (else the reason is printed). On CPU it
  generates a few tokens per second, so it is opt-in and meant for small runs.

Prints generated tokens, wall seconds and tokens/s per arm and the ratios. The arms sample
different text (different random streams), so tokens/s is the measure, not wall time alone.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compose import compose_config  # noqa: E402


def requests_for(cfg, questions: int, n: int, max_tokens: int):
    from hydra.utils import instantiate

    from medsss.data.loaders import load_problems
    from medsss.data.prompts import build_messages
    from medsss.generation.base import GenerationRequest

    problems = load_problems(instantiate(cfg.data)).problems[:questions]
    return [GenerationRequest(build_messages(p.question, cfg.prompt.system), prefill="Step 1:", n=n,
                              temperature=1.0, top_p=0.95, max_tokens=max_tokens, seed=k)
            for k, p in enumerate(problems)]


def ours(backend, requests) -> tuple[int, float]:
    started = time.perf_counter()
    completions = backend.generate(requests)
    seconds = time.perf_counter() - started
    return sum(c.generated_tokens for row in completions for c in row), seconds


def transformers_generate(backend, requests, max_tokens: int) -> tuple[int, float]:
    tokenizer, model = backend.tokenizer, backend.model
    texts = [backend.prompt_text(r) for r in requests]
    n = requests[0].n
    per_call = max(1, backend.max_batch_size // n)  # prompts per call: rows = prompts x n
    eos = set(tokenizer.all_special_ids) & {tokenizer.eos_token_id, tokenizer.pad_token_id}
    generated, started = 0, time.perf_counter()
    torch.manual_seed(0)
    for start in range(0, len(texts), per_call):
        batch = tokenizer(texts[start : start + per_call], return_tensors="pt", padding=True,
                          add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**batch, do_sample=True, temperature=1.0, top_p=0.95, top_k=0,
                                 max_new_tokens=max_tokens, num_return_sequences=n,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[:, batch["input_ids"].shape[1] :]
        for row in new.tolist():
            stop = next((i for i, t in enumerate(row) if t in eos), len(row))
            generated += min(len(row), stop + 1)
    return generated, time.perf_counter() - started


def transformers_generate_batch(backend, requests, max_tokens: int) -> tuple[int, float] | str:
    from transformers import GenerationConfig

    model, tokenizer = backend.model, backend.tokenizer
    if not hasattr(model, "generate_batch"):
        return "this transformers version has no generate_batch"
    inputs = [tokenizer(backend.prompt_text(r), add_special_tokens=False)["input_ids"]
              for r in requests for _ in range(r.n)]
    config = GenerationConfig(do_sample=True, temperature=1.0, top_p=0.95, top_k=0, max_new_tokens=max_tokens,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    started = time.perf_counter()
    try:  # its generation loop runs in a thread of its own, outside any inference_mode here
        outputs = model.generate_batch(inputs, generation_config=config, progress_bar=False, warmup=False)
    except Exception as error:  # continuous batching needs kernels some devices lack
        return f"{type(error).__name__}: {str(error)[:200]}"
    seconds = time.perf_counter() - started
    tokens = sum(len(o.generated_tokens) for o in outputs.values())
    return (tokens, seconds) if tokens else "every request failed (see the log above)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--dtype", default="float32", help="one dtype for every arm")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--continuous", action="store_true", help="also time model.generate_batch")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from hydra.utils import instantiate

    from medsss.generation.hf import HFBackend

    cfg = compose_config([f"model={args.model}", f"model.dtype={args.dtype}", ])
    backend = HFBackend(instantiate(cfg.model), device="cpu")
    requests = requests_for(cfg, args.questions, args.n, args.max_tokens)
    ours(backend, requests[:1])  # warm-up: stop criteria, first oneDNN primitives
    backend._prefix_cache.clear()  # every arm starts without cached prompts

    results: dict[str, tuple[int, float] | str] = {"HFBackend.generate (ours)": ours(backend, requests)}
    # transformers' own paths run with its stock attention (ours registers a grouped-query one).
    backend.model.set_attn_implementation("sdpa")
    results["model.generate"] = transformers_generate(backend, requests, args.max_tokens)
    if args.continuous:
        results["model.generate_batch"] = transformers_generate_batch(backend, requests, args.max_tokens)
    rows = sum(r.n for r in requests)
    print(f"\n{len(requests)} prompts x {args.n} samples = {rows} rows, up to {args.max_tokens} new tokens, "
          f"model={args.model} ({args.dtype}), {torch.get_num_threads()} threads")
    print(f"{'arm':>28} {'tokens':>7} {'seconds':>8} {'tokens/s':>9}")
    for name, result in results.items():
        if isinstance(result, str):
            print(f"{name:>28}  not run: {result}")
        else:
            tokens, seconds = result
            print(f"{name:>28} {tokens:>7} {seconds:>8.1f} {tokens / seconds:>9.1f}")
    base_tokens, base_seconds = results["HFBackend.generate (ours)"]  # type: ignore[misc]
    for name, result in results.items():
        if name.startswith("HFBackend") or isinstance(result, str):
            continue
        tokens, seconds = result
        print(f"ours vs {name}: {(base_tokens / base_seconds) / (tokens / seconds):.2f}x tokens/s")


if __name__ == "__main__":
    main()
