"""Typed schemas of the config groups (Hydra structured configs).

Every YAML option of a group names its schema first in its defaults list, e.g. conf/search/mcts.yaml:

    defaults:
      - /schema/search/mcts@_here_
      - _self_

so Hydra merges the option onto a dataclass node: a key the schema does not declare (a misspelt
``stage.labels.rulle`` in an overlay or on the command line) or a value of the wrong type
(``search.width=abc``) fails while the config is composed, with an error naming the key. The
schemas live in Hydra's ConfigStore under ``schema/<group>/<name>``; :func:`register_configs` puts
them there and must run before composition (``medsss.run`` does it at import, before
``@hydra.main``; the tests' and benchmarks' compose helpers call it too).

A schema declares exactly the keys of the option files that use it, with their current values as
defaults (``???`` where every file must set one): composing adds no keys to what the files say,
except ``trainer``, whose schema also declares Lightning Trainer's other common arguments at
Lightning's own defaults, so they can be set without ``+``.

``+key=value`` (Hydra's force-add) is the one way around a schema: OmegaConf lifts the struct flag
for it. :func:`check_config` closes that gap for plain settings nodes (stage, decode, suite, paths,
prompt and the nested nodes of the stages): a key added there is an error too. A node that describes
a constructor call (it has ``_target_``) stays open to ``+``: an extra key is one more keyword
argument (``+backend.hf.prefix_cache_size=64``, ``+trainer.profiler=simple``), which the
constructor itself rejects when it does not take it.

Nothing here imports torch, Lightning or vLLM: the schemas are written by hand (a test checks them
against the dataclasses they mirror).
"""

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from medsss.search.mcts import SearchConfig

# --------------------------------------------------------------------------------------------
# root: prompt, paths and retry


@dataclass
class PromptSchema:
    system: str | None = MISSING


@dataclass
class PathsSchema:
    root_dir: str = "."
    data_dir: str = "${oc.env:MEDSSS_BENCHMARKS,../shared/data/medical_benchmarks}"
    output_dir: str = "${paths.root_dir}/outputs"
    sweep_dir: str = "${paths.root_dir}/multirun"
    cache_dir: str = "${oc.env:MEDSSS_CACHE,'~/.cache/medsss'}"


@dataclass
class RetrySchema:
    """How engine calls that raise are retried (medsss.generation.resilient.ResilientBackend)."""

    attempts: int = 3  # tries in all (1: no retries)
    backoff_s: float = 1.0  # wait after the first failed try, doubled after each further one
    max_backoff_s: float = 30.0


# --------------------------------------------------------------------------------------------
# stage


@dataclass
class SynthesizeStageSchema:
    name: str = "synthesize"
    allow_config_change: bool = False
    table_rows: int = 20
    objective: str | None = None


@dataclass
class ViewStageSchema:
    name: str = "view"
    runs: Any = MISSING  # a synthesis run dir or trees.jsonl, or a list of them (shown side by side)
    labels: list[str] | None = None
    out: str | None = None
    limit: int | None = None
    title: str = "medsss search trees"
    objective: str | None = None


@dataclass
class MergeStageSchema:
    name: str = "merge"
    runs: list[str] = MISSING  # the shards' synthesis run dirs
    objective: str | None = None


@dataclass
class SummarizeStageSchema:
    name: str = "summarize"
    dir: str = MISSING  # a multirun directory (the hydra.sweep.dir of a --multirun)
    axes: list[str] | None = None  # the heat map's two swept keys (null: the first two)
    value: str | None = None  # the heat map's figure (null: the stage's headline)
    plots: bool = True
    objective: str | None = None


@dataclass
class PassRateBandSchema:
    low: float = 0.0
    high: float = 0.125


@dataclass
class CurriculumStageSchema:
    name: str = "curriculum"
    k: int = 8
    band: PassRateBandSchema = field(default_factory=PassRateBandSchema)
    floor_per_source: int = 2
    max_per_source: int | None = None
    objective: str | None = None


@dataclass
class EvolveOverridesSchema:
    all: list[str] = field(default_factory=list)
    curriculum: list[str] = field(default_factory=list)
    synthesize: list[str] = field(default_factory=list)
    sft: list[str] = field(default_factory=list)
    dpo: list[str] = field(default_factory=list)
    prm: list[str] = field(default_factory=list)
    evaluate: list[str] = field(default_factory=list)


