"""PRM training throughput: length-grouped batches vs shuffled batches with padding.

    python benchmarks/training_throughput.py [--model smollm2_135m] [--steps 12] [--batch-size 8]

Same model, same chains, same number of optimizer steps; only the batching differs. Tokens/s
counts real (unpadded) tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _chains import chains  # noqa: E402
from _compose import compose_config  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from medsss.training.datamodule import ItemsDataModule  # noqa: E402
from medsss.training.lora import apply_lora  # noqa: E402
from medsss.training.modules import PRMModule  # noqa: E402
from medsss.training.prm_inputs import collate_prm, prm_inputs  # noqa: E402
from medsss.training.prm_model import ProcessRewardModel  # noqa: E402


class Throughput(L.Callback):
    def __init__(self) -> None:
        self.tokens, self.padded, self.seconds, self._start = 0, 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.seconds += time.perf_counter() - self._start
        self.tokens += int(batch["attention_mask"].sum())
        self.padded += batch["attention_mask"].numel()


def measure(spec, items, pad, group: int, steps: int, batch_size: int, lora: bool) -> Throughput:
    torch.manual_seed(0)
    model = ProcessRewardModel.from_causal_lm(spec.resolve())
    if lora:
        model.body = apply_lora(model.body, 32, 64, 0.0, "all-linear", "FEATURE_EXTRACTION")
    data = ItemsDataModule(items, [], lambda b: collate_prm([i for i, _ in b], pad, labels=[l for _, l in b]),
                           length=lambda x: len(x[0].input_ids), batch_size=batch_size, group=group)
    meter = Throughput()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        limit_val_batches=0, callbacks=[meter])
    trainer.fit(PRMModule(model, lr=1e-4), data)
    return meter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chains", type=int, default=96)
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    args = parser.parse_args()
    cfg = compose_config([f"model={args.model}"])
    spec = instantiate(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(spec.resolve())
    items = []
    for question, steps in chains(args.chains, seed=2):
        item = prm_inputs(tokenizer, question, steps, cfg.prompt.system)
        items.append((item, [0.5] * len(item.score_positions)))
    pad = tokenizer.pad_token_id

    shuffled = measure(spec, items, pad, 1, args.steps, args.batch_size, not args.full)
    grouped = measure(spec, items, pad, 32, args.steps, args.batch_size, not args.full)
    print(f"\nPRM training, {args.steps} steps of batch {args.batch_size}, model={args.model}, "
          f"{'full' if args.full else 'LoRA'}")
    for name, m in (("shuffled + padding", shuffled), ("length-grouped", grouped)):
        print(f"  {name:<20} {m.tokens / m.seconds:8.0f} tokens/s   padding {1 - m.tokens / m.padded:5.1%}")
    ratio = (grouped.tokens / grouped.seconds) / (shuffled.tokens / shuffled.seconds)
    print(f"  speed-up (tokens/s): {ratio:.2f}x")


if __name__ == "__main__":
    main()
