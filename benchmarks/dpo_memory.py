"""Peak memory of a DPO training step against an SFT step on the same sequences (LoRA, fp32).

    python benchmarks/dpo_memory.py                 # the tiny model (seconds)
    python benchmarks/dpo_memory.py --embedded      # the embedded SmolLM2-135M (a minute or two)
    python benchmarks/dpo_memory.py --pairs 8 --steps 4 --set stage.gradient_checkpointing=true

One batch of ``--pairs`` preference pairs (B pairs: 2B rows, the chosen sequences then the rejected
ones, as the dpo stage batches them) built from realistic chains. The SFT arm trains on the very
same 2B rows (same tokens, same labelled positions) with the SFT loss; the DPO arm with the DPO
loss, whose reference is the same model with its LoRA adapter disabled (one extra forward pass
without gradients, no second copy of the weights). Each arm runs ``--steps`` optimizer steps
(forward, backward, AdamW update) in a fresh process, so each peak RSS is its own.

Reported per arm: the resident memory once the model is loaded and the batch built, the peak
resident memory of the process (``ru_maxrss``), and the step memory: peak minus loaded. The target
is DPO / SFT <= 1.2x: no second model in memory.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The arms' shared settings: float32 LoRA training, the stage's other settings unless --set says so.
BASE_OVERRIDES = ["data=trees", "data.trees=unused", "stage.dtype=float32",
                  "stage.gradient_checkpointing=false"]


def resident_mb() -> float:
    """The resident memory of this process now (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def measure(arm: str, overrides: list[str], pairs: int, steps: int) -> dict:
    """``steps`` optimizer steps of ``arm`` (sft or dpo) on one batch, in this (fresh) process."""
    import torch
    from _chains import chains
    from _compose import compose_config
    from hydra.utils import instantiate

    from medsss.stages.train import policy_model
    from medsss.training.dpo import DPOModule
    from medsss.training.dpo_inputs import collate_dpo, dpo_inputs
    from medsss.training.models import load_tokenizer
    from medsss.training.modules import PolicySFTModule

    torch.manual_seed(0)
    cfg = compose_config(["stage=dpo", *BASE_OVERRIDES, *overrides])
    spec = instantiate(cfg.model)
    path = spec.resolve()
    tokenizer, pad = load_tokenizer(path)
    texts = chains(2 * pairs, min_steps=3, max_steps=8, seed=3)
    items = [dpo_inputs(tokenizer, texts[2 * k][0], texts[2 * k][1], texts[2 * k + 1][1], True, True,
                        cfg.prompt.system, cfg.stage.max_length) for k in range(pairs)]
    batch = collate_dpo(items, pad)
    model = policy_model(cfg, path, False)
    optimizer_factory = partial(torch.optim.AdamW, lr=1e-5, weight_decay=0.0)
    if arm == "dpo":
        module: torch.nn.Module = DPOModule(model, beta=cfg.stage.beta, optimizer=optimizer_factory,
                                            scheduler=None)
    else:
        module = PolicySFTModule(model, optimizer=optimizer_factory, scheduler=None)
    module.train()
    optimizer = optimizer_factory([p for p in module.parameters() if p.requires_grad])
    gc.collect()
    loaded, load_peak = resident_mb(), peak_mb()
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        out = module(batch)
        loss = out[0].mean() if arm == "dpo" else out
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - started)
    return {
        "loaded_mb": loaded, "load_peak_mb": load_peak, "peak_mb": peak_mb(),
        "seconds_per_step": sorted(seconds)[len(seconds) // 2],
        "rows": int(batch["input_ids"].shape[0]), "width": int(batch["input_ids"].shape[1]),
        "tokens": int(batch["attention_mask"].sum()), "labelled": int((batch["labels"] != -100).sum()),
        "lora": bool(cfg.stage.lora.enabled), "checkpointing": cfg.stage.gradient_checkpointing,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    from _compose import in_fresh_process

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedded", action="store_true",
                        help="the embedded SmolLM2-135M instead of the tiny model")
    parser.add_argument("--pairs", type=int, default=4, help="preference pairs in the batch (2x rows)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per arm")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for both arms, e.g. stage.gradient_checkpointing=true")
    args = parser.parse_args()
    model = "smollm2_135m" if args.embedded else "tiny"
    overrides = [f"model={model}", *args.set]
    results = {arm: in_fresh_process(measure, arm, overrides, args.pairs, args.steps)
               for arm in ("sft", "dpo")}
    first = results["sft"]
    print(f"\nDPO vs SFT training step, model={model}, {args.pairs} pairs = {first['rows']} rows x "
          f"{first['width']} tokens ({first['tokens']} real, {first['labelled']} labelled), float32, "
          f"LoRA={first['lora']}, gradient checkpointing={first['checkpointing']}, {args.steps} steps, "
          f"{first['threads']} threads")
    print(f"  {'arm':<4} {'RSS loaded':>11} {'peak RSS':>10} {'step memory':>12} {'s/step':>8}")
    for arm, m in results.items():
        step = m["peak_mb"] - m["loaded_mb"]
        note = "  (peak reached while loading)" if m["peak_mb"] <= m["load_peak_mb"] else ""
        print(f"  {arm.upper():<4} {m['loaded_mb']:8.0f} MB {m['peak_mb']:7.0f} MB {step:9.0f} MB "
              f"{m['seconds_per_step']:8.2f}{note}")
    sft, dpo = results["sft"], results["dpo"]
    step_ratio = (dpo["peak_mb"] - dpo["loaded_mb"]) / max(1e-9, sft["peak_mb"] - sft["loaded_mb"])
    print(f"  DPO / SFT: {dpo['peak_mb'] / sft['peak_mb']:.2f}x peak RSS, {step_ratio:.2f}x step memory, "
          f"{dpo['seconds_per_step'] / sft['seconds_per_step']:.2f}x time per step (target: <= 1.2x memory)")


if __name__ == "__main__":
    main()