@dataclass
class EvolveStageSchema:
    name: str = "evolve"
    rounds: int = 2
    curriculum: bool = False
    dpo: bool = False
    evaluate: bool = True
    evaluate_before: bool = False
    accumulate: bool = False
    handoff: str = "auto"
    isolation: str = "subprocess"
    on_config_change: str = "error"
    overrides: EvolveOverridesSchema = field(default_factory=EvolveOverridesSchema)
    objective: str | None = None


@dataclass
class EvaluatePRMSchema:
    path: str | None = None
    layout: str = "scalar"
    base: str | None = None
    tokenizer: str | None = None
    system_prompt: str | None = "${prompt.system}"
    batch_size: int = 16
    dtype: str = "float32"
    penalty_scale: float | None = None  # a dual-head PRM's lambda (null: as saved with it)


@dataclass
class DiagnosticsSchema:
    trees: Any = None  # a synthesis run dir or trees.jsonl, or a list of them
    bins: int = 10


@dataclass
class EvaluateStageSchema:
    name: str = "evaluate"
    n: int = 16
    temperature: float = 1.0
    top_p: float = 0.95
    max_tokens: int = 512
    greedy: bool = True
    last_line_fallback: bool = False
    items_per_call: int = 8
    limit: int | None = None
    skip_invalid: bool = False
    dedupe: str = "error"  # error | first (data.dedupe for each benchmark file)
    policy_system_prompt: str | None = "${prompt.system}"
    bootstrap: int = 1000
    subsample_rounds: int = 20
    selections: list[str] = field(default_factory=lambda: ["sc", "bon", "pvs", "vote_mean"])
    aggregations: list[str] = field(default_factory=lambda: ["min", "mean", "prod", "gmean", "last"])
    prm: EvaluatePRMSchema = field(default_factory=EvaluatePRMSchema)
    diagnostics: DiagnosticsSchema = field(default_factory=DiagnosticsSchema)
    objective: str | None = None


@dataclass
class LoraSchema:
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"  # all-linear or a list of module names


@dataclass
class LabelsSchema:
    rule: str = "soft"
    threshold: float = 0.5
    factor: float = 1.0
    shape_step_one: bool = False
    require_both: bool = True
    weight_rollouts: int | None = None


@dataclass
class DualHeadSchema:
    """The dual-sided PRM's settings (used with ``stage.head=dual``)."""

    penalty_weight: float = 0.3  # alpha: loss = value BCE + alpha * penalty BCE
    penalty_scale: float = 0.5  # lambda: score = clip(p_value - lambda * p_penalty, 0, 1)


@dataclass
class TrainStageSchema:
    """What sft and prm share. ``optim`` and ``callbacks`` are filled by their groups (mounted at
    stage.optim and stage.callbacks), which bring their own schemas."""

    name: str = MISSING
    val_fraction: float = 0.1
    max_batch_tokens: int | None = 768
    batch_size: int | None = None
    length_group: int = 32
    dtype: str = "float32"
    gradient_checkpointing: Any = "auto"  # true | false | auto
    release_memory_every: int | None = 10
    lora: LoraSchema = field(default_factory=LoraSchema)
    merge: bool = True
    optim: Any = None
    checkpoint_every: int = 200
    ckpt_path: str | None = None
    objective: str | None = None
    callbacks: dict[str, Any] = field(default_factory=dict)


@dataclass
class SFTStageSchema(TrainStageSchema):
    name: str = "sft"
    top_k: int | None = None
    max_length: int = 2048


@dataclass
class DPOStageSchema(TrainStageSchema):
    name: str = "dpo"
    margin: float = 0.8
    beta: float = 0.1
    max_length: int = 2048


@dataclass
class PRMStageSchema(TrainStageSchema):
    name: str = "prm"
    labels: LabelsSchema = field(default_factory=LabelsSchema)
    lora: LoraSchema = field(default_factory=lambda: LoraSchema(r=32, alpha=64))
    head: str = "single"  # single | dual (the dual-sided PRM)
    dual: DualHeadSchema = field(default_factory=DualHeadSchema)


# --------------------------------------------------------------------------------------------
# model (medsss.generation.models.ModelSpec)


@dataclass
class ModelSchema:
    _target_: str = "medsss.generation.models.ModelSpec"
    id: str = MISSING
    source: str = MISSING
    dtype: str = "auto"
    trust_remote_code: bool = False
    max_model_len: int = 4096


