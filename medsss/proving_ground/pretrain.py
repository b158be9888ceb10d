"""The starting policy of the proving ground (``model=proving_ground``): a small Llama pretrained on
step-formatted solutions in which a controlled share of steps is wrong.

The corpus (:func:`pretraining_corpus`) holds solutions of random questions over the whole knowledge
base (never a question of either split). Each step of a corpus solution is wrong with a rate that
depends on its fact:

- a drug's class or a prodrug's drug: ``entity_error`` (a random other value);
- a class's mechanism and a mechanism's contraindication: a *misconception* per class and per
  mechanism, its rate spread evenly over ``[link_error_low, link_error_high]`` (seeded), and a
  wrong step names that fact's confuser value with probability ``confusion_share`` (else a random
  one). Where the rate is above about one half, the confuser is the most frequent value, so the
  pretrained policy's greedy answer is wrong there while sampling still finds the right one.

A wrong step sends the rest of the chain to the wrong entity (later steps are right facts about
it) and the last step answers with the value reached (wrong, unless a later wrong step happened to
land on the gold value).
Every fact of a held-out chain is stated on train questions (never the chain itself), so a policy
that learns the facts on train questions (SFT on its own correct chains) improves on held-out ones.

The tokenizer is a byte-level BPE fitted to the corpus (it encodes any text; the task's words are
single tokens). Model and tokenizer are cached under ``$MEDSSS_CACHE/models/proving-ground-<hash>``,
keyed by every setting and the seed, and rebuilt identically from them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medsss.proving_ground.knowledge import Fact, KnowledgeBase, answer_sentence, fact_sentence
from medsss.proving_ground.task import (
    ASKS,
    CHAINS,
    TASK_VERSION,
    TaskSettings,
    entity_kind,
    generate_questions,
    gold_chain,
    question_text,
    random_options,
)

log = logging.getLogger(__name__)

# Bumped when the corpus or the training loop changes: part of the cache key.
PRETRAIN_VERSION = 2

LLAMA_DEFAULTS: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,  # head_dim 64, which vLLM's CPU attention supports
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class PretrainSettings:
    """Everything the starting policy is built from (with ``ModelSpec.seed``)."""

    task_seed: int = 0
    examples: int = 12000          # corpus solutions
    steps: int = 400               # optimizer steps
    batch_size: int = 24
    lr: float = 3.0e-3
    warmup_steps: int = 50
    entity_error: float = 0.1
    link_error_low: float = 0.2
    link_error_high: float = 0.75
    confusion_share: float = 0.8
    vocab_size: int = 640
    system_prompt: str | None = None
    llama: dict[str, Any] = field(default_factory=dict)  # LlamaConfig overrides of LLAMA_DEFAULTS

    def __post_init__(self) -> None:
        for name in ("entity_error", "link_error_low", "link_error_high", "confusion_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"model.pretrain.{name} must be in [0, 1], not {getattr(self, name)}")
        if self.link_error_low > self.link_error_high:
            raise ValueError(f"model.pretrain.link_error_low ({self.link_error_low}) is above "
                             f"link_error_high ({self.link_error_high})")
        if self.examples < 1 or self.steps < 1 or self.batch_size < 1:
            raise ValueError("model.pretrain.examples, steps and batch_size must be at least 1")


@dataclass(frozen=True)
class Misconceptions:
    """Per class and per mechanism: how often the corpus states its fact wrongly, and the value it
    then states most often."""

    rate: dict[str, float]      # class or mechanism -> error rate of the fact it is the subject of
    confuser: dict[str, str]    # class or mechanism -> the wrong object it is confused with


def misconceptions(kb: KnowledgeBase, settings: PretrainSettings) -> Misconceptions:
    rng = random.Random(f"proving-ground-misconceptions|{kb.seed}")
    rate: dict[str, float] = {}
    confuser: dict[str, str] = {}
    for relation, table in (("mechanism", kb.class_mechanism), ("contraindication", kb.mechanism_condition)):
        subjects = sorted(table)
        spread = _even(settings.link_error_low, settings.link_error_high, len(subjects))
        rng.shuffle(spread)
        for subject, value in zip(subjects, spread, strict=True):
            rate[subject] = value
            confuser[subject] = rng.choice([v for v in kb.values(relation) if v != table[subject]])
    return Misconceptions(rate, confuser)


def _even(low: float, high: float, count: int) -> list[float]:
    if count == 1:
        return [(low + high) / 2]
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def noisy_chain(kb: KnowledgeBase, entity: str, asks: str, rng: random.Random, settings: PretrainSettings,
                beliefs: Misconceptions) -> tuple[list[Fact], list[bool]]:
    """The facts a corpus solution states (each right fact about the entity reached so far, or a
    wrong one) and, per fact, whether it is true."""
    kind = entity_kind(kb, entity)
    assert kind is not None
    facts: list[Fact] = []
    truths: list[bool] = []
    subject = entity
    for relation in CHAINS[(kind, asks)]:
        true_object = kb.object_of(relation, subject)
        assert true_object is not None, (relation, subject)
        if relation in ("prodrug", "class"):
            wrong = rng.random() < settings.entity_error
            others = [v for v in kb.values(relation) if v != true_object]
            chosen = rng.choice(others) if wrong else true_object
        else:
            wrong = rng.random() < beliefs.rate[subject]
            if not wrong:
                chosen = true_object
            elif rng.random() < settings.confusion_share:
                chosen = beliefs.confuser[subject]
            else:
                excluded = (true_object, beliefs.confuser[subject])
                chosen = rng.choice([v for v in kb.values(relation) if v not in excluded])
        facts.append(Fact(relation, subject, chosen))
        truths.append(not wrong)
        subject = chosen
    return facts, truths


@dataclass(frozen=True)
class CorpusExample:
    question: str
    steps: list[str]  # after step 0
    wrong_steps: int  # steps whose fact is false or whose answer is wrong


def pretraining_corpus(kb: KnowledgeBase, settings: PretrainSettings, seed: int,
                       excluded: set[str]) -> list[CorpusExample]:
    """``settings.examples`` noisy solutions of random questions, none of whose text is in ``excluded``."""
    rng = random.Random(f"proving-ground-corpus|{seed}")
    beliefs = misconceptions(kb, settings)
    pairs = [(entity, asks) for entity in [*kb.drugs, *kb.prodrugs] for (kind, asks) in CHAINS
             if entity_kind(kb, entity) == kind]
    corpus: list[CorpusExample] = []
    while len(corpus) < settings.examples:
        entity, asks = rng.choice(pairs)
        gold = gold_chain(kb, entity, asks)
        options = random_options(rng, kb, gold[-1].relation, gold[-1].object)
        text = question_text(entity, asks, options)
        if text in excluded:
            continue
        facts, truths = noisy_chain(kb, entity, asks, rng, settings, beliefs)
        value = facts[-1].object
        steps = [*(fact_sentence(f) for f in facts), answer_sentence(value)]
        corpus.append(CorpusExample(text, steps, sum(not t for t in truths) + int(value != gold[-1].object)))
    return corpus


def corpus_error_share(corpus: Sequence[CorpusExample]) -> float:
    """The share of steps (answer steps included) that state a false fact or a wrong answer."""
    steps = sum(len(example.steps) for example in corpus)
    return sum(example.wrong_steps for example in corpus) / steps if steps else 0.0


def chat_text(question: str, steps: Sequence[str], system_prompt: str | None) -> str:
    """The text of a chat-formatted solution without its special tokens: what the tokenizer is fitted to."""
    from medsss.data.prompts import render_steps

    system = f"system\n{system_prompt}\n" if system_prompt else ""
    return f"{system}user\n{question}\nassistant\n{render_steps(steps)}"


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE fitted to ``texts`` and the fixed phrases of the step format, with ChatML
    special tokens and template."""
    from medsss.data.prompts import FORCE_ANSWER_SUFFIX, REFLECT_OPENING, STEP_ZERO
    from medsss.generation.models import bpe_tokenizer

    extra = [STEP_ZERO, FORCE_ANSWER_SUFFIX, REFLECT_OPENING, *(f"\n\nStep {k}:" for k in range(8))]
    return bpe_tokenizer([*extra, *texts], vocab_size)


