"""Stages ``sft``, ``dpo`` and ``prm``: label views over stored trees, then Lightning training and saving.

Config in, plain objects out: the view rows (:mod:`medsss.labels.views`), the model
(:mod:`medsss.training.models`), the batches (:mod:`medsss.training.examples`), the module with
the optimizer and schedule of ``stage.optim`` and the callbacks of ``stage.callbacks``. Lightning
is imported only when a training stage runs (synthesis and evaluation do without it).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from medsss.io import read_json, write_json, write_jsonl
from medsss.labels.chains import read_trees
from medsss.labels.dpo import dpo_counts, dpo_rows
from medsss.labels.views import prm_rows, sft_rows, view_counts
from medsss.resources import peak_memory_mb
from medsss.stages.common import instantiate_callbacks, tracked_stage
from medsss.tracking import RunLoggers
from medsss.training import models
from medsss.training.models import (
    LoraSettings,
    TrainingModelSettings,
    load_tokenizer,
    save_policy,
    save_reward_model,
    trainable_policy,
    trainable_reward_model,
    training_device,
)


def _sources(cfg: DictConfig) -> list[str]:
    trees = cfg.data.get("trees")
    if trees is None:
        raise ValueError("training stages read stored trees: "
                         "set data.trees=<synthesis run dir or trees.jsonl>")
    return [str(t) for t in trees] if OmegaConf.is_list(trees) else [str(trees)]


def model_settings(cfg: DictConfig) -> TrainingModelSettings:
    """``stage.{dtype,gradient_checkpointing,release_memory_every,lora}`` for the trainer's device."""
    stage, lora = cfg.stage, cfg.stage.lora
    targets = lora.target_modules
    return TrainingModelSettings(
        dtype=str(stage.dtype),
        device=training_device(str(cfg.trainer.get("accelerator", "cpu"))),
        gradient_checkpointing=stage.gradient_checkpointing,
        release_memory_every=stage.get("release_memory_every"),
        lora=(LoraSettings(lora.r, lora.alpha, lora.dropout,
                           tuple(targets) if OmegaConf.is_list(targets) else targets)
              if lora.enabled else None),
    )


def policy_model(cfg: DictConfig, path: str, trust_remote_code: bool):
    """The policy SFT trains, as ``cfg`` describes it."""
    return trainable_policy(path, model_settings(cfg), trust_remote_code)


def prm_heads(cfg: DictConfig):
    """``stage.head`` (single | dual) and ``stage.dual`` as the PRM's
    :class:`~medsss.training.prm_model.PRMHeadConfig`."""
    from medsss.training.prm_model import PRMHeadConfig

    dual = cfg.stage.dual
    try:
        return PRMHeadConfig(head=str(cfg.stage.head), penalty_weight=dual.penalty_weight,
                             penalty_scale=dual.penalty_scale)
    except ValueError as error:
        raise ValueError(f"stage.head / stage.dual: {error}") from error


def reward_model(cfg: DictConfig, path: str, trust_remote_code: bool):
    """The PRM the prm stage trains, as ``cfg`` describes it."""
    return trainable_reward_model(path, model_settings(cfg), trust_remote_code, prm_heads(cfg))


def checkpoint_above_tokens(cfg: DictConfig) -> int | None:
    """With ``stage.gradient_checkpointing=auto``, the padded batch size above which a batch is
    checkpointed (``stage.max_batch_tokens``; 0 without one); None otherwise."""
    return models.checkpoint_above_tokens(model_settings(cfg).gradient_checkpointing,
                                          cfg.stage.get("max_batch_tokens"))


def _batching(cfg: DictConfig):
    from medsss.training.examples import Batching

    return Batching(max_batch_tokens=cfg.stage.get("max_batch_tokens"),
                    batch_size=cfg.stage.get("batch_size"), length_group=cfg.stage.length_group,
                    seed=cfg.seed)


