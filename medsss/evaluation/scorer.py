"""Loading the PRM that scores evaluation candidates: ours (a scalar head on a causal-LM body,
saved by the prm stage) or the released MedSSS layout (a two-class token classifier)."""

from __future__ import annotations

from typing import Any


def load_prm_scorer(path: str, *, layout: str = "scalar", base: str | None = None,
                    tokenizer: str | None = None, dtype: str = "float32", batch_size: int = 16,
                    system_prompt: str | None = None, device: str = "cpu",
                    penalty_scale: float | None = None) -> Any:
    """A :class:`~medsss.training.prm_model.PRMScorer` for the PRM at ``path``. ``layout``:
    ``scalar`` (ours, in ``dtype`` for ``device``; single or dual head as saved) or
    ``token_classifier`` (a LoRA adapter on ``base``, or a full model at ``path``). ``tokenizer``
    defaults to the one saved at ``path``. ``penalty_scale`` replaces a dual-head PRM's saved
    lambda (None: as saved; an error for a PRM without a penalty head)."""
    from transformers import AutoTokenizer

    from medsss.generation.hf import resolve_dtype
    from medsss.training.prm_model import PRMScorer, ProcessRewardModel

    loaded_tokenizer = AutoTokenizer.from_pretrained(tokenizer or path)
    if layout == "scalar":
        model = ProcessRewardModel.from_causal_lm(path, resolve_dtype(dtype, device))
    else:
        model = load_token_classifier(path, base)
    return PRMScorer(model, loaded_tokenizer, system_prompt, layout=layout, device=device,
                     batch_size=batch_size, penalty_scale=penalty_scale)


def load_token_classifier(path: str, base: str | None) -> Any:
    """The released MedSSS PRM layout: a two-class token classifier, as a LoRA adapter on ``base``
    (or a full model at ``path``)."""
    from transformers import AutoModelForTokenClassification

    if base:
        from peft import PeftModel

        classifier = AutoModelForTokenClassification.from_pretrained(base, num_labels=2)
        return PeftModel.from_pretrained(classifier, path)
    return AutoModelForTokenClassification.from_pretrained(path, num_labels=2)