def proving_ground_path(llama: dict[str, Any] | None, pretrain: dict[str, Any] | None, seed: int = 0) -> Path:
    """The pretrained starting policy's folder (built on first use, a few minutes on 2 cores)."""
    from medsss.generation.models import atomic_build, cache_root

    settings = PretrainSettings(**{**(pretrain or {}), "llama": {**(llama or {})}})
    key = json.dumps([asdict(settings), LLAMA_DEFAULTS, seed, PRETRAIN_VERSION, TASK_VERSION], sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    target = cache_root() / "models" / f"proving-ground-{digest}"
    return atomic_build(target, lambda out: pretrain_policy(settings, seed, out))


def pretrain_policy(settings: PretrainSettings, seed: int, out: Path) -> dict[str, Any]:
    """Build the corpus, fit the tokenizer, pretrain the Llama, save it (safetensors) with its
    tokenizer and ``pretrain.json`` (settings, corpus error share, losses, wall time)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from medsss.data.prompts import STEP_ZERO
    from medsss.training.sft_inputs import collate_sft, sft_inputs

    started = time.perf_counter()
    kb, questions = generate_questions(TaskSettings(seed=settings.task_seed))
    excluded = {q.text for split in questions.values() for q in split}
    corpus = pretraining_corpus(kb, settings, seed, excluded)
    tokenizer = train_tokenizer([chat_text(e.question, [STEP_ZERO, *e.steps], settings.system_prompt)
                                 for e in corpus], settings.vocab_size)
    examples = [sft_inputs(tokenizer, e.question, [STEP_ZERO, *e.steps], settings.system_prompt)
                for e in corpus]

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **{**LLAMA_DEFAULTS, **settings.llama})
    model = LlamaForCausalLM(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0, betas=(0.9, 0.98))

    def rate(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    order = random.Random(f"proving-ground-batches|{seed}")
    indices: list[int] = []
    losses: list[float] = []
    pad = tokenizer.pad_token_id
    for step in range(settings.steps):
        if len(indices) < settings.batch_size:
            fresh = list(range(len(examples)))
            order.shuffle(fresh)
            indices.extend(fresh)
        batch = collate_sft([examples[i] for i in indices[: settings.batch_size]], pad)
        del indices[: settings.batch_size]
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == settings.steps - 1:
            log.info("proving ground pretraining: step %d/%d, loss %.4f", step + 1, settings.steps,
                     losses[-1])
    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    card = {"settings": asdict(settings), "seed": seed,
            "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer), "corpus_examples": len(corpus),
            "corpus_error_share": round(corpus_error_share(corpus), 4),
            "first_loss": round(losses[0], 4), "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
            "wall_seconds": round(time.perf_counter() - started, 1), "asks": sorted(ASKS)}
    (out / "pretrain.json").write_text(json.dumps(card, indent=1), encoding="utf-8")
    log.info("proving ground policy pretrained: %s", card)
    return card