def _optimization(cfg: DictConfig) -> dict[str, Any]:
    """The module's optimizer and scheduler factories (``stage.optim``), its per-batch
    checkpointing threshold and the seed its training batches' dropout is drawn from (``seed``:
    the same whether a run goes through or resumes)."""
    optim = cfg.stage.optim
    return {
        "optimizer": instantiate(optim.optimizer),
        "scheduler": instantiate(optim.scheduler) if optim.get("scheduler") else None,
        "checkpoint_above_tokens": checkpoint_above_tokens(cfg),
        "seed": cfg.seed,
    }


def _model_folder(cfg: DictConfig) -> tuple[str, bool, Any, int]:
    """``model=``'s folder, whether it may run remote code, its tokenizer and the id that pads."""
    spec = instantiate(cfg.model)
    path = spec.resolve()
    tokenizer, pad = load_tokenizer(path, spec.trust_remote_code)
    return path, spec.trust_remote_code, tokenizer, pad


def run_sft(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    import lightning as L

    from medsss.training.examples import sft_datamodule, split_by_problem
    from medsss.training.fit import is_main_process
    from medsss.training.modules import PolicySFTModule

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    started = time.perf_counter()
    with tracked_stage(cfg, run_dir) as tracking:
        rows = sft_rows(read_trees(_sources(cfg)), top_k=cfg.stage.top_k)
        if not rows:
            raise ValueError(f"no correct chains in {_sources(cfg)}: nothing to fine-tune on")
        write_jsonl(run_dir / "sft.jsonl", rows)
        train_rows, val_rows = split_by_problem(rows, cfg.stage.val_fraction)
        path, trust_remote_code, tokenizer, pad = _model_folder(cfg)
        model = policy_model(cfg, path, trust_remote_code)
        module = PolicySFTModule(model, **_optimization(cfg))
        data = sft_datamodule(train_rows, val_rows, tokenizer, pad, cfg.prompt.system, cfg.stage.max_length,
                              _batching(cfg))
        metrics = _fit(cfg, run_dir, tracking, module, data, started, view_counts(rows), len(train_rows),
                       len(val_rows))
        if is_main_process(module):
            save_policy(model, tokenizer, run_dir / "final", cfg.stage.lora.enabled and cfg.stage.merge)
    return metrics


def run_dpo(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """DPO of the policy ``model=`` (normally the SFT policy, ``model.source=<sft run>/final/merged``)
    on the preference pairs of stored trees; its reference is that same policy (the LoRA adapter
    disabled), saved like SFT's."""
    import lightning as L

    from medsss.training.dpo import DPOModule
    from medsss.training.examples import dpo_datamodule, split_by_problem
    from medsss.training.fit import is_main_process

    if not cfg.stage.lora.enabled:
        raise ValueError("stage=dpo trains a LoRA adapter (stage.lora.enabled=true): the reference policy "
                         "is the model with its adapter disabled; full fine-tuning would need a second, "
                         "frozen copy of the model as the reference")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    started = time.perf_counter()
    with tracked_stage(cfg, run_dir) as tracking:
        rows = dpo_rows(read_trees(_sources(cfg)), margin=cfg.stage.margin)
        if not rows:
            raise ValueError(f"no preference pairs in {_sources(cfg)} (stage.margin={cfg.stage.margin}): "
                             "nothing to optimise")
        write_jsonl(run_dir / "dpo.jsonl", rows)
        train_rows, val_rows = split_by_problem(rows, cfg.stage.val_fraction)
        path, trust_remote_code, tokenizer, pad = _model_folder(cfg)
        model = policy_model(cfg, path, trust_remote_code)
        module = DPOModule(model, beta=cfg.stage.beta, **_optimization(cfg))
        data = dpo_datamodule(train_rows, val_rows, tokenizer, pad, cfg.prompt.system, cfg.stage.max_length,
                              _batching(cfg))
        metrics = _fit(cfg, run_dir, tracking, module, data, started, dpo_counts(rows), len(train_rows),
                       len(val_rows), unit="pairs")
        if is_main_process(module):
            save_policy(model, tokenizer, run_dir / "final", cfg.stage.merge)
    return metrics


def run_prm(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    import lightning as L

    from medsss.training.examples import prm_datamodule, split_by_problem
    from medsss.training.fit import is_main_process
    from medsss.training.modules import PRMModule

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    started = time.perf_counter()
    with tracked_stage(cfg, run_dir) as tracking:
        labels = cfg.stage.labels
        heads = prm_heads(cfg)  # a bad stage.head fails before the trees are read
        rows = prm_rows(read_trees(_sources(cfg)), rule=labels.rule, threshold=labels.threshold,
                        factor=labels.factor, require_both=labels.require_both,
                        weight_rollouts=labels.weight_rollouts,
                        shape_step_one=labels.get("shape_step_one", False), penalties=heads.dual)
        if not rows:
            raise ValueError(f"no labelled chains in {_sources(cfg)} "
                             f"(labels.require_both={labels.require_both})")
        write_jsonl(run_dir / "prm.jsonl", rows)
        train_rows, val_rows = split_by_problem(rows, cfg.stage.val_fraction)
        path, trust_remote_code, tokenizer, pad = _model_folder(cfg)
        model = reward_model(cfg, path, trust_remote_code)
        module = PRMModule(model, **_optimization(cfg))
        data = prm_datamodule(train_rows, val_rows, tokenizer, pad, cfg.prompt.system, _batching(cfg))
        metrics = _fit(cfg, run_dir, tracking, module, data, started, view_counts(rows), len(train_rows),
                       len(val_rows))
        if is_main_process(module):
            save_reward_model(model, tokenizer, run_dir / "final", cfg.stage.lora.enabled and cfg.stage.merge)
    return metrics


def _fit(cfg: DictConfig, run_dir: Path, tracking: RunLoggers, module, data, started: float, counts: dict,
         n_train: int, n_val: int, unit: str = "chains") -> dict[str, Any]:
    """Fit and write ``metrics.json``; ``unit`` names what the view's rows are (``train_<unit>``)."""
    from medsss.faults import kill_callbacks
    from medsss.training.fit import StartStep, checkpoint_directory, fit_summary, resolve_ckpt_path

    start = StartStep()
    callbacks = [*instantiate_callbacks(cfg.stage.get("callbacks"), run_dir), start, *kill_callbacks(run_dir)]
    trainer = instantiate(cfg.trainer, default_root_dir=str(run_dir), callbacks=callbacks,
                          logger=tracking.loggers or False)
    ckpt_path = resolve_ckpt_path(cfg.stage.ckpt_path,
                                  checkpoint_directory(callbacks, run_dir / "checkpoints"))
    # Lightning warns of a mid-epoch resume unless the DataLoader itself is stateful; ItemsDataModule
    # keeps the sampler's place in its own checkpoint state (and warns where it cannot restore it).
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
    # weights_only: a checkpoint is tensors and plain containers; a pickled object planted in one
    # is refused instead of run.
    trainer.fit(module, data, ckpt_path=ckpt_path, weights_only=True)
    metrics = {
        "stage": cfg.stage.name,
        "model": cfg.model.id,
        "wall_seconds": round(time.perf_counter() - started, 3),
        f"train_{unit}": n_train,
        f"val_{unit}": n_val,
        "max_batch_tokens": cfg.stage.get("max_batch_tokens"),
        "gradient_checkpointing": model_settings(cfg).gradient_checkpointing,
        **fit_summary(trainer, module, start),
        **{f"view_{k}": v for k, v in counts.items()},
        **peak_memory_mb(),
    }
    earlier = run_dir / "metrics.json"
    if metrics["start_step"] == metrics["global_steps"] > 0 and earlier.exists():
        # Resumed at its last step (a finished or nearly finished run rerun): nothing was trained or
        # logged, so the losses and throughput are the earlier run's, kept instead of dropped.
        metrics.update({k: v for k, v in read_json(earlier).items() if metrics.get(k) is None})
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", metrics)
    return metrics