@dataclass
class AdapterModelSchema(ModelSchema):
    """A base model with a LoRA adapter merged at load."""

    adapter: str | None = None


@dataclass
class TinyModelSchema(ModelSchema):
    """``source: tiny``: a random Llama built locally."""

    tokenizer: str = "bpe"
    seed: int = 0
    tiny: dict[str, Any] = field(default_factory=dict)  # LlamaConfig overrides


@dataclass
class ProvingGroundModelSchema(ModelSchema):
    """``source: proving_ground``: the proving ground's starting policy, pretrained locally."""

    seed: int = 0
    tiny: dict[str, Any] = field(default_factory=dict)  # LlamaConfig overrides
    pretrain: dict[str, Any] = field(default_factory=dict)  # medsss.proving_ground.pretrain.PretrainSettings


# --------------------------------------------------------------------------------------------
# backend


@dataclass
class HFBackendSchema:
    _target_: str = "medsss.generation.hf.HFBackend"
    _partial_: bool = True
    device: str = "auto"
    max_batch_size: int = 64
    seed: int = "${seed}"  # type: ignore[assignment]  # an interpolation of an int


@dataclass
class VLLMBackendSchema:
    _target_: str = "medsss.generation.vllm_engine.VLLMBackend"
    _partial_: bool = True
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    cpu_kvcache_space_gb: int = 4
    max_num_seqs: int = 256
    enable_prefix_caching: bool = True
    merge_adapter: bool = False
    max_lora_rank: int = 64
    enforce_eager: bool = True
    enable_chunked_prefill: bool | None = False
    max_num_batched_tokens: int | None = None
    cpu_threads_bind: str | None = "all"
    streaming: bool = True
    seed: int = "${seed}"  # type: ignore[assignment]  # an interpolation of an int


@dataclass
class AutoBackendSchema:
    _target_: str = "medsss.generation.auto.auto_backend"
    _recursive_: bool = False
    hf: HFBackendSchema = field(default_factory=HFBackendSchema)
    vllm: VLLMBackendSchema = field(default_factory=VLLMBackendSchema)


# --------------------------------------------------------------------------------------------
# data (medsss.data.loaders.DataSpec; the training stages' stored trees)


@dataclass
class DataSchema:
    _target_: str = "medsss.data.loaders.DataSpec"
    name: str = MISSING
    format: str = MISSING
    path: str | None = None
    limit: int | None = None
    shard: int = 0
    num_shards: int = 1
    skip_invalid: bool = False
    dedupe: str = "error"  # error | first: a row repeating an earlier id is refused, or dropped


@dataclass
class MedMCQADataSchema(DataSchema):
    cop_base: Any = "auto"  # auto | 0 | 1


@dataclass
class PubMedQADataSchema(DataSchema):
    include_context: bool = False


@dataclass
class TreesDataSchema:
    name: str = "trees"
    trees: Any = MISSING  # a synthesis run dir or trees.jsonl, or a list of them


# --------------------------------------------------------------------------------------------
# search (medsss.search.mcts.SearchConfig), decode, suite


@dataclass
class SearchSchema(SearchConfig):
    """SearchConfig's own fields and types (one definition of the search constants), plus the
    instantiation target and the seed interpolation."""

    _target_: str = "medsss.search.mcts.SearchConfig"
    seed: int = "${seed}"  # type: ignore[assignment]  # an interpolation of an int


@dataclass
class DecodeSchema:
    selection: str = MISSING  # greedy | sc | bon | pvs | vote_mean
    aggregation: str = "min"
    n: int = 16


@dataclass
class BenchmarkSchema:
    name: str = MISSING
    format: str = MISSING
    path: str = MISSING
    optional: bool = False  # true: a missing file is skipped with a warning (else refused before work)


@dataclass
class SuiteSchema:
    benchmarks: list[BenchmarkSchema] = MISSING


# --------------------------------------------------------------------------------------------
# trainer: lightning.Trainer keyword arguments (logger, callbacks and default_root_dir are passed
# by the training stage itself). The ones conf/trainer/*.yaml do not set are at Lightning's
# defaults (lightning 2.4-2.6).


