"""Multiple-choice questions over the knowledge base, their gold solutions, and the splits.

A question asks for the class, the mechanism or the contraindication of a drug or a prodrug; its
solution walks the chain of facts from the named entity to the asked relation, one fact per step,
then answers with the text of the gold option (:func:`gold_steps`; the project's grader reads which
option a text names)::

    Which condition is a contraindication to plabotin?       (a drug: 3 chained steps)
    Step 1: plabotin is a voramide.
    Step 2: voramides act by vex kinase inhibition.
    Step 3: vex kinase inhibition is contraindicated in gout.
    Step 4: The answer is gout.

A prodrug adds a first step (``zorudrel is a prodrug of plabotin.``), so chains take 2 to 4
steps. Gold answers hold by construction. The splits are by question family (an entity with the
relation asked, whatever its options; its chain is fixed by those two). An entity's families nest:
the chain asking for a drug's mechanism is the start of the one asking for its contraindication.
Train keeps each entity's one or two shortest families (a seeded coin) and the longer ones are held
out, so a held-out chain never occurs in train, not even as the start of a longer one, while every
fact it chains is stated on train questions (the entity's own first steps there, the class-level
facts on other entities' questions). A held-out question asks one or two steps further than train
does about its entity: it tests composing learned facts into a chain never seen whole.

``${proving_ground:train}`` / ``${proving_ground:heldout}`` (an OmegaConf resolver registered with
the config schemas) write a split once as JSONL records under ``$MEDSSS_CACHE/proving_ground/`` and
return its path, so ``data=proving_ground`` is self-contained and reproducible from its seed.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from medsss.proving_ground.knowledge import (
    Fact,
    KnowledgeBase,
    answer_sentence,
    build_knowledge_base,
    fact_sentence,
)

SPLITS = ("train", "heldout")
LETTERS = ("A", "B", "C", "D")
# The relation a question asks for, and how it is asked.
ASKS = {
    "class": "Which drug class does {entity} belong to?",
    "mechanism": "What is the mechanism of action of {entity}?",
    "contraindication": "Which condition is a contraindication to {entity}?",
}
# Chains from an entity kind to each relation (2 to 4 steps; a drug's class alone is one step).
CHAINS = {
    ("drug", "mechanism"): ("class", "mechanism"),
    ("drug", "contraindication"): ("class", "mechanism", "contraindication"),
    ("prodrug", "class"): ("prodrug", "class"),
    ("prodrug", "mechanism"): ("prodrug", "class", "mechanism"),
    ("prodrug", "contraindication"): ("prodrug", "class", "mechanism", "contraindication"),
}
_QUESTION_FORMS = tuple((ask, re.compile("^" + re.escape(text).replace(r"\{entity\}", "([a-z]+)") + "$"))
                        for ask, text in ASKS.items())
# Bumped when the generated questions change: part of the cache key.
TASK_VERSION = 3


@dataclass(frozen=True)
class TaskSettings:
    seed: int = 0
    drugs_per_class: int = 10
    prodrugs: int = 40
    variants: int = 10  # questions per (entity, asked relation), each with other options

    def digest(self) -> str:
        key = json.dumps([asdict(self), TASK_VERSION], sort_keys=True)
        return hashlib.sha1(key.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Question:
    id: str
    entity: str
    kind: str  # "drug" | "prodrug"
    asks: str  # the relation asked for
    options: dict[str, str]
    chain: tuple[Fact, ...]  # the gold facts, in order

    @property
    def text(self) -> str:
        return question_text(self.entity, self.asks, self.options)

    @property
    def answer(self) -> str:
        value = self.chain[-1].object
        return next(letter for letter, text in self.options.items() if text == value)

    def record(self, split: str) -> dict:
        """The plain JSONL record (``data.format=jsonl``)."""
        return {"id": self.id, "question": self.text, "answer": self.answer, "kind": "choice",
                "options": self.options, "source": f"proving_ground/{split}",
                "meta": {"entity": self.entity, "entity_kind": self.kind, "asks": self.asks,
                         "chain": [[f.relation, f.subject, f.object] for f in self.chain]}}


def question_text(entity: str, asks: str, options: dict[str, str]) -> str:
    lines = "\n".join(f"{letter}. {text}" for letter, text in options.items())
    return f"{ASKS[asks].format(entity=entity)}\n{lines}"


def parse_question(text: str) -> tuple[str, str] | None:
    """``(entity, asked relation)`` of a question's first line, or None for another question."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    for asks, form in _QUESTION_FORMS:
        match = form.match(first.strip())
        if match:
            return match.group(1), asks
    return None


def entity_kind(kb: KnowledgeBase, entity: str) -> str | None:
    if entity in kb.drug_class:
        return "drug"
    if entity in kb.prodrug_drug:
        return "prodrug"
    return None


def gold_chain(kb: KnowledgeBase, entity: str, asks: str) -> tuple[Fact, ...]:
    """The facts from ``entity`` to the relation asked for."""
    kind = entity_kind(kb, entity)
    if kind is None or (kind, asks) not in CHAINS:
        raise ValueError(f"no chain for {entity!r} ({kind}) asking for {asks!r}")
    facts, subject = [], entity
    for relation in CHAINS[(kind, asks)]:
        found = kb.object_of(relation, subject)
        assert found is not None, (relation, subject)
        facts.append(Fact(relation, subject, found))
        subject = found
    return tuple(facts)


