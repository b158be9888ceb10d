"""SFT and PRM training: the stages' batching vs naive padding, tokens/s beside peak memory.

    python benchmarks/training_throughput.py                 # the tiny model (seconds)
    python benchmarks/training_throughput.py --embedded      # the embedded SmolLM2-135M (minutes)
    python benchmarks/training_throughput.py --stage prm --steps 6 --batch-size 8

For each stage, two arms on the same model and chains, each in a fresh process (so each peak RSS
is its own): "naive padding" takes ``--batch-size`` shuffled chains per batch; "stage batching"
takes the stage config's batches (``stage.max_batch_tokens`` padded tokens, length-grouped). Both
use the stage's other settings (LoRA, dtype, gradient checkpointing; override them with
``--set stage.gradient_checkpointing=false``...). Tokens/s counts real (unpadded) tokens over
the time of whole optimizer steps (forward, backward, update).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass(frozen=True)
class Arm:
    name: str
    batch_size: int | None
    max_tokens: int | None
    group: int


def measure(stage: str, overrides: list[str], arm: Arm, steps: int, chain_count: int) -> dict:
    """Train ``steps`` optimizer steps of ``stage`` in this (fresh) process; its tokens, time and
    peak resident memory."""
    import torch
    from _chains import chains
    from _compose import compose_config
    from hydra.utils import instantiate
    from transformers import AutoTokenizer

    from medsss.stages.train import policy_model, reward_model
    from medsss.training.datamodule import ItemsDataModule
    from medsss.training.modules import PolicySFTModule, PRMModule
    from medsss.training.prm_inputs import collate_prm, prm_inputs
    from medsss.training.sft_inputs import collate_sft, sft_inputs

    torch.manual_seed(0)
    cfg = compose_config([f"stage={stage}", "data=trees", "data.trees=unused", *overrides])
    spec = instantiate(cfg.model)
    path = spec.resolve()
    tokenizer = AutoTokenizer.from_pretrained(path)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    system = cfg.prompt.system
    if stage == "sft":
        items = [sft_inputs(tokenizer, question, steps_, system, cfg.stage.max_length)
                 for question, steps_ in chains(chain_count, seed=2)]
        module = PolicySFTModule(policy_model(cfg, path, False),
                                 optimizer=partial(torch.optim.AdamW, lr=1e-4))
        collate, length = (lambda b: collate_sft(b, pad)), (lambda x: len(x.input_ids))
    else:
        items = []
        for question, steps_ in chains(chain_count, seed=2):
            item = prm_inputs(tokenizer, question, steps_, system)
            items.append((item, [0.5] * len(item.score_positions)))
        module = PRMModule(reward_model(cfg, path, False), optimizer=partial(torch.optim.AdamW, lr=1e-4))
        collate = lambda b: collate_prm([i for i, _ in b], pad, labels=[label for _, label in b])  # noqa: E731
        length = lambda x: len(x[0].input_ids)  # noqa: E731
    data = ItemsDataModule(items, [], collate, length, batch_size=arm.batch_size, group=arm.group,
                           max_tokens=arm.max_tokens)
    meter = Meter()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, limit_val_batches=0, callbacks=[meter])
    trainer.fit(module, data)
    return {"tokens": meter.tokens, "padded": meter.padded, "seconds": meter.seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "checkpointing": bool(cfg.stage.gradient_checkpointing), "dtype": str(cfg.stage.dtype)}


class Meter(L.Callback):
    """Real tokens, padded tokens and seconds of whole optimizer steps."""

    def __init__(self) -> None:
        self.tokens, self.padded, self.seconds, self._start = 0, 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.seconds += time.perf_counter() - self._start
        self.tokens += int(batch["attention_mask"].sum())
        self.padded += batch["attention_mask"].numel()


def main() -> None:
    from _compose import in_fresh_process

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedded", action="store_true",
                        help="the embedded SmolLM2-135M instead of the tiny model")
    parser.add_argument("--stage", choices=["sft", "prm", "both"], default="both")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8, help="rows per batch of the naive arm")
    parser.add_argument("--chains", type=int, default=96)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for both arms, e.g. stage.gradient_checkpointing=false")
    args = parser.parse_args()
    from _compose import compose_config

    model = "smollm2_135m" if args.embedded else "tiny"
    overrides = [f"model={model}", *args.set]
    stages = ["sft", "prm"] if args.stage == "both" else [args.stage]
    for stage in stages:
        cfg = compose_config([f"stage={stage}", *overrides]).stage
        arms = [Arm("naive padding", args.batch_size, None, 1),
                Arm("stage batching", cfg.get("batch_size"), cfg.get("max_batch_tokens"), cfg.length_group)]
        results = [in_fresh_process(measure, stage, overrides, arm, args.steps, args.chains) for arm in arms]
        print(f"\n{stage.upper()} training, {args.steps} steps, model={model}, dtype={results[0]['dtype']}, "
              f"gradient checkpointing={results[0]['checkpointing']}, LoRA={cfg.lora.enabled}")
        for arm, m in zip(arms, results, strict=True):
            limit = f"{arm.max_tokens} tokens" if arm.max_tokens else f"{arm.batch_size} rows"
            print(f"  {arm.name:<15} {limit:>12}  {m['tokens'] / m['seconds']:8.0f} tokens/s  "
                  f"padding {1 - m['tokens'] / m['padded']:5.1%}  peak RSS {m['peak_rss_mb']:7.0f} MB")
        naive, ours = results
        speed = (ours["tokens"] / ours["seconds"]) / (naive["tokens"] / naive["seconds"])
        memory = ours["peak_rss_mb"] / naive["peak_rss_mb"]
        print(f"  stage batching / naive: {speed:.2f}x tokens/s, {memory:.2f}x peak RSS")


if __name__ == "__main__":
    main()
