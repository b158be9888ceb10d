"""The results table: per benchmark and macro average, every accuracy with an item-level bootstrap
interval, computed from the same per-item decisions that ``predictions/`` records.

Columns: ``greedy`` (the greedy sample), ``sc``/``bon``/``pvs``/``vote_mean`` on all N candidates
of each item in sampled order, ``decode`` (the ``decode=`` strategy on its first ``decode.n``
candidates, or the greedy sample: exactly the answers in ``predictions/``), ``pass@1`` and
``pass@N``, and ``unparseable`` (the share of candidates with no extracted answer). Each accuracy
``x`` has ``x_ci_low``/``x_ci_high``: the 95% percentile interval over ``bootstrap`` resamples of
the items with replacement (seeded); the macro average resamples items within each benchmark.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medsss.decoding import SELECTIONS
from medsss.evaluation.grid import (
    candidate_count,
    greedy_outcomes,
    item_bootstrap,
    macro_bootstrap,
    pass_at_k_per_item,
    unparseable_share,
)
from medsss.evaluation.items import answer_correct, decoded

log = logging.getLogger(__name__)

STRATEGIES = ("sc", "bon", "pvs", "vote_mean")
PRM_STRATEGIES = ("bon", "pvs", "vote_mean")  # need PRM step scores
NOT_RUN = "not run"
ACCURACY_COLUMNS = ("greedy", *STRATEGIES, "decode", "pass@1", "pass@N")
COLUMNS = ("benchmark", "items", "N", *ACCURACY_COLUMNS, "unparseable")


@dataclass(frozen=True)
class DecodeChoice:
    """The strategy behind ``predictions/`` and the ``decode`` column, after any fallback."""

    selection: str
    aggregation: str
    n: int
    fallback_from: str | None = None  # the configured selection when it could not run


def decode_choice(selection: str, aggregation: str, n: int, *, has_prm: bool,
                  greedy_sampled: bool) -> DecodeChoice:
    """The ``decode=`` strategy this run can apply: a PRM strategy without a PRM falls back to ``sc``
    (one warning line); ``greedy`` needs the greedy sample."""
    if selection not in SELECTIONS:
        raise ValueError(f"decode.selection '{selection}' must be one of {SELECTIONS}")
    if n < 1:
        raise ValueError(f"decode.n must be >= 1, got {n}")
    if selection == "greedy" and not greedy_sampled:
        raise ValueError("decode=greedy reads each item's greedy sample: set stage.greedy=true")
    if selection in PRM_STRATEGIES and not has_prm:
        log.warning("decode=%s needs a PRM (stage.prm.path is null): predictions/ and the decode column "
                    "use sc", selection)
        return DecodeChoice("sc", aggregation, n, fallback_from=selection)
    return DecodeChoice(selection, aggregation, n)


@dataclass
class BenchmarkResult:
    """One results row and the per-item values behind its accuracies (for the macro bootstrap)."""

    row: dict[str, Any]
    per_item: dict[str, list[float]] = field(default_factory=dict)


def decode_n(decode: DecodeChoice, total: int) -> int:
    """The N the decode strategy actually chooses among: ``decode.n`` capped by the candidates."""
    return min(decode.n, total)


def strategy_outcomes(items: Sequence[Mapping[str, Any]], rule: str, aggregation: str, n: int) -> list[float]:
    """Per item, whether ``rule`` on the first ``n`` candidates (or the greedy sample) is correct."""
    outcomes = []
    for item in items:
        picked = decoded(item, rule, aggregation, n)
        outcomes.append(float(picked is not None and answer_correct(item, picked.get("answer"))))
    return outcomes


def summarise(name: str, items: Sequence[Mapping[str, Any]], *, strategies: Sequence[str], aggregation: str,
              decode: DecodeChoice, bootstrap: int, seed: int) -> BenchmarkResult:
    """The results row of one benchmark; ``strategies`` are the table strategies that ran."""
    if not items:
        raise ValueError(f"benchmark {name}: no items to summarise")
    total = candidate_count(items)
    if total < 1:
        raise ValueError(f"benchmark {name}: an item has no candidates; nothing to evaluate")
    per_item: dict[str, list[float]] = {}
    greedy = greedy_outcomes(items)
    if greedy is not None:
        per_item["greedy"] = greedy
    for rule in STRATEGIES:
        if rule in strategies:
            per_item[rule] = strategy_outcomes(items, rule, aggregation, total)
    if decode.selection == "greedy":
        if greedy is None:
            raise ValueError(f"benchmark {name}: decode=greedy, but no cached item has a greedy sample")
        per_item["decode"] = greedy
    else:
        per_item["decode"] = strategy_outcomes(items, decode.selection, decode.aggregation,
                                               decode_n(decode, total))
    per_item["pass@1"] = pass_at_k_per_item(items, 1)
    per_item["pass@N"] = pass_at_k_per_item(items, total)
    row: dict[str, Any] = {"benchmark": name, "items": len(items), "N": total}
    for column, values in per_item.items():
        row.update(_with_interval(column, values, item_bootstrap(values, bootstrap, seed)))
    row["unparseable"] = unparseable_share(items)
    return BenchmarkResult(row, per_item)


def macro_average(results: Sequence[BenchmarkResult], *, bootstrap: int, seed: int) -> dict[str, Any]:
    """The macro row: each accuracy averaged over the benchmarks that all have it."""
    ns = {r.row["N"] for r in results}
    row: dict[str, Any] = {"benchmark": "macro average", "items": sum(r.row["items"] for r in results),
                           "N": ns.pop() if len(ns) == 1 else None}
    for column in ACCURACY_COLUMNS:
        if results and all(column in r.per_item for r in results):
            mean = sum(r.row[column] for r in results) / len(results)
            interval = macro_bootstrap([r.per_item[column] for r in results], bootstrap, seed)
            row.update(_with_interval(column, [mean], interval))
    shares = [r.row["unparseable"] for r in results if r.row.get("unparseable") is not None]
    row["unparseable"] = sum(shares) / len(shares) if shares else None
    return row


def _with_interval(column: str, values: Sequence[float], interval: tuple[float, float]) -> dict[str, float]:
    return {column: sum(values) / len(values), f"{column}_ci_low": interval[0],
            f"{column}_ci_high": interval[1]}


def header(rows: Sequence[Mapping[str, Any]], *, decode: DecodeChoice, bootstrap: int, seed: int,
           has_prm: bool) -> str:
    """The lines above the table: the N used, what the intervals are, which strategies ran."""
    ns = sorted({r["N"] for r in rows if r.get("N") is not None})
    n_text = f"N = {ns[0]}" if len(ns) == 1 else "N per benchmark (column N)"
    decode_ns = sorted({min(decode.n, n) for n in ns})
    lines = [
        f"Accuracy (%) with {n_text} candidates per item, the first N in sampled order "
        f"(as in `predictions/`). In brackets: 95% item-level bootstrap interval ({bootstrap} seeded "
        f"resamples of the items with replacement, seed {seed}; the macro average resamples within each "
        f"benchmark).",
    ]
    if decode.selection == "greedy":
        lines.append("`decode` is `greedy` (the greedy sample).")
    else:
        aggregation = f" (`{decode.aggregation}`)" if decode.selection in PRM_STRATEGIES else ""
        lines.append(f"`decode` is `{decode.selection}`{aggregation} on the first "
                     f"{'/'.join(map(str, decode_ns))} candidates.")
    if has_prm:
        lines.append(f"PRM strategies (bon, pvs, vote_mean) aggregate step scores by `{decode.aggregation}`.")
    else:
        lines.append("No PRM (`stage.prm.path` is null): bon, pvs and vote_mean were not run.")
    if decode.fallback_from:
        lines.append(f"`decode={decode.fallback_from}` needs a PRM: the `decode` column falls back to `sc`.")
    lines.append("`pass@N`: unbiased pass@k at k = N. "
                 "`unparseable`: share of candidates with no extracted answer.")
    return "\n".join(lines) + "\n"


def column_labels(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """``pass@N`` reads ``pass@4`` when every benchmark used the same N."""
    ns = {r["N"] for r in rows if r.get("N") is not None}
    return {"pass@N": f"pass@{ns.pop()}"} if len(ns) == 1 else {}