def gold_steps(question: Question) -> list[str]:
    """The gold solution's steps after step 0: one sentence per fact, then the answer."""
    return [*(fact_sentence(f) for f in question.chain), answer_sentence(question.chain[-1].object)]


def random_options(rng: random.Random, kb: KnowledgeBase, relation: str, correct: str) -> dict[str, str]:
    """Four options: ``correct`` and three other values of ``relation``, in random order."""
    pool = [v for v in kb.values(relation) if v != correct]
    values = [correct, *rng.sample(pool, len(LETTERS) - 1)]
    rng.shuffle(values)
    return dict(zip(LETTERS, values, strict=True))


def family_split(kb: KnowledgeBase, seed: int) -> dict[tuple[str, str], str]:
    """``(entity, asked relation) -> split``: per entity, its families by chain length; the one or
    two shortest (a seeded coin; never all of them) are train, the rest held out."""
    rng = random.Random(f"proving-ground-split|{seed}")
    split: dict[tuple[str, str], str] = {}
    entities = [*(("drug", drug) for drug in kb.drugs), *(("prodrug", p) for p in kb.prodrugs)]
    for kind, entity in entities:
        lengths = {asks: len(chain) for (chain_kind, asks), chain in CHAINS.items() if chain_kind == kind}
        families = sorted(lengths, key=lengths.__getitem__)
        kept = min(len(families), 1 + rng.randrange(2))
        for index, asks in enumerate(families):
            split[(entity, asks)] = "train" if index < kept else "heldout"
    return split


def generate_questions(settings: TaskSettings) -> tuple[KnowledgeBase, dict[str, list[Question]]]:
    """The knowledge base and every question of each split, in a seeded shuffled order."""
    kb = build_knowledge_base(settings.seed, settings.drugs_per_class, settings.prodrugs)
    split_of = family_split(kb, settings.seed)
    rng = random.Random(f"proving-ground-questions|{settings.seed}")
    questions: dict[str, list[Question]] = {name: [] for name in SPLITS}
    for entity in [*kb.drugs, *kb.prodrugs]:
        kind = entity_kind(kb, entity)
        for (chain_kind, asks) in CHAINS:
            if chain_kind != kind:
                continue
            chain = gold_chain(kb, entity, asks)
            seen: set[tuple[str, ...]] = set()
            attempts = 0
            while len(seen) < settings.variants and attempts < 50 * settings.variants:
                attempts += 1
                options = random_options(rng, kb, chain[-1].relation, chain[-1].object)
                key = tuple(options.values())
                if key in seen:
                    continue
                seen.add(key)
                name = f"pg{settings.seed}-{asks}-{entity}-{len(seen)}"
                questions[split_of[(entity, asks)]].append(Question(name, entity, kind, asks, options, chain))
    for name in SPLITS:
        random.Random(f"proving-ground-order|{settings.seed}|{name}").shuffle(questions[name])
    return kb, questions


# --- files ------------------------------------------------------------------------------------


def task_dir(settings: TaskSettings) -> Path:
    from medsss.generation.models import cache_root

    return cache_root() / "proving_ground" / f"task-{settings.digest()}"


def write_task(settings: TaskSettings, directory: Path) -> None:
    """``train.jsonl``, ``heldout.jsonl`` and ``knowledge.json`` into ``directory``."""
    kb, questions = generate_questions(settings)
    directory.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        lines = "".join(json.dumps(q.record(name), ensure_ascii=False) + "\n" for q in questions[name])
        (directory / f"{name}.jsonl").write_text(lines, encoding="utf-8")
    (directory / "knowledge.json").write_text(json.dumps(
        {"settings": asdict(settings), "drug_class": kb.drug_class, "prodrug_drug": kb.prodrug_drug,
         "class_mechanism": kb.class_mechanism, "mechanism_condition": kb.mechanism_condition},
        indent=1, sort_keys=True), encoding="utf-8")


def split_path(split: str, seed: int = 0) -> Path:
    """The JSONL file of one split of the task of ``seed`` (written on first use, atomically)."""
    if split not in SPLITS:
        raise ValueError(f"proving ground split {split!r} must be one of {SPLITS}")
    from medsss.generation.models import atomic_build

    settings = TaskSettings(seed=int(seed))
    target = task_dir(settings)
    atomic_build(target, lambda out: _write_marked(settings, out))
    return target / f"{split}.jsonl"


def _write_marked(settings: TaskSettings, out: Path) -> None:
    write_task(settings, out)
    # atomic_build treats a folder with config.json as complete.
    (out / "config.json").write_text(json.dumps(asdict(settings)), encoding="utf-8")


def register_resolver() -> None:
    """``${proving_ground:<split>[,<seed>]}``: the path of that split's JSONL file (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("proving_ground"):
        OmegaConf.register_new_resolver("proving_ground",
                                        lambda split, seed=0: str(split_path(str(split), seed)))
