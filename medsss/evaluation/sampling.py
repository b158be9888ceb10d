"""Sample N candidates per question once, score every step once, cache everything per item.

The cache (``cache/<benchmark>.jsonl``) holds per item its gold, kind and options, the candidate
texts, their steps, extracted answers and PRM step scores (and the greedy answer). Every decoding
strategy is then evaluated offline from it, and a rerun skips cached items.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medsss.data.prompts import STEP_ZERO, build_messages, continuation_prefill, split_steps
from medsss.data.records import Problem
from medsss.data.verify import extract_answer
from medsss.generation.base import Backend, GenerationRequest
from medsss.io import read_jsonl


def last_line_answer(text: str) -> str | None:
    """Fallback answer: the last non-empty line, when no answer phrase was found."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def candidate(text: str, fallback: bool) -> dict[str, Any]:
    answer = extract_answer(text)
    if answer is None and fallback:
        answer = last_line_answer(text)
    return {"text": text, "steps": [STEP_ZERO, *split_steps(text)], "answer": answer}


def read_cache(path: Path) -> dict[str, dict[str, Any]]:
    return {str(row["id"]): row for row in read_jsonl(path, repair_tail=True)} if path.exists() else {}


def sample_and_score(
    problems: Sequence[Problem],
    backend: Backend,
    score_chains: Callable[[list[tuple[str, list[str]]]], list[list[float]]] | None,
    cache_path: Path,
    *,
    n: int,
    temperature: float,
    top_p: float,
    max_tokens: int,
    system_prompt: str | None,
    greedy: bool,
    fallback: bool,
    items_per_call: int,
    seed: int,
    on_item: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Cached rows for ``problems`` (generating only the missing ones), in problem order."""
    cached = read_cache(cache_path)
    todo = [p for p in problems if p.id not in cached]
    # An item samples from the seed of its place in ``problems``, not among the items left to
    # sample: a run resumed from a partial cache samples the rest as the uninterrupted run did.
    place = {p.id: k for k, p in enumerate(problems)}
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    prefill = continuation_prefill([STEP_ZERO])
    with open(cache_path, "a", encoding="utf-8") as handle:
        for start in range(0, len(todo), items_per_call):
            chunk = todo[start : start + items_per_call]
            requests = []
            for problem in chunk:
                messages = build_messages(problem.question, system_prompt)
                requests.append(GenerationRequest(messages, prefill, n=n, temperature=temperature,
                                                  top_p=top_p, max_tokens=max_tokens,
                                                  seed=seed + place[problem.id]))
                if greedy:
                    requests.append(GenerationRequest(messages, prefill, n=1, temperature=0.0,
                                                      max_tokens=max_tokens))
            completions = backend.generate(requests)
            per_item = 2 if greedy else 1
            rows: list[dict[str, Any]] = []
            for index, problem in enumerate(chunk):
                samples = completions[index * per_item]
                # kind and options travel with the row: offline selection and scoring need them.
                row: dict[str, Any] = {"id": problem.id, "gold": problem.answer, "kind": problem.kind,
                       "options": dict(problem.options) if problem.options else None,
                       "source": problem.source,
                       "candidates": [candidate(c.text, fallback) for c in samples]}
                if greedy:
                    row["greedy"] = candidate(completions[index * per_item + 1][0].text, fallback)
                rows.append(row)
            _score(rows, chunk, score_chains)
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                handle.flush()
                cached[row["id"]] = row
                if on_item is not None:
                    on_item(row)
    return [cached[p.id] for p in problems]


def _score(rows: list[dict[str, Any]], problems: Sequence[Problem], score_chains) -> None:
    chains, owners = [], []
    for row, problem in zip(rows, problems, strict=True):
        for cand in row["candidates"]:
            cand["step_scores"] = []
            if score_chains is not None and len(cand["steps"]) > 1:
                chains.append((problem.question, cand["steps"]))
                owners.append(cand)
    if chains:
        for cand, scores in zip(owners, score_chains(chains), strict=True):
            cand["step_scores"] = scores
