"""The DPO view: preference pairs of partial and finished paths of stored trees (MedS3 paper v4).

Two kinds of pair, per tree (docs/method.md#dpo-pairs):

- **level**: two nodes at the same depth d >= 1 under different parents, both parents with more
  than one child, whose values differ by more than ``margin``; chosen is the path from the root to
  the higher-valued node, rejected the path to the lower-valued one. Nodes of one depth are paired
  in node order (i < j), depths in increasing order.
- **finish**: correct finish leaves against wrong finish leaves, each list ranked by the minimum
  value of its path (step 0 excluded, :attr:`Chain.min_value`): the i-th best correct chain is
  paired with the i-th worst wrong one, as many pairs as the shorter list has chains.

A pair whose (chosen steps, rejected steps) was already emitted for the problem is not repeated,
and a pair whose two paths have the same step texts is dropped (it carries no preference).

A row holds both paths as step texts, step 0 first. Step 0 is the shared start of both responses
(never scored); a path that ends at a finish node is a whole solution and is closed with the end
of turn when tokenized, a partial path is not (:mod:`medsss.training.dpo_inputs`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, NamedTuple

from medsss.labels.chains import SOURCE_KEY, Chain, chains_of
from medsss.search.tree import Node, Tree

PAIR_KINDS = ("level", "finish")


class _Pair(NamedTuple):
    kind: str
    chosen: list[str]  # step texts, step 0 first
    rejected: list[str]
    chosen_value: float
    rejected_value: float
    chosen_finished: bool
    rejected_finished: bool


def _level_pairs(tree: Tree, margin: float) -> list[tuple[Node, Node]]:
    """(higher, lower) node pairs of one depth under different branching parents, values more than
    ``margin`` apart; depth by depth, then in node order."""
    by_depth: dict[int, list[Node]] = {}
    for node in tree.nodes:
        parent = tree.parent(node)
        if parent is not None and len(parent.children) > 1:
            by_depth.setdefault(node.depth, []).append(node)
    pairs = []
    for depth in sorted(by_depth):
        nodes = by_depth[depth]
        for i, a in enumerate(nodes):
            for b in nodes[i + 1:]:
                if a.parent != b.parent and abs(a.value - b.value) > margin:
                    pairs.append((a, b) if a.value > b.value else (b, a))
    return pairs


def _rank_key(chain: Chain) -> tuple[float, float]:
    """Minimum path value, then the minimum before the answer step: a wrong leaf's own value is 0,
    so every wrong chain's minimum is 0 and the steps that led to the answer break the tie."""
    before_answer = chain.values[1:-1]
    return chain.min_value, min(before_answer) if before_answer else chain.min_value


def _finish_pairs(chains: list[Chain]) -> list[tuple[Chain, Chain]]:
    """(correct, wrong) chains: best correct with worst wrong, second best with second worst, ...
    (stable sorts: equal ranks keep node order)."""
    correct = sorted((c for c in chains if c.correct), key=_rank_key, reverse=True)
    # sorted(reverse=True) keeps equal keys in their original order, as the ascending sort does.
    wrong = sorted((c for c in chains if not c.correct), key=_rank_key)
    return list(zip(correct, wrong, strict=False))


def dpo_rows(records: Iterable[dict[str, Any]], margin: float = 0.8) -> list[dict[str, Any]]:
    """Level pairs then finish pairs of every stored tree, one row per pair (see the module doc)."""
    if not 0 <= margin < 1:
        raise ValueError(f"stage.margin must be in [0, 1) (values lie in [0, 1]), not {margin}")
    rows = []
    for record in records:
        if "nodes" not in record:
            where = record.get(SOURCE_KEY, "a record")
            raise ValueError(f"{where}: DPO pairs need a stored tree ('nodes', from trees.jsonl): level "
                             "pairs compare nodes of one tree, which chain files (pos/neg) do not keep")
        tree = Tree.from_dict({"problem_id": record["id"], "nodes": record["nodes"]})
        candidates = [_Pair("level", tree.path_texts(high), tree.path_texts(low), high.value, low.value,
                            high.is_finish, low.is_finish) for high, low in _level_pairs(tree, margin)]
        candidates += [_Pair("finish", good.steps, bad.steps, good.min_value, bad.min_value, True, True)
                       for good, bad in _finish_pairs(chains_of(record))]
        emitted: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
        for pair in candidates:
            key = (tuple(pair.chosen), tuple(pair.rejected))
            if pair.chosen == pair.rejected or key in emitted:
                continue
            emitted.add(key)
            rows.append({"id": str(record["id"]), "question": record["question"], "answer": record["answer"],
                         **pair._asdict()})
    return rows


def dpo_counts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The size of a DPO view: problems, pairs, and pairs of each kind."""
    kinds = Counter(r["kind"] for r in rows)
    return {
        "problems": len({r["id"] for r in rows}),
        "pairs": len(rows),
        **{f"{kind}_pairs": kinds[kind] for kind in PAIR_KINDS},
    }
