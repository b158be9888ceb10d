"""Stages ``sft`` and ``prm``: label views over stored trees, then Lightning training and saving."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from medsss.generation.hf import resolve_dtype
from medsss.labels.views import prm_rows, read_trees, sft_rows, view_counts, write_rows
from medsss.metrics import peak_memory_mb, write_json
from medsss.tracking import lightning_logger

log = logging.getLogger(__name__)


def _bucket(problem_id: str) -> float:
    return int(hashlib.sha1(problem_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _sources(cfg: DictConfig) -> list[str]:
    trees = cfg.data.get("trees")
    if trees is None:
        raise ValueError("training stages read stored trees: set data.trees=<synthesis run dir or trees.jsonl>")
    return [str(t) for t in trees] if OmegaConf.is_list(trees) else [str(trees)]


def _checkpoint(ckpt_path: str | None, run_dir: Path) -> str | None:
    """``latest`` resolves to the newest checkpoint of this run directory."""
    if ckpt_path != "latest":
        return ckpt_path
    found = sorted((run_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        log.info("ckpt_path=latest: no checkpoint in %s, starting fresh", run_dir / "checkpoints")
        return None
    return str(found[-1])


class _StartStep:
    """Remembers the global step training started from (non-zero after a resume)."""

    def __init__(self) -> None:
        self.step = 0


def _trainer(cfg: DictConfig, run_dir: Path, tracker, start: _StartStep):
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    class RecordStart(Callback):
        def on_train_start(self, trainer, module) -> None:
            start.step = trainer.global_step

    checkpoints = ModelCheckpoint(dirpath=run_dir / "checkpoints", every_n_train_steps=cfg.stage.checkpoint_every,
                                  save_last=True, save_top_k=-1)
    return instantiate(cfg.trainer, default_root_dir=str(run_dir), callbacks=[checkpoints, RecordStart()],
                       logger=lightning_logger(tracker, run_dir))


def _datamodule(cfg: DictConfig, train: list, val: list, collate, length):
    from medsss.training.datamodule import ItemsDataModule

    return ItemsDataModule(train, val, collate, length, batch_size=cfg.stage.batch_size,
                           group=cfg.stage.length_group, seed=cfg.seed)


def _lora(cfg: DictConfig, model, task_type: str):
    if not cfg.stage.lora.enabled:
        return model
    from medsss.training.lora import apply_lora

    lora = cfg.stage.lora
    return apply_lora(model, lora.r, lora.alpha, lora.dropout, OmegaConf.to_object(lora.target_modules)
                      if OmegaConf.is_list(lora.target_modules) else lora.target_modules, task_type)


def _model_and_tokenizer(cfg: DictConfig) -> tuple[Any, str, Any, int]:
    """The model spec, its local path, its tokenizer and the id that pads batches."""
    from transformers import AutoTokenizer

    model_spec = instantiate(cfg.model)
    path = model_spec.resolve()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_spec.trust_remote_code)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return model_spec, path, tokenizer, pad


def split_by_problem(rows: list[dict[str, Any]], fraction: float) -> tuple[list, list]:
    """A stable train / held-out split by problem (all chains of a problem on one side). With a
    positive fraction and at least two problems, at least one problem is held out."""
    ids = sorted({r["id"] for r in rows}, key=_bucket)
    held = {i for i in ids if _bucket(i) < fraction}
    if fraction > 0 and not held and len(ids) >= 2:
        held = {ids[0]}
    return [r for r in rows if r["id"] not in held], [r for r in rows if r["id"] in held]


def run_sft(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    import lightning as L

    from transformers import AutoModelForCausalLM

    from medsss.training.modules import PolicySFTModule
    from medsss.training.sft_inputs import collate_sft, sft_inputs

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    started = time.perf_counter()
    rows = sft_rows(read_trees(_sources(cfg)), top_k=cfg.stage.top_k)
    if not rows:
        raise ValueError(f"no correct chains in {_sources(cfg)}: nothing to fine-tune on")
    write_rows(rows, run_dir / "sft.jsonl")
    train_rows, val_rows = split_by_problem(rows, cfg.stage.val_fraction)
    model_spec, path, tokenizer, pad = _model_and_tokenizer(cfg)
    system = cfg.prompt.system

    def items(subset):
        return [sft_inputs(tokenizer, r["question"], r["steps"], system, cfg.stage.max_length) for r in subset]

    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(cfg.stage.dtype, "cpu"),
                                                 trust_remote_code=model_spec.trust_remote_code)
    if cfg.stage.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model = _lora(cfg, model, "CAUSAL_LM")
    module = PolicySFTModule(model, **cfg.stage.optim)
    data = _datamodule(cfg, items(train_rows), items(val_rows), lambda b: collate_sft(b, pad),
                       lambda x: len(x.input_ids))
    metrics = _fit(cfg, run_dir, module, data, started, view_counts(rows), len(train_rows), len(val_rows))
    if _is_main(module):
        _save_policy(model, tokenizer, run_dir / "final", cfg.stage.lora.enabled and cfg.stage.merge)
    return metrics


def run_prm(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    import lightning as L

    from medsss.training.modules import PRMModule
    from medsss.training.prm_inputs import collate_prm, prm_inputs
    from medsss.training.prm_model import ProcessRewardModel

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    started = time.perf_counter()
    labels = cfg.stage.labels
    rows = prm_rows(read_trees(_sources(cfg)), rule=labels.rule, threshold=labels.threshold,
                    factor=labels.factor, require_both=labels.require_both,
                    weight_rollouts=labels.weight_rollouts)
    if not rows:
        raise ValueError(f"no labelled chains in {_sources(cfg)} (labels.require_both={labels.require_both})")
    write_rows(rows, run_dir / "prm.jsonl")
    train_rows, val_rows = split_by_problem(rows, cfg.stage.val_fraction)
    model_spec, path, tokenizer, pad = _model_and_tokenizer(cfg)
    system = cfg.prompt.system

    def items(subset):
        return [(prm_inputs(tokenizer, r["question"], r["steps"], system), r["labels"], r.get("weights"))
                for r in subset]

    def collate(batch):
        weights = [w for *_, w in batch]
        return collate_prm([i for i, *_ in batch], pad, labels=[l for _, l, _ in batch],
                           weights=weights if all(w is not None for w in weights) else None)

    model = ProcessRewardModel.from_causal_lm(path, resolve_dtype(cfg.stage.dtype, "cpu"),
                                              model_spec.trust_remote_code)
    if cfg.stage.gradient_checkpointing:
        model.body.gradient_checkpointing_enable()
    model.body = _lora(cfg, model.body, "FEATURE_EXTRACTION")
    module = PRMModule(model, **cfg.stage.optim)
    data = _datamodule(cfg, items(train_rows), items(val_rows), collate, lambda x: len(x[0].input_ids))
    metrics = _fit(cfg, run_dir, module, data, started, view_counts(rows), len(train_rows), len(val_rows))
    if _is_main(module):
        out = run_dir / "final"
        if cfg.stage.lora.enabled and cfg.stage.merge:
            model.body = model.body.merge_and_unload()
        model.save(out)
        tokenizer.save_pretrained(out)
    return metrics


def _is_main(module) -> bool:
    return module.trainer is None or module.trainer.is_global_zero


def _fit(cfg, run_dir: Path, module, data, started: float, counts: dict, n_train: int, n_val: int) -> dict:
    tracker = instantiate(cfg.logger)
    start = _StartStep()
    trainer = _trainer(cfg, run_dir, tracker, start)
    trainer.fit(module, data, ckpt_path=_checkpoint(cfg.stage.ckpt_path, run_dir))
    metrics = {
        "stage": cfg.stage.name,
        "model": cfg.model.id,
        "wall_seconds": round(time.perf_counter() - started, 3),
        "train_chains": n_train,
        "val_chains": n_val,
        "global_steps": trainer.global_step,
        "start_step": start.step,
        **{f"view_{k}": v for k, v in counts.items()},
        **{k.replace("/", "_"): float(v) for k, v in trainer.callback_metrics.items()},
        **peak_memory_mb(),
    }
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", metrics)
    return metrics


def _save_policy(model, tokenizer, out: Path, merge: bool) -> None:
    """The adapter (or full weights) in Hugging Face format, plus a merged model on request: the
    generation backend loads ``final/merged`` (or ``final``) as the next round's policy."""
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(out / "merged", safe_serialization=True)
        tokenizer.save_pretrained(out / "merged")