@dataclass
class TrainerSchema:
    _target_: str = "lightning.Trainer"
    accelerator: str = "auto"
    devices: Any = "auto"  # int, str or list of device ids
    strategy: str = "auto"
    num_nodes: int = 1
    precision: Any = None  # "32-true", "bf16-mixed", 16, ...
    fast_dev_run: Any = False  # bool or a number of batches
    max_epochs: int | None = None
    min_epochs: int | None = None
    max_steps: int = -1
    min_steps: int | None = None
    max_time: Any = None  # "DD:HH:MM:SS" or {days: .., hours: ..}
    limit_train_batches: Any = None  # int (batches) or float (fraction)
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    limit_predict_batches: Any = None
    overfit_batches: Any = 0.0
    val_check_interval: Any = None
    check_val_every_n_epoch: int | None = 1
    num_sanity_val_steps: int | None = None
    log_every_n_steps: int | None = None
    enable_checkpointing: bool | None = None
    enable_progress_bar: bool | None = None
    enable_model_summary: bool | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str | None = None
    deterministic: Any = None  # bool or "warn"
    benchmark: bool | None = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    profiler: str | None = None
    detect_anomaly: bool = False
    barebones: bool = False
    sync_batchnorm: bool = False
    reload_dataloaders_every_n_epochs: int = 0


# --------------------------------------------------------------------------------------------
# logger entries (logger.<name>), callbacks entries (stage.callbacks.<name>), optim


@dataclass
class CSVLoggerSchema:
    _target_: str = "lightning.pytorch.loggers.CSVLogger"
    name: str = "logs"


@dataclass
class WandbLoggerSchema:
    _target_: str = "lightning.pytorch.loggers.WandbLogger"
    project: str = "medsss"
    entity: str | None = None
    name: str | None = None
    group: str | None = "${oc.env:MEDSSS_RUN_GROUP,${stage.name}}"  # a sweep's or evolve run's group
    job_type: str | None = "${stage.name}"
    tags: list[str] = field(default_factory=list)
    mode: str | None = None
    log_model: Any = False  # bool or "all"


@dataclass
class ModelCheckpointSchema:
    _target_: str = "lightning.pytorch.callbacks.ModelCheckpoint"
    dirpath: str | None = "checkpoints"
    every_n_train_steps: int | None = "${stage.checkpoint_every}"  # type: ignore[assignment]  # interpolation
    save_last: Any = True  # bool or "link"
    save_top_k: int = 1


@dataclass
class EarlyStoppingSchema:
    _target_: str = "lightning.pytorch.callbacks.EarlyStopping"
    monitor: str = "val/loss"
    mode: str = "min"
    patience: int = 3
    min_delta: float = 0.0


@dataclass
class LearningRateMonitorSchema:
    _target_: str = "lightning.pytorch.callbacks.LearningRateMonitor"
    logging_interval: str | None = "step"


@dataclass
class RichProgressBarSchema:
    _target_: str = "lightning.pytorch.callbacks.RichProgressBar"


@dataclass
class AdamWSchema:
    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = MISSING
    weight_decay: float = 0.0


@dataclass
class WarmupSchedulerSchema:
    _target_: str = "medsss.training.schedules.warmup_scheduler"
    _partial_: bool = True
    warmup_ratio: float = 0.03
    schedule: str = "cosine"  # cosine | constant


@dataclass
class AdamWOptimSchema:
    optimizer: AdamWSchema = field(default_factory=AdamWSchema)
    scheduler: WarmupSchedulerSchema | None = field(default_factory=WarmupSchedulerSchema)


# --------------------------------------------------------------------------------------------
# registration

