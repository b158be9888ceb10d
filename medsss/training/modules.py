"""Lightning modules: the training logic of policy SFT and of the PRM, and nothing else."""

from __future__ import annotations

import math
import time

import lightning as L
import torch
from torch import nn

from medsss.training.metrics import binary_auroc
from medsss.training.prm_model import ProcessRewardModel, soft_bce


def warmup_cosine(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to 0 (or constant)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class _Trainable(L.LightningModule):
    """Optimiser, schedule and throughput logging shared by both modules."""

    def __init__(self, lr: float, weight_decay: float, warmup_ratio: float, schedule: str) -> None:
        super().__init__()
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule '{schedule}' must be 'cosine' or 'constant'")
        self.lr, self.weight_decay, self.warmup_ratio, self.schedule = lr, weight_decay, warmup_ratio, schedule
        self._batch_started = 0.0

    def configure_optimizers(self):
        parameters = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=self.lr, weight_decay=self.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.warmup_ratio * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total, warmup, self.schedule)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        # from_pretrained leaves models in eval mode; training needs dropout (LoRA's included) on.
        self.train()

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._batch_started = time.perf_counter()

    def log_throughput(self, batch: dict[str, torch.Tensor]) -> None:
        seconds = max(time.perf_counter() - self._batch_started, 1e-9)
        tokens = batch["attention_mask"].sum().item()
        self.log("train/tokens_per_second", tokens / seconds, on_step=True, prog_bar=True)
        self.log("train/padding_share", 1 - tokens / batch["attention_mask"].numel(), on_step=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)


class PolicySFTModule(_Trainable):
    """Causal-LM loss on response tokens (prompt tokens carry label -100)."""

    def __init__(self, model: nn.Module, lr: float = 2e-4, weight_decay: float = 0.0,
                 warmup_ratio: float = 0.03, schedule: str = "cosine") -> None:
        super().__init__(lr, weight_decay, warmup_ratio, schedule)
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss

    def training_step(self, batch, batch_idx):
        loss = self(batch)
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.log_throughput(batch)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self(batch)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=batch["input_ids"].shape[0])
        return loss


class PRMModule(_Trainable):
    """Soft-target binary cross-entropy at the step-end positions (weighted where weights exist);
    validation reports loss, step accuracy and step AUROC against hard targets (label >= 0.5)."""

    def __init__(self, model: ProcessRewardModel, lr: float = 5e-5, weight_decay: float = 0.0,
                 warmup_ratio: float = 0.03, schedule: str = "cosine") -> None:
        super().__init__(lr, weight_decay, warmup_ratio, schedule)
        self.model = model
        self._scores: list[float] = []
        self._targets: list[int] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.step_logits(batch["input_ids"], batch["attention_mask"], batch["score_positions"])

    def training_step(self, batch, batch_idx):
        loss = soft_bce(self(batch), batch["labels"], batch["score_positions"], batch.get("weights"))
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.log_throughput(batch)
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self(batch)
        loss = soft_bce(logits, batch["labels"], batch["score_positions"], batch.get("weights"))
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=batch["input_ids"].shape[0])
        real = batch["score_positions"] >= 0
        self._scores.extend(torch.sigmoid(logits.float())[real].tolist())
        self._targets.extend((batch["labels"][real] >= 0.5).int().tolist())

    def on_validation_epoch_end(self) -> None:
        if self._scores:
            accuracy = sum((s >= 0.5) == bool(t) for s, t in zip(self._scores, self._targets)) / len(self._scores)
            self.log("val/step_accuracy", accuracy)
            auroc = binary_auroc(self._scores, self._targets)
            if auroc is not None:
                self.log("val/step_auroc", auroc, prog_bar=True)
        self._scores, self._targets = [], []
