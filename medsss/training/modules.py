"""Lightning modules: the training logic of policy SFT and of the PRM, and nothing else.

The optimizer and the learning-rate schedule come in as factories (``conf/optim/`` builds them
with ``_partial_``): ``optimizer(parameters)`` and ``scheduler(optimizer, total_steps)``, called
when training starts, since the trainable parameters and the number of steps are known only then.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, cast

import lightning as L
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchmetrics.aggregation import MeanMetric

from medsss.training.memory import checkpointable_layers
from medsss.training.prm_model import DualLoss, ProcessRewardModel, dual_head_loss, dual_score, soft_bce
from medsss.training.schedules import warmup_scheduler
from medsss.training.sft_inputs import IGNORE
from medsss.training.step_metrics import StepClassification, epoch_means, mean_key

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]

# The defaults of conf/stage/{sft,prm}.yaml and conf/optim/adamw.yaml, for modules built in code.
SFT_OPTIMIZER: OptimizerFactory = partial(torch.optim.AdamW, lr=2e-4, weight_decay=0.0)
PRM_OPTIMIZER: OptimizerFactory = partial(torch.optim.AdamW, lr=5e-5, weight_decay=0.0)
WARMUP_COSINE: SchedulerFactory = partial(warmup_scheduler, warmup_ratio=0.03, schedule="cosine")

# Response positions per chunk of the LM head in the SFT loss: the chunk's fp32 logits over a
# 49k vocabulary (512 x 49,152 x 4 bytes = 100 MB, about three copies with their gradient) are
# the largest tensor of the step, so they never exist for all positions at once.
LOSS_CHUNK_TOKENS = 512
# Configs that transform logits after the head (the fast loss would skip that): use the full path.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def batch_seed(seed: int, step: int, batch: int, rank: int) -> int:
    """The seed of one training batch's random numbers (dropout): a function of the run's seed, the
    optimizer step, the batch's index in its epoch and the data-parallel rank, nothing else."""
    digest = hashlib.blake2b(f"{seed}/{step}/{batch}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # below 2**63


class _Trainable(L.LightningModule):
    """Optimiser, schedule, throughput logging and per-batch gradient checkpointing shared by both
    modules (``scheduler=None``: the optimizer's constant rate). With ``checkpoint_above_tokens``
    set, a training batch is checkpointed exactly when its padded size (rows x width) exceeds it
    (the layers must have been prepared by ``gradient_checkpointing_enable``); None leaves the
    model's own setting alone.

    With ``seed`` set, torch's generator is seeded before every training batch by :func:`batch_seed`,
    so the batch's dropout is the same whether the run went through or was resumed from a checkpoint
    (a checkpoint holds no generator state, and validation and data loading draw from it between
    steps); None leaves the generator running on from ``seed_everything``.

    Validation means (``VALIDATION_MEANS``, logged by :meth:`log_validation_mean`) are torchmetrics
    states gathered across data-parallel ranks (:func:`~medsss.training.step_metrics.epoch_means`)."""

    VALIDATION_MEANS: tuple[str, ...] = ("val/loss",)

    def __init__(self, optimizer: OptimizerFactory, scheduler: SchedulerFactory | None,
                 checkpoint_above_tokens: int | None = None, seed: int | None = None) -> None:
        super().__init__()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.checkpoint_above_tokens = checkpoint_above_tokens
        self.seed = seed
        # Built here, not when first logged: Lightning looks logged metrics up among the submodules once.
        self.val_means = epoch_means(self.VALIDATION_MEANS)
        self._checkpointable: list[Any] | None = None  # decoder layers switched per batch
        self.checkpointed_batches = 0
        self._batch_started = 0.0
        self.train_tokens, self.train_seconds = 0, 0.0

    def configure_optimizers(self):
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, max(1, int(self.trainer.estimated_stepping_batches)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        # from_pretrained leaves models in eval mode; training needs dropout (LoRA's included) on.
        self.train()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # With LoRA the frozen base is read from its own folder at every start: a checkpoint keeps
        # only what training changes (adapters, heads), megabytes instead of the base's gigabytes.
        trainable = self._trainable_names()
        if len(trainable) < sum(1 for _ in self.parameters()):
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
            checkpoint["medsss_trainable_only"] = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not checkpoint.get("medsss_trainable_only"):
            return
        missing = sorted(self._trainable_names() - set(checkpoint["state_dict"]))
        if missing:
            more = " ..." if len(missing) > 3 else ""
            raise KeyError(f"checkpoint lacks trained weights {missing[:3]}{more}: was it written by "
                           "another model or LoRA configuration?")
        # The frozen weights are the ones loaded from the model folder; the strict load then checks
        # that every other key matches this model.
        checkpoint["state_dict"] = {**self.state_dict(), **checkpoint["state_dict"]}

    def _trainable_names(self) -> set[str]:
        return {name for name, parameter in self.named_parameters() if parameter.requires_grad}

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if self.seed is not None:
            torch.manual_seed(batch_seed(self.seed, self.trainer.global_step, batch_idx, self.global_rank))
        if self.checkpoint_above_tokens is not None:
            # Recomputing activations costs time; only batches too big to keep them pay it.
            checkpoint_this = batch["attention_mask"].numel() > self.checkpoint_above_tokens
            if self._checkpointable is None:  # found once: walking every module each step costs
                self._checkpointable = checkpointable_layers(self)
            for layer in self._checkpointable:
                layer.gradient_checkpointing = checkpoint_this
            if self._checkpointable and checkpoint_this:
                self.checkpointed_batches += 1
        self._batch_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # After the optimizer step: the time counts forward, backward and update of the batch.
        seconds = max(time.perf_counter() - self._batch_started, 1e-9)
        tokens = int(batch["attention_mask"].sum().item())
        self.train_tokens += tokens
        self.train_seconds += seconds
        self.log("train/tokens_per_second", tokens / seconds, on_step=True, prog_bar=True)
        self.log("train/padding_share", 1 - tokens / batch["attention_mask"].numel(), on_step=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)

    def log_validation_mean(self, name: str, value: torch.Tensor, rows: int, prog_bar: bool = False) -> None:
        """Add a batch's mean ``value`` over ``rows`` to the epoch's mean of ``name`` (one of
        ``VALIDATION_MEANS``), weighted by rows and gathered across ranks at the epoch's end."""
        mean = cast(MeanMetric, self.val_means[mean_key(name)])
        mean.update(value.detach().float(), rows)
        self.log(name, mean, on_epoch=True, prog_bar=prog_bar, batch_size=rows)

    def mean_tokens_per_second(self) -> float | None:
        """Real (unpadded) training tokens over the time their batches took, this process."""
        return self.train_tokens / self.train_seconds if self.train_seconds else None


def causal_lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """The decoder body and the LM head of a (possibly peft-wrapped) Hugging Face causal LM, or
    None when its logits are not simply ``head(body(...))``."""
    hf: Any = model  # a Hugging Face model or peft's wrapper: these methods are theirs, not nn.Module's
    lm = hf.get_base_model() if hasattr(hf, "get_base_model") else hf
    body = getattr(lm, "base_model", None)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    config = getattr(lm, "config", None)
    if body is None or body is lm or head is None or any(getattr(config, k, None) for k in _LOGIT_TRANSFORMS):
        return None
    return body, head


def _summed_cross_entropy(head: nn.Module, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(head(states).float(), targets, reduction="sum")


def response_loss(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor, chunk_tokens: int = LOSS_CHUNK_TOKENS) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (response) positions, the value of the
    model's own ``labels=`` loss, without its fp32 logits for every position: the head runs only on
    positions whose next token is labelled, ``chunk_tokens`` at a time, each chunk recomputed in
    the backward pass instead of kept."""
    parts = causal_lm_parts(model)
    if parts is None:
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    body, head = parts
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    scored = targets != IGNORE  # position t predicts token t + 1
    states, wanted = hidden[:, :-1][scored], targets[scored]
    if not wanted.numel():
        # Nothing labelled (a response cut off by max_length): a zero loss that still backpropagates.
        return hidden.float().sum() * 0.0
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, wanted.numel(), chunk_tokens):
        piece = slice(start, start + chunk_tokens)
        if torch.is_grad_enabled():
            total = total + checkpoint(_summed_cross_entropy, head, states[piece], wanted[piece],
                                       use_reentrant=False)
        else:
            total = total + _summed_cross_entropy(head, states[piece], wanted[piece])
    return total / wanted.numel()


class PolicySFTModule(_Trainable):
    """Causal-LM loss on response tokens (prompt tokens carry label -100), see :func:`response_loss`."""

    def __init__(self, model: nn.Module, optimizer: OptimizerFactory = SFT_OPTIMIZER,
                 scheduler: SchedulerFactory | None = WARMUP_COSINE,
                 checkpoint_above_tokens: int | None = None, seed: int | None = None) -> None:
        super().__init__(optimizer, scheduler, checkpoint_above_tokens, seed)
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return response_loss(self.model, batch["input_ids"], batch["attention_mask"], batch["labels"])

    def training_step(self, batch, batch_idx):
        loss = self(batch)
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self(batch)
        self.log_validation_mean("val/loss", loss, batch["input_ids"].shape[0], prog_bar=True)
        return loss


class PRMModule(_Trainable):
    """Soft-target binary cross-entropy at the step-end positions (weighted where weights exist);
    validation reports loss, step accuracy and step AUROC against hard targets (label >= 0.5).

    A dual-head PRM (``model.heads.dual``) minimises ``value BCE + penalty_weight * penalty BCE``
    (:func:`~medsss.training.prm_model.dual_head_loss`; batches need ``penalties``) and its
    validation adds the two parts (``val/value_loss``, ``val/penalty_loss``), the penalty head's
    AUROC against its targets (``val/penalty_auroc``) and the combined score's AUROC against the
    hard value targets (``val/score_auroc``); ``val/step_auroc`` stays the value head's.

    The step metrics are torchmetrics states (:class:`~medsss.training.step_metrics.StepClassification`)
    gathered across data-parallel ranks at the end of each validation: the numbers of all steps,
    as one process would compute them. A step counts as good (accuracy) when its score is above 0.5."""

    VALIDATION_MEANS = ("val/loss", "val/value_loss", "val/penalty_loss")

    def __init__(self, model: ProcessRewardModel, optimizer: OptimizerFactory = PRM_OPTIMIZER,
                 scheduler: SchedulerFactory | None = WARMUP_COSINE,
                 checkpoint_above_tokens: int | None = None, seed: int | None = None) -> None:
        super().__init__(optimizer, scheduler, checkpoint_above_tokens, seed)
        self.model = model
        self.val_steps = StepClassification()  # value head vs hard value targets
        self.val_penalty_steps = StepClassification()  # dual: penalty head vs its targets
        self.val_score_steps = StepClassification()  # dual: combined score vs hard value targets

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.step_logits(batch["input_ids"], batch["attention_mask"], batch["score_positions"])

    def _loss(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, DualLoss | None]:
        """The loss, the value and penalty logits, and a dual head's loss parts, from one forward."""
        positions = batch["score_positions"]
        value, penalty = self.model.head_logits(batch["input_ids"], batch["attention_mask"], positions)
        if penalty is None:
            return soft_bce(value, batch["labels"], positions, batch.get("weights")), value, None, None
        if "penalties" not in batch:
            raise ValueError("a dual-head PRM trains on penalty targets: its rows need 'penalties' "
                             "(prm_rows(..., penalties=True), which stage.head=dual sets)")
        parts = dual_head_loss(value, penalty, batch["labels"], batch["penalties"], positions,
                               batch.get("weights"), self.model.heads.penalty_weight)
        return parts.total, value, penalty, parts

    def training_step(self, batch, batch_idx):
        loss, _, _, parts = self._loss(batch)
        rows = batch["input_ids"].shape[0]
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=rows)
        if parts is not None:
            self.log("train/value_loss", parts.value, on_step=True, batch_size=rows)
            self.log("train/penalty_loss", parts.penalty, on_step=True, batch_size=rows)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, logits, penalty_logits, parts = self._loss(batch)
        rows = batch["input_ids"].shape[0]
        self.log_validation_mean("val/loss", loss, rows, prog_bar=True)
        real = batch["score_positions"] >= 0
        targets = (batch["labels"][real] >= 0.5).int()
        self.val_steps.update(torch.sigmoid(logits.float())[real], targets)
        if parts is not None and penalty_logits is not None:
            self.log_validation_mean("val/value_loss", parts.value, rows)
            self.log_validation_mean("val/penalty_loss", parts.penalty, rows)
            self.val_penalty_steps.update(torch.sigmoid(penalty_logits.float())[real],
                                          (batch["penalties"][real] >= 0.5).int())
            combined = dual_score(logits, penalty_logits, self.model.heads.penalty_scale)
            self.val_score_steps.update(combined[real], targets)

    def on_validation_epoch_end(self) -> None:
        # Every rank computes (the metrics gather across ranks), each logs the same gathered value.
        # An AUROC needs both classes; a validation split without a single value drop has none.
        auroc, accuracy = self.val_steps.compute()
        if accuracy is not None:
            self.log("val/step_accuracy", accuracy)
        if auroc is not None:
            self.log("val/step_auroc", auroc, prog_bar=True)
        if self.model.heads.dual:  # a single-head PRM has neither
            for name, metrics in (("val/penalty_auroc", self.val_penalty_steps),
                                  ("val/score_auroc", self.val_score_steps)):
                auroc, _ = metrics.compute()
                if auroc is not None:
                    self.log(name, auroc)
        for metrics in (self.val_steps, self.val_penalty_steps, self.val_score_steps):
            metrics.reset()
