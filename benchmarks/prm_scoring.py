"""PRM scoring: all steps of a candidate in one forward vs one forward per step prefix.

    python benchmarks/prm_scoring.py [--model smollm2_135m] [--candidates 16]

Both score the same candidates with the same model; the per-prefix baseline is how a PRM that only
reads the last token would be used. Prints wall times, the ratio, and the largest score difference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _chains import chains  # noqa: E402
from _compose import compose_config  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from medsss.training.prm_inputs import prm_inputs  # noqa: E402
from medsss.training.prm_model import PRMScorer, ProcessRewardModel  # noqa: E402


@torch.inference_mode()
def per_prefix_scores(model, tokenizer, question, steps, system) -> list[float]:
    """One forward per step k over the chain truncated after step k."""
    scores = []
    for k in range(1, len(steps)):
        item = prm_inputs(tokenizer, question, steps[: k + 1], system)
        ids = torch.tensor([item.input_ids])
        logits = model.token_logits(ids, torch.ones_like(ids))
        scores.append(torch.sigmoid(logits[0, -1]).item())
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    cfg = compose_config([f"model={args.model}"])
    spec = instantiate(cfg.model)
    torch.manual_seed(0)
    model = ProcessRewardModel.from_causal_lm(spec.resolve()).eval()
    tokenizer = AutoTokenizer.from_pretrained(spec.resolve())
    system = cfg.prompt.system
    work = chains(args.candidates, seed=1)
    scorer = PRMScorer(model, tokenizer, system, batch_size=args.batch_size)
    scorer.score(work[0][0], [work[0][1]])  # warm-up

    started = time.perf_counter()
    batched = scorer.score_chains(work)
    one_forward = time.perf_counter() - started

    started = time.perf_counter()
    prefixes = [per_prefix_scores(model, tokenizer, q, steps, system) for q, steps in work]
    per_prefix = time.perf_counter() - started

    steps = sum(len(s) - 1 for _, s in work)
    diff = max(abs(a - b) for x, y in zip(batched, prefixes, strict=True) for a, b in zip(x, y, strict=True))
    print(f"\nPRM scoring of {len(work)} candidates ({steps} steps), model={args.model}")
    print(f"  all steps in one batched forward: {one_forward:7.2f} s")
    print(f"  one forward per step prefix:      {per_prefix:7.2f} s")
    print(f"  speed-up: {per_prefix / one_forward:.2f}x   max score difference: {diff:.2e}")


if __name__ == "__main__":
    main()
