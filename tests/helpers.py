"""Test doubles and builders shared by the search tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from medsss.data.records import Problem
from medsss.generation.base import Completion, GenerationRequest, GenerationStats, cut_at_stop
from medsss.search.tree import Node, Tree

Respond = Callable[[GenerationRequest, int], str]


class ScriptedBackend:
    """A backend whose completions are a function of the request: drives the search logic
    deterministically (the real backends are tested on their own)."""

    model_id = "scripted"

    def __init__(self, respond: Respond, cost: Callable[[GenerationRequest], int] = lambda r: 1) -> None:
        self.respond = respond
        self.cost = cost  # engine steps a request takes to decode
        self.steps = 0
        self.stats = GenerationStats()
        self.calls: list[list[GenerationRequest]] = []

    def complete(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """Scripted texts, cut at the request's stop strings as an engine would; a request with
        ``choices`` must be answered with one of them."""
        out = []
        for r in requests:
            row = []
            for i in range(r.n):
                text, stopped = cut_at_stop(self.respond(r, i), r.stop)
                if r.choices:
                    assert text.strip() in r.choices, f"scripted {text!r} is not one of {r.choices}"
                row.append(Completion(text, "stop" if stopped else "eos", prompt_tokens=10, generated_tokens=5))
            out.append(row)
        return out

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        self.calls.append(list(requests))
        self.stats.calls += 1
        self.stats.requests += len(requests)
        self.steps += max((self.cost(r) for r in requests), default=0)  # a batch lasts as long as its longest
        return self.complete(requests)

    def close(self) -> None:
        pass


class StreamingScriptedBackend(ScriptedBackend):
    """Continuous batching in miniature: submitted tickets decode side by side, one engine step
    per round, and each finishes after the steps its longest request costs."""

    streaming = True

    def __init__(self, respond: Respond, cost: Callable[[GenerationRequest], int] = lambda r: 1) -> None:
        super().__init__(respond, cost)
        self._open: dict[int, list] = {}
        self._next = 0

    def submit(self, requests: Sequence[GenerationRequest]) -> int:
        results = self.complete(requests)  # a request the engine refuses raises here
        ticket, self._next = self._next, self._next + 1
        self.calls.append(list(requests))
        self._open[ticket] = [max(self.cost(r) for r in requests), results]
        return ticket

    def collect(self) -> list[tuple[int, list[list[Completion]]]]:
        assert self._open, "collect() with nothing submitted"
        finished: list[tuple[int, list[list[Completion]]]] = []
        while not finished:
            self.steps += 1
            for ticket in list(self._open):
                self._open[ticket][0] -= 1
                if self._open[ticket][0] <= 0:
                    finished.append((ticket, self._open.pop(ticket)[1]))
        return finished


def drive(process, backend) -> object:
    """Run one search generator to completion against ``backend``; return its result."""
    try:
        requests = next(process)
        while True:
            requests = process.send(backend.generate(requests))
    except StopIteration as stop:
        return stop.value


def problem(answer: str = "A", pid: str = "p1") -> Problem:
    return Problem(id=pid, question=f"Question {pid}?\nA. one\nB. two", answer=answer,
                   options={"A": "one", "B": "two"})


def build_tree(spec: dict[str, dict]) -> Tree:
    """A tree from ``{"a": {"parent": "root", "visits": 2, "value": 0.5, ...}, ...}`` in order;
    the root is ``"root"`` (give its fields under that key)."""
    tree = Tree.with_root("t", "Let's break down this problem step by step.")
    names = {"root": tree.root}
    for name, fields in spec.items():
        fields = dict(fields)
        if name == "root":
            for key, value in fields.items():
                setattr(tree.root, key, value)
            continue
        parent = names[fields.pop("parent")]
        kind = fields.pop("kind", "reason")
        node = tree.add_child(parent, name, kind)
        for key, value in fields.items():
            setattr(node, key, value)
        names[name] = node
    return tree


def by_text(tree: Tree, text: str) -> Node:
    return next(n for n in tree.nodes if n.text == text)


def mixed_tree(k: int) -> Tree:
    """Problem ``k``'s tree: one right and one wrong chain, each through its own reasoning step."""
    return build_tree({
        "root": {"visits": 3, "value": 0.4},
        f"idea {k}": {"parent": "root", "visits": 2, "value": 0.5, "rollout_total": 4, "rollout_correct": 2},
        f"other {k}": {"parent": "root", "visits": 2, "value": 0.25, "rollout_total": 4, "rollout_correct": 1},
        "So the answer is A. The answer is A.": {"parent": f"idea {k}", "kind": "finish", "visits": 1,
                                                 "value": 1.0, "correct": True},
        "So the answer is B. The answer is B.": {"parent": f"other {k}", "kind": "finish", "visits": 1,
                                                 "value": 0.0, "correct": False},
    })


def write_training_trees(run_dir: Path, problems: int = 8) -> Path:
    """A synthesis run directory whose ``trees.jsonl`` holds ``problems`` mixed trees (the input
    of the training stages' tests); returns ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "trees.jsonl", "w", encoding="utf-8") as handle:
        for k in range(problems):
            record = {"id": f"p{k}", "question": f"Case {k}?\nA. yes\nB. no", "answer": "A",
                      **mixed_tree(k).to_dict()}
            handle.write(json.dumps(record) + "\n")
    return run_dir
