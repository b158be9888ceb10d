"""Realistic-length reasoning chains for benchmarks, built from the bundled questions.

The steps of a chain are sentences of other vignettes: real medical prose of real lengths, and
deterministic, so runs compare like with like.
"""

from __future__ import annotations

import json
import random
import re

from medsss.data.loaders import bundled_medqa_path
from medsss.data.prompts import STEP_ZERO


def bundled_questions() -> list[dict]:
    return [json.loads(line) for line in bundled_medqa_path().read_text().splitlines()]


def chains(count: int, min_steps: int = 1, max_steps: int = 8, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    items = bundled_questions()
    sentences = [s for item in items for s in re.split(r"(?<=\.)\s+", item["question"]) if len(s) > 20]
    out = []
    for index in range(count):
        question = items[index % len(items)]["question"]
        steps = [STEP_ZERO] + [rng.choice(sentences) for _ in range(rng.randint(min_steps, max_steps))]
        steps[-1] += f" The answer is {rng.choice('ABCDE')}."
        out.append((question, steps))
    return out