#: ConfigStore entries: (group under schema/, name, schema). YAML options name them as
#: ``/schema/<group>/<name>@<package>`` in their defaults lists.
SCHEMAS: tuple[tuple[str, str, type], ...] = (
    ("prompt", "prompt", PromptSchema),
    ("paths", "paths", PathsSchema),
    ("retry", "retry", RetrySchema),
    ("stage", "synthesize", SynthesizeStageSchema),
    ("stage", "sft", SFTStageSchema),
    ("stage", "prm", PRMStageSchema),
    ("stage", "dpo", DPOStageSchema),
    ("stage", "evaluate", EvaluateStageSchema),
    ("stage", "curriculum", CurriculumStageSchema),
    ("stage", "evolve", EvolveStageSchema),
    ("stage", "view", ViewStageSchema),
    ("stage", "merge", MergeStageSchema),
    ("stage", "summarize", SummarizeStageSchema),
    ("model", "base", ModelSchema),
    ("model", "adapter", AdapterModelSchema),
    ("model", "tiny", TinyModelSchema),
    ("model", "proving_ground", ProvingGroundModelSchema),
    ("backend", "auto", AutoBackendSchema),
    ("backend", "hf", HFBackendSchema),
    ("backend", "vllm", VLLMBackendSchema),
    ("data", "spec", DataSchema),
    ("data", "medmcqa", MedMCQADataSchema),
    ("data", "pubmedqa", PubMedQADataSchema),
    ("data", "trees", TreesDataSchema),
    ("search", "mcts", SearchSchema),
    ("decode", "decode", DecodeSchema),
    ("suite", "suite", SuiteSchema),
    ("trainer", "lightning", TrainerSchema),
    ("logger", "csv", CSVLoggerSchema),
    ("logger", "wandb", WandbLoggerSchema),
    ("callbacks", "model_checkpoint", ModelCheckpointSchema),
    ("callbacks", "early_stopping", EarlyStoppingSchema),
    ("callbacks", "lr_monitor", LearningRateMonitorSchema),
    ("callbacks", "rich_progress_bar", RichProgressBarSchema),
    ("optim", "adamw", AdamWOptimSchema),
)


def register_configs() -> None:
    """Put the schemas into Hydra's ConfigStore (idempotent): before any composition."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, name, schema in SCHEMAS:
        store.store(group=f"schema/{group}", name=name, node=schema)
    # ${proving_ground:<split>}: the proving ground's generated question files (data=proving_ground).
    from medsss.proving_ground.task import register_resolver

    register_resolver()


# --------------------------------------------------------------------------------------------
# after composition: keys added with + to plain settings nodes


class ConfigKeyAddedError(KeyError):
    """A ``+key=value`` added a key that a settings node's schema does not declare."""

    def __str__(self) -> str:  # KeyError's own str() is the repr of its argument
        return str(self.args[0])


def _schema(node: DictConfig) -> type | None:
    object_type = OmegaConf.get_type(node)
    return object_type if object_type is not None and is_dataclass(object_type) else None


def added_keys(cfg: DictConfig | ListConfig, path: str = "") -> list[tuple[str, str]]:
    """``(full key, schema name)`` of every key under a schema-typed settings node (one without
    ``_target_``) that its schema does not declare: what ``+key=value`` can add past a schema."""
    found: list[tuple[str, str]] = []
    if isinstance(cfg, DictConfig):
        if cfg._is_none() or cfg._is_missing() or cfg._is_interpolation():
            return found
        schema = _schema(cfg)
        declared = {f.name for f in fields(schema)} if schema is not None else set()
        closed = schema if schema is not None and "_target_" not in declared else None
        for key in cfg.keys():
            full = f"{path}.{key!s}" if path else str(key)
            if closed is not None and key not in declared:
                found.append((full, closed.__name__))
            child = cfg._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)):
                found.extend(added_keys(child, full))
    elif isinstance(cfg, ListConfig):
        if cfg._is_none() or cfg._is_missing() or cfg._is_interpolation():
            return found
        for index in range(len(cfg)):
            element = cfg._get_node(index)
            if isinstance(element, (DictConfig, ListConfig)):
                found.extend(added_keys(element, f"{path}[{index}]"))
    return found


def check_config(cfg: DictConfig) -> DictConfig:
    """Raise :class:`ConfigKeyAddedError` naming every key that ``+key=value`` added to a settings
    node past its schema (a misspelt ``+stage.labels.rulle=hard``); return ``cfg``."""
    found = added_keys(cfg)
    if found:
        listed = ", ".join(f"'{key}' (not in {schema})" for key, schema in found)
        raise ConfigKeyAddedError(f"unknown config key {listed}: check the spelling; settings nodes take "
                                  f"only the keys their schema declares (medsss/config_schema.py)")
    return cfg


def compose(overrides: list[str], config_dir: str | None = None, config_name: str = "config") -> DictConfig:
    """Compose the project's config from code, schemas registered and checked: what the tests
    and benchmarks use instead of ``python -m medsss.run``."""
    from pathlib import Path

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    config_dir = config_dir or str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        return check_config(hydra_compose(config_name=config_name, overrides=overrides))
