"""The proving ground's knowledge base: fictional drugs with a medical flavour, built from a seed.

Four relations chain into one another::

    prodrug --prodrug--> drug --class--> class --mechanism--> mechanism --contraindication--> condition

Every drug belongs to one class, every class acts by one mechanism (two classes per mechanism),
every mechanism is contraindicated in one condition, and a prodrug is converted into one drug.
Each fact is stated by exactly one sentence form (:func:`fact_sentence`), which
:func:`parse_fact` reads back, so a step of a free-text solution can be checked against the base.

Names are lower case single words (classes, conditions) or fixed phrases (mechanisms), chosen so
that no name is a prefix of another sentence form.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

RELATIONS = ("prodrug", "class", "mechanism", "contraindication")

CLASSES = ("voramide", "kelastin", "duloxan", "pirenate", "sulvamine", "moracid",
           "tevorin", "galimide", "brontase", "ferolone", "cymbalide", "nortazine")
MECHANISMS = ("tolar channel block", "vex kinase inhibition", "mirin receptor agonism",
              "sorb pump inhibition", "dulan receptor block", "quelin synthase inhibition")
CONDITIONS = ("asthma", "gout", "glaucoma", "pregnancy", "bradycardia", "hyperkalemia")

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "cl", "tr", "pl")
_VOWELS = ("a", "e", "i", "o", "u")
_DRUG_ENDINGS = ("tin", "bine", "zole", "pril", "mab", "vir", "lol", "dine", "xet", "rane", "fen", "cort")
_PRODRUG_ENDINGS = ("drel", "phate", "tomer", "quil")


@dataclass(frozen=True)
class Fact:
    relation: str  # one of RELATIONS
    subject: str
    object: str


@dataclass(frozen=True)
class KnowledgeBase:
    """The facts of one seed. Lookups are by subject; every subject has exactly one object."""

    seed: int
    drug_class: dict[str, str]
    prodrug_drug: dict[str, str]
    class_mechanism: dict[str, str]
    mechanism_condition: dict[str, str]

    @property
    def drugs(self) -> list[str]:
        return sorted(self.drug_class)

    @property
    def prodrugs(self) -> list[str]:
        return sorted(self.prodrug_drug)

    def table(self, relation: str) -> dict[str, str]:
        tables = {"prodrug": self.prodrug_drug, "class": self.drug_class,
                  "mechanism": self.class_mechanism, "contraindication": self.mechanism_condition}
        if relation not in tables:
            raise ValueError(f"unknown relation {relation!r}; relations: {', '.join(RELATIONS)}")
        return tables[relation]

    def object_of(self, relation: str, subject: str) -> str | None:
        return self.table(relation).get(subject)

    def holds(self, fact: Fact) -> bool:
        return self.object_of(fact.relation, fact.subject) == fact.object

    def values(self, relation: str) -> tuple[str, ...]:
        """Every object the relation can name (the option pool of a question asking for it)."""
        pools = {"prodrug": tuple(self.drugs), "class": CLASSES, "mechanism": MECHANISMS,
                 "contraindication": CONDITIONS}
        return pools[relation]


def _names(rng: random.Random, count: int, endings: tuple[str, ...], taken: set[str]) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(2)) + rng.choice(endings)
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def build_knowledge_base(seed: int = 0, drugs_per_class: int = 10, prodrugs: int = 40) -> KnowledgeBase:
    """The knowledge base of ``seed``: ``drugs_per_class`` drugs in each of the 12 classes and
    ``prodrugs`` prodrugs, each of a different drug; classes, mechanisms and conditions are paired
    at random (two classes per mechanism, one condition per mechanism)."""
    if drugs_per_class < 2:
        raise ValueError(f"drugs_per_class must be at least 2 (one per split), not {drugs_per_class}")
    if not 0 <= prodrugs <= drugs_per_class * len(CLASSES):
        raise ValueError(f"prodrugs must be between 0 and the number of drugs, not {prodrugs}")
    rng = random.Random(f"proving-ground-kb|{seed}")
    mechanisms = list(MECHANISMS)
    rng.shuffle(mechanisms)
    classes = list(CLASSES)
    rng.shuffle(classes)
    class_mechanism = {name: mechanisms[i % len(mechanisms)] for i, name in enumerate(classes)}
    conditions = list(CONDITIONS)
    rng.shuffle(conditions)
    mechanism_condition = dict(zip(MECHANISMS, conditions, strict=True))
    taken = set(CLASSES) | set(CONDITIONS)
    drug_class: dict[str, str] = {}
    for name in CLASSES:
        for drug in _names(rng, drugs_per_class, _DRUG_ENDINGS, taken):
            drug_class[drug] = name
    activated = rng.sample(sorted(drug_class), prodrugs)
    prodrug_drug = dict(zip(_names(rng, prodrugs, _PRODRUG_ENDINGS, taken), activated, strict=True))
    return KnowledgeBase(seed, drug_class, prodrug_drug, class_mechanism, mechanism_condition)


# --- sentences --------------------------------------------------------------------------------


def fact_sentence(fact: Fact) -> str:
    """The one sentence that states ``fact`` (a solution step's text)."""
    forms = {
        "prodrug": f"{fact.subject} is a prodrug of {fact.object}.",
        "class": f"{fact.subject} is a {fact.object}.",
        "mechanism": f"{fact.subject}s act by {fact.object}.",
        "contraindication": f"{fact.subject} is contraindicated in {fact.object}.",
    }
    if fact.relation not in forms:
        raise ValueError(f"unknown relation {fact.relation!r}; relations: {', '.join(RELATIONS)}")
    return forms[fact.relation]


def answer_sentence(value: str) -> str:
    """The final step: the answer, named by the text of its option (the grader reads which option
    a text names, so the policy needs no letter lookup)."""
    return f"The answer is {value}."


# Tried in this order: "is a prodrug of" before the class form "is a".
_FACT_FORMS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("prodrug", re.compile(r"^([a-z]+) is a prodrug of ([a-z]+)\.$")),
    ("contraindication", re.compile(r"^([a-z][a-z ]*[a-z]) is contraindicated in ([a-z]+)\.$")),
    ("mechanism", re.compile(r"^([a-z]+)s act by ([a-z][a-z ]*[a-z])\.$")),
    ("class", re.compile(r"^([a-z]+) is a ([a-z]+)\.$")),
)
_ANSWER_FORM = re.compile(r"^The answer is ([a-z][a-z ]*[a-z])\.$")


def parse_fact(text: str) -> Fact | None:
    """The fact a step sentence states, or None when it is not one of the fact forms."""
    sentence = " ".join(text.split())
    for relation, form in _FACT_FORMS:
        match = form.match(sentence)
        if match:
            return Fact(relation, match.group(1), match.group(2))
    return None


def parse_answer(text: str) -> str | None:
    """The value a final step ``"The answer is <value>."`` names, or None."""
    match = _ANSWER_FORM.match(" ".join(text.split()))
    return match.group(1) if match else None
