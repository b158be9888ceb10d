"""Which steps of a free-text solution are wrong, judged against the knowledge base.

A question fixes its gold chain of facts (:func:`~medsss.proving_ground.task.gold_chain`). Step
``i`` of a candidate (counting from step 1) is *right* when it states exactly the ``i``-th gold
fact, and the step after the last fact is right when it names the gold value, the option that
states it and that option as the answer. Anything else is wrong: a false fact, a true fact off the
chain, an unparseable sentence, a step after the answer.

A step is *sound* when it and every step before it are right: the process label a PRM should
predict, since a wrong step sends the rest of the chain to the wrong entity. The proving ground's
step AUROC compares PRM step scores with these labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from medsss.proving_ground.knowledge import KnowledgeBase, parse_answer, parse_fact
from medsss.proving_ground.task import gold_chain, parse_question


def step_rightness(kb: KnowledgeBase, question: str, options: Mapping[str, str],
                   steps: Sequence[str]) -> list[bool]:
    """Per step (after step 0), whether it is the right next step of the gold solution."""
    parsed = parse_question(question)
    if parsed is None:
        raise ValueError(f"not a proving ground question: {question.splitlines()[0][:80]!r}")
    chain = gold_chain(kb, *parsed)
    value = chain[-1].object
    if value not in options.values():
        raise ValueError(f"no option of {question.splitlines()[0][:80]!r} states its gold value {value!r}")
    verdicts = []
    for index, step in enumerate(steps):
        if index < len(chain):
            verdicts.append(parse_fact(step) == chain[index])
        elif index == len(chain):
            verdicts.append(parse_answer(step) == value)
        else:
            verdicts.append(False)
    return verdicts


def sound_prefixes(kb: KnowledgeBase, question: str, options: Mapping[str, str],
                   steps: Sequence[str]) -> list[bool]:
    """Per step (after step 0), whether it and every step before it are right."""
    sound, labels = True, []
    for right in step_rightness(kb, question, options, steps):
        sound = sound and right
        labels.append(sound)
    return labels
