"""Monte-Carlo Tree Search over reasoning steps for one problem (see docs/method.md#mcts-synthesis).

The search is written as a generator: it yields the generation requests it needs next and is
sent back their completions. It never calls a backend itself, so the scheduler can batch the
requests of many trees into one engine call (and a test can drive it with scripted completions):
see docs/architecture.md#the-generator-based-search.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from medsss.data.loaders import options_from_question
from medsss.data.prompts import (
    FORCE_ANSWER_SUFFIX,
    REFLECT_OPENING,
    STEP_ZERO,
    continuation_prefill,
    split_steps,
    step_prefix,
    truncate_at_step_marker,
)
from medsss.data.records import Problem
from medsss.data.verify import extract_answer, is_correct
from medsss.generation.base import Completion, GenerationRequest, Message
from medsss.search.actions import Action, choose_action, reflect_eligible, rollout_count
from medsss.search.backprop import backpropagate
from medsss.search.tree import Node, Tree
from medsss.search.uct import mark_completed, select_leaf

Requests = list[GenerationRequest]
Responses = list[list[Completion]]
SearchProcess = Generator[Requests, Responses, "SearchResult"]
SearchStep = Generator[Requests, Responses, None]  # one part of a search, delegated to with yield from



def step_stop(index: int) -> tuple[str, ...]:
    """Stop strings of a single-step request for step ``index``: the next step's exact marker.

    Never the bare word "Step": a line such as "Step back and reconsider" is text, not a marker.
    A model that numbers its next step otherwise is cut by :func:`truncate_at_step_marker`.
    """
    return (f"\n{step_prefix(index + 1)}",)


@dataclass
class SearchConfig:
    """Every constant of the search; ``search=`` config files fill it (paper defaults here)."""

    width: int = 3
    simulations: int = 20
    min_rollouts: int = 5
    exploration: float = 2.0  # c in UCT
    unvisited_ucb: float = 5.0
    bear_ratio: float = 0.9
    low_gate: float = 0.5
    refine_limit: int = 1
    correct_nodes: int = 4
    max_nodes: int = 60
    # False (default, as the reference): nodes made by splitting a Finish completion grow the node
    # budget instead of consuming it; True: every node counts against max_nodes.
    split_nodes_use_budget: bool = False
    max_depth: int | None = None
    backprop: str = "comp"
    post_process: bool = True
    dedupe_siblings: bool = True
    # sampling
    step_temperature: float = 1.0
    step_top_p: float = 0.95
    rollout_temperature: float = 0.6
    rollout_top_p: float = 0.9
    max_step_tokens: int = 256
    max_rollout_tokens: int = 1024
    max_finish_tokens: int = 1024
    force_answer_tokens: int = 8
    keep_rollout_texts: bool = False
    # scheduling
    concurrent_trees: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("width", "min_rollouts", "correct_nodes", "max_nodes", "concurrent_trees"):
            if getattr(self, name) < 1:
                raise ValueError(f"search.{name} must be >= 1, got {getattr(self, name)}")
        if self.backprop not in ("comp", "mean"):
            raise ValueError(f"search.backprop must be 'comp' or 'mean', got '{self.backprop}'")


def option_letters(problem: Problem) -> tuple[str, ...]:
    """The option letters a forced answer may take: the problem's options, or for a choice item
    without an options dict, the "A. text" lines of its question; () for free text."""
    if problem.options:
        return tuple(sorted(problem.options))
    if problem.kind != "choice":
        return ()
    return tuple(sorted(options_from_question(problem.question) or {}))


@dataclass
class SearchResult:
    tree: Tree
    stop_reason: str
    iterations: int
    stats: dict[str, Any] = field(default_factory=dict)


class TreeSearch:
    """The search of one problem. ``run()`` is the generator the scheduler drives."""

    def __init__(self, problem: Problem, messages: tuple[Message, ...], config: SearchConfig) -> None:
        self.problem = problem
        self.messages = messages
        self.config = config
        self.tree = Tree.with_root(problem.id, STEP_ZERO)
        self.iterations = 0
        self.answer_choices = option_letters(problem)
        self.unanswered_after_forcing = 0

    # -- the search loop ---------------------------------------------------------------------

    def budget_used(self) -> int:
        """Nodes counted against ``max_nodes`` (split pieces of a Finish completion grow the
        budget instead, unless ``split_nodes_use_budget``)."""
        if self.config.split_nodes_use_budget:
            return len(self.tree.nodes)
        return sum(1 for n in self.tree.nodes if not n.split)

    def run(self) -> SearchProcess:
        cfg = self.config
        stop_reason = "nothing_selectable"
        while True:
            if len(self.tree.correct_leaves()) >= cfg.correct_nodes:
                stop_reason = "correct_nodes"
                break
            if self.budget_used() >= cfg.max_nodes:
                stop_reason = "max_nodes"
                break
            leaf = select_leaf(self.tree, cfg.exploration, cfg.unvisited_ucb)
            if leaf is None:
                stop_reason = "all_completed" if self.tree.root.completed else "nothing_selectable"
                break
            self.iterations += 1
            action = choose_action(
                self.tree, leaf, bear_ratio=cfg.bear_ratio, low_gate=cfg.low_gate,
                refine_limit=cfg.refine_limit, max_depth=cfg.max_depth,
            )
            if action is None:
                mark_completed(self.tree, leaf)
                continue
            yield from self.expand(leaf, action)

        if cfg.post_process:
            yield from self.post_process()
        return SearchResult(self.tree, stop_reason, self.iterations, self.summary())

    def expand(self, leaf: Node, action: Action) -> SearchStep:
        if action is Action.FINISH:
            yield from self.finish([leaf])
            return
        if action is Action.REASON:
            completions = (yield [self.step_request(leaf, n=self.config.width)])[0]
            texts = [truncate_at_step_marker(c.text).strip() for c in completions]
        else:
            completions = (yield [self.step_request(leaf, n=1, opening=REFLECT_OPENING)])[0]
            body = truncate_at_step_marker(completions[0].text).strip()
            texts = [REFLECT_OPENING + body if body else ""]  # an empty reflection is no step
        children = []
        for text, completion in zip(self._distinct(texts), completions, strict=True):
            if not text:
                continue
            reflection = action is Action.REFLECT
            children.append(
                self.tree.add_child(
                    leaf, text, "reflect" if reflection else "reason",
                    reflection=reflection, generated_tokens=completion.generated_tokens,
                )
            )
        if not children:
            mark_completed(self.tree, leaf)  # the model gave nothing usable here
            return
        yield from self.evaluate(children)
        for child in children:  # one back-propagation per new node, in creation order
            self._commit(child)
        self._settle_finishes(children)

    def post_process(self) -> SearchStep:
        """While too few correct leaves exist, finish open leaves by decreasing value."""
        cfg = self.config
        while True:
            missing = cfg.correct_nodes - len(self.tree.correct_leaves())
            open_leaves = [n for n in self.tree.leaves() if not n.is_finish and not n.completed]
            if missing <= 0 or not open_leaves:
                return
            open_leaves.sort(key=lambda n: (-n.value, n.index))
            # Finishing `missing` leaves per round is exactly what one-at-a-time would do until
            # enough are correct, but in one batch.
            yield from self.finish(open_leaves[:missing])

    # -- actions -----------------------------------------------------------------------------

    def finish(self, leaves: list[Node]) -> SearchStep:
        """Complete each leaf to an answer; the completion becomes a chain of new nodes."""
        requests = [self.completion_request(leaf, n=1, rollout=False) for leaf in leaves]
        completions = [row[0] for row in (yield requests)]
        texts = yield from self.force_answers(leaves, [c.text for c in completions])
        for leaf, text, completion in zip(leaves, texts, completions, strict=True):
            steps = split_steps(text) or [text.strip()]
            answered = next((i for i, s in enumerate(steps) if extract_answer(s) is not None), len(steps) - 1)
            steps = steps[: answered + 1]
            parent = leaf
            for step in steps[:-1]:
                # Split pieces carry the value they continue from and are not evaluated; the walk
                # up from the finish node below them counts them like any ancestor.
                parent = self.tree.add_child(parent, step, "reason", visits=1, value=leaf.value, split=True)
            node = self.tree.add_child(parent, steps[-1], "finish",
                                       generated_tokens=completion.generated_tokens)
            self._score_finish(node)
            self._commit(node)
            self._settle_finishes([node])

    def evaluate(self, nodes: list[Node]) -> SearchStep:
        """Value new nodes: a stated answer is worth 1 or 0, anything else its rollout accuracy.

        Visits are left at 0: each node is counted when it is back-propagated (``_commit``), so the
        batched evaluation of siblings gives the same tree as evaluating them one at a time.
        """
        open_nodes = []
        for node in nodes:
            if extract_answer(node.text) is not None:
                node.kind = "finish"
                self._score_finish(node)
            else:
                open_nodes.append(node)
        if not open_nodes:
            return
        requests = [
            self.completion_request(
                node, n=rollout_count(node.depth, self.config.simulations, self.config.min_rollouts),
                rollout=True,
            )
            for node in open_nodes
        ]
        responses = yield requests
        flat_nodes = [node for node, row in zip(open_nodes, responses, strict=True) for _ in row]
        flat_texts = [c.text for row in responses for c in row]
        forced = yield from self.force_answers(flat_nodes, flat_texts)
        cursor = 0
        for node, row in zip(open_nodes, responses, strict=True):
            outcomes = forced[cursor : cursor + len(row)]
            cursor += len(row)
            node.rollout_total = len(outcomes)
            node.rollout_correct = sum(self._judge(extract_answer(t)) for t in outcomes)
            node.value = node.rollout_correct / node.rollout_total if node.rollout_total else 0.0
            if self.config.keep_rollout_texts:
                node.rollout_texts = outcomes

    def force_answers(self, nodes: list[Node], texts: list[str]) -> Generator[Requests, Responses, list[str]]:
        """Texts that state no answer get " The answer is" appended and a forced continuation.

        On choice items the continuation is constrained to one of the option letters, so even a
        weak model yields an answer; on free-text items it is a few greedy tokens. A text that
        still states no answer counts in ``unanswered_after_forcing`` and is judged wrong.
        """
        missing = [i for i, t in enumerate(texts) if extract_answer(t) is None]
        if not missing:
            return texts
        requests = []
        for i in missing:
            base = continuation_prefill(self.tree.path_texts(nodes[i]))
            prefill = base + " " + texts[i].strip() + FORCE_ANSWER_SUFFIX
            seed = self._seed("force", nodes[i].index, i)
            if self.answer_choices:
                request = GenerationRequest(messages=self.messages, prefill=prefill, n=1, temperature=0.0,
                                            max_tokens=1, choices=self.answer_choices, seed=seed)
            else:
                request = GenerationRequest(messages=self.messages, prefill=prefill, n=1, temperature=0.0,
                                            max_tokens=self.config.force_answer_tokens, stop=("\n",),
                                            seed=seed)
            requests.append(request)
        responses = yield requests
        texts = list(texts)
        for i, row in zip(missing, responses, strict=True):
            forced = f" {row[0].text.strip()}." if self.answer_choices else row[0].text.rstrip()
            texts[i] = texts[i].strip() + FORCE_ANSWER_SUFFIX + forced
            if extract_answer(texts[i]) is None:
                self.unanswered_after_forcing += 1
        return texts

    # -- requests ----------------------------------------------------------------------------

    def step_request(self, node: Node, n: int, opening: str = "") -> GenerationRequest:
        cfg = self.config
        return GenerationRequest(
            messages=self.messages,
            prefill=continuation_prefill(self.tree.path_texts(node), opening),
            n=n,
            temperature=cfg.step_temperature,
            top_p=cfg.step_top_p,
            max_tokens=cfg.max_step_tokens,
            stop=step_stop(node.depth + 1),
            seed=self._seed("step", node.index, len(node.children)),
        )

    def completion_request(self, node: Node, n: int, rollout: bool) -> GenerationRequest:
        cfg = self.config
        return GenerationRequest(
            messages=self.messages,
            prefill=continuation_prefill(self.tree.path_texts(node)),
            n=n,
            temperature=cfg.rollout_temperature if rollout else cfg.step_temperature,
            top_p=cfg.rollout_top_p if rollout else cfg.step_top_p,
            max_tokens=cfg.max_rollout_tokens if rollout else cfg.max_finish_tokens,
            seed=self._seed("rollout" if rollout else "finish", node.index, len(node.children)),
        )

    # -- helpers -----------------------------------------------------------------------------

    def _judge(self, answer: str | None) -> bool:
        return is_correct(answer, self.problem.answer, options=self.problem.options)

    def _score_finish(self, node: Node) -> None:
        node.answer = extract_answer(node.text)
        node.correct = self._judge(node.answer)
        node.value = 1.0 if node.correct else 0.0

    def _commit(self, node: Node) -> None:
        """Count an evaluated new node (its own visit) and back-propagate it to its ancestors."""
        node.visits = 1
        backpropagate(self.tree, node, self.config.backprop)

    def _settle_finishes(self, nodes: list[Node]) -> None:
        cfg = self.config
        for node in nodes:
            if node.is_finish and not node.correct and not reflect_eligible(
                self.tree, node, cfg.low_gate, cfg.refine_limit
            ):
                mark_completed(self.tree, node)

    def _distinct(self, texts: list[str]) -> list[str]:
        if not self.config.dedupe_siblings:
            return texts
        seen: set[str] = set()
        out = []
        for text in texts:
            out.append("" if text in seen else text)
            seen.add(text)
        return out

    def _seed(self, purpose: str, node_index: int, salt: int) -> int:
        key = f"{self.config.seed}|{self.problem.id}|{purpose}|{node_index}|{salt}"
        return int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "little")

    def summary(self) -> dict[str, Any]:
        finishes = [n for n in self.tree.nodes if n.is_finish]
        return {
            "nodes": len(self.tree.nodes),
            "max_depth": max(n.depth for n in self.tree.nodes),
            "correct_leaves": sum(1 for n in finishes if n.correct),
            "incorrect_leaves": sum(1 for n in finishes if not n.correct),
            "generated_tokens": sum(n.generated_tokens for n in self.tree.nodes),
            "rollouts": sum(n.rollout_total for n in self.tree.nodes),
            "split_nodes": sum(1 for n in self.tree.nodes if n.split),
            "unanswered_after_forcing": self.unanswered_after_forcing,
        }
